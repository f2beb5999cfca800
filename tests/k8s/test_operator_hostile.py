"""Hostile servers, refused destinations, URL credentials and dead servers against the real
control plane (issue 10, points 1, 3 and 8).

Each test asserts the bound or rule, the clear status reason and Event, and that nothing else was
lost: other tenants' rows, status and search stay as they were.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from kubernetes.client import ApiClient

from mcp_optimizer.logs import TextFormatter
from mcp_optimizer.operator.mapping import REFRESH_ANNOTATION, workload_name
from mcp_optimizer.testing.mcp_servers import (
    HangingServer,
    HostileMcpServer,
    Hostility,
    McpTestServer,
    closed_port,
    make_tool,
    refused_url,
)
from tests.k8s.conftest import _namespace_name
from tests.k8s.harness import IndexProbe, Kube, OperatorFactory, equals, eventually, within
from tests.k8s.kubelet import set_pod_status
from tests.mcp.server_env import connect, error_text

pytestmark = pytest.mark.kube

MAIL = [
    make_tool("send_email", "Send an email message to a recipient"),
    make_tool("list_inbox", "List the messages in the email inbox"),
]
WEATHER = [make_tool("get_forecast", "Get the weather forecast for a city for the next days")]


@pytest.fixture
def ns2(kube: Kube, mcpserver_crd: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second tenant's namespace."""
    name = _namespace_name(request.node.name + "-b")
    kube.core.create_namespace(cast(Any, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    yield name
    kube.empty_namespace(name)
    kube.core.delete_namespace(name)


def ready(kube: Kube, ns: str, name: str, reason: str) -> Callable[[], dict[str, Any] | None]:
    """The Ready condition once its reason is ``reason`` (for eventually)."""

    def check() -> dict[str, Any] | None:
        condition = kube.condition(ns, name, "Ready")
        return condition if condition.get("reason") == reason else None

    return check


# ------------------------------------------------------------------------------ destinations


async def test_the_default_install_refuses_loopback(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with HangingServer() as hanging:
        kube.create_server(ns, "local", {"url": hanging.url})
        start_operator([ns], allowed_destinations=())
        condition = await eventually(ready(kube, ns, "local", "DestinationRefused"))
        assert condition["status"] == "False"
        assert f"MCPServer {ns}/local:" in condition["message"] and "rule 'loopback'" in condition["message"]
        assert kube.server_status(ns, "local")["phase"] == "Error"
        assert kube.condition(ns, "local", "ToolsIndexed")["reason"] == "DestinationRefused"
        await eventually(lambda: kube.has_event(ns, "local", "DestinationRefused", "Warning"))
        assert await probe.status(workload_name(ns, "local")) == "ERROR"
        assert hanging.connections_accepted == 0


async def test_other_namespaces_the_apiserver_and_metadata_are_refused(
    ns: str, kube: Kube, kube_api: ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    apiserver = kube_api.configuration.host  # https://127.0.0.1:<port>: loopback is allowed here
    servers = {
        "theirs": ("http://github-mcp.team-b.svc.cluster.local:8080/mcp", "other-namespace"),
        "api": (f"{apiserver}/api", "apiserver"),
        "metadata": ("http://169.254.169.254/latest/meta-data/", "link-local"),
    }
    with McpTestServer(WEATHER) as weather:
        for name, (url, _) in servers.items():
            kube.create_server(ns, name, {"url": url})
        kube.create_server(ns, "weather", {"url": weather.url})
        start_operator([ns])
        for name, (_, rule) in servers.items():
            condition = await eventually(ready(kube, ns, name, "DestinationRefused"), what=name)
            assert f"rule '{rule}'" in condition["message"], condition
            assert f"MCPServer {ns}/{name}" in condition["message"]
        # The allowed server next to them is indexed and searchable.
        await eventually(lambda: probe.found("weather forecast", workload_name(ns, "weather")))


# ------------------------------------------------------------------------------ bounds


@pytest.mark.parametrize(
    ("hostility", "bound"),
    [
        (Hostility.huge_description(50 * 1024 * 1024), "MCP_OPTIMIZER_MAX_PAGE_BYTES"),
        (Hostility.many_tools(100_000, page_size=400), "MCP_OPTIMIZER_MAX_TOOLS"),
        (Hostility.endless_pages(), "MCP_OPTIMIZER_MAX_LIST_BYTES"),
    ],
    ids=["50MB-description", "100k-tools", "endless-pages"],
)
async def test_a_hostile_server_fails_alone(
    hostility: Hostility, bound: str, ns: str, ns2: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    good = workload_name(ns2, "weather")
    with McpTestServer(WEATHER) as weather, HostileMcpServer(hostility) as hostile:
        kube.create_server(ns2, "weather", {"url": weather.url})
        start_operator([ns, ns2])
        await eventually(lambda: probe.found("weather forecast for tomorrow", good, "get_forecast"))
        before_row = await probe.workload(good)
        before_hits = [(h.server, h.tool) for h in await probe.search("weather forecast for tomorrow")]

        kube.create_server(ns, "hostile", {"url": hostile.url})
        condition = await eventually(ready(kube, ns, "hostile", "LimitExceeded"), timeout=30)
        assert bound in condition["message"] and f"MCPServer {ns}/hostile" in condition["message"]
        assert kube.server_status(ns, "hostile")["phase"] == "Error"
        await eventually(lambda: kube.has_event(ns, "hostile", "LimitExceeded", "Warning"))
        assert await probe.tools(workload_name(ns, "hostile")) == []
        assert hostile.bytes_sent < 16 * 1024 * 1024

        # Nothing else lost: the other tenant's row, tools, status and search are as they were.
        after_row = await probe.workload(good)
        assert after_row is not None and before_row is not None
        assert {k: after_row[k] for k in ("status", "description", "last_updated")} == {
            k: before_row[k] for k in ("status", "description", "last_updated")
        }
        assert await probe.tools(good) == ["get_forecast"]
        assert [(h.server, h.tool) for h in await probe.search("weather forecast for tomorrow")] == before_hits
        assert kube.server_status(ns2, "weather")["phase"] == "Running"


async def test_oversized_tools_are_indexed_clipped_and_the_status_says_so(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    big = make_tool("send_report", "Send the weekly report by email. " + "details " * 4000)
    with McpTestServer([big, *WEATHER]) as server:
        kube.create_server(ns, "reports", {"url": server.url})
        start_operator([ns])
        wl = workload_name(ns, "reports")
        await eventually(lambda: probe.found("send the weekly report by email", wl, "send_report"))
        indexed = await eventually(
            lambda: (c := kube.condition(ns, "reports", "ToolsIndexed")).get("reason") == "ToolsClipped" and c
        )
        assert indexed["status"] == "True"
        assert "1 of 2 tools were stored clipped" in indexed["message"]
        assert "send_report (description)" in indexed["message"]
        assert kube.server_status(ns, "reports")["phase"] == "Running"
        await eventually(lambda: kube.has_event(ns, "reports", "ToolsClipped", "Warning"))
        [hit] = [h for h in await probe.search("send the weekly report by email") if h.tool == "send_report"]
        assert hit.description.endswith("limit 8,192]") and len(hit.description) < 8300


# ------------------------------------------------------------------------------ credentials


async def test_credentials_in_a_url_are_used_and_never_shown(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    with McpTestServer(WEATHER) as weather:
        working = weather.url.replace("http://", "http://alice:s3cret@")
        refused = refused_url().replace("http://", "http://alice:s3cret@")
        kube.create_server(ns, "weather", {"url": working})
        kube.create_server(ns, "down", {"url": refused})
        start_operator([ns])
        await eventually(lambda: probe.found("weather forecast", workload_name(ns, "weather")))
        await eventually(ready(kube, ns, "down", "ToolsListFailed"))
        await eventually(lambda: kube.has_event(ns, "down", "ToolsListFailed", "Warning"))
        registry = await eventually(lambda: kube.condition(ns, "weather", "RegistryMatched").get("message"))
    assert "url http://***@127.0.0.1:" in registry
    shown = [
        json.dumps(kube.server_status(ns, "weather")),
        json.dumps(kube.server_status(ns, "down")),
        *(message for name in ("weather", "down") for _, _, message in kube.events(ns, name)),
        *(TextFormatter().format(record) for record in caplog.records),
    ]
    assert "***@" in shown[1]
    for text in shown:
        assert "s3cret" not in text and "alice" not in text, text


# ------------------------------------------------------------------------------ dead servers


async def test_remote_servers_are_probed_on_their_own_interval(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    port = closed_port()
    wl = workload_name(ns, "mail")
    server = McpTestServer(MAIL, port=port).start()
    try:
        kube.create_server(ns, "mail", {"url": server.url})
        start_operator([ns], remote_probe_interval=1.0)
        await eventually(lambda: probe.found("send an email", wl))
        server.stop()
        # No call, no cluster change: the probe notices (resync is an hour away).
        await within(15, ready(kube, ns, "mail", "ToolsListFailed"), what="probe marks the server")
        assert not await probe.found("send an email", wl)
        server = McpTestServer(MAIL, port=port).start()
        await within(15, lambda: probe.found("send an email", wl), what="re-probe brings it back")
        await eventually(ready(kube, ns, "mail", "ToolsListed"))
    finally:
        server.stop()


async def test_a_failed_call_marks_a_remote_server_at_once_and_it_comes_back(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    port = closed_port()
    wl = workload_name(ns, "mail")
    server = McpTestServer(MAIL, port=port).start()
    try:
        kube.create_server(ns, "mail", {"url": server.url})
        operator = start_operator([ns], endpoint=True)
        await eventually(lambda: probe.found("send an email", wl))
        assert operator.endpoint_url is not None
        server.stop()
        async with connect(operator.endpoint_url) as client:
            result = await client.call_tool(
                "call_tool", {"server_name": wl, "tool_name": "send_email", "parameters": {}}
            )
        assert "connection refused" in error_text(result)
        await within(5, ready(kube, ns, "mail", "CallFailed"), what="the failed call marks the server")
        assert not await probe.found("send an email", wl)
        assert await probe.status(wl) == "ERROR"
        await eventually(lambda: kube.has_event(ns, "mail", "CallFailed", "Warning"))
        # Re-probed with backoff (no resync, no probe timer within the test): back once it answers.
        server = McpTestServer(MAIL, port=port).start()
        await within(20, lambda: probe.found("send an email", wl), what="back after the re-probe")
    finally:
        server.stop()


async def test_a_failed_call_to_a_container_server_only_reprobes_it(
    ns: str, kube: Kube, kube_api: ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """Pods decide a container server's status: a call failing for its own reasons changes
    nothing; a server that stopped answering is found by the re-probe the call started."""
    wl = workload_name(ns, "reports")
    with HostileMcpServer(Hostility.huge_result(5 * 1024 * 1024)) as hostile:
        kube.create_server(ns, "reports", {"image": "ghcr.io/acme/reports:1", "endpoint": hostile.url})
        kube.create_pod(ns, "reports-0", instance="reports")
        set_pod_status(kube_api, ns, "reports-0", "Running")
        operator = start_operator([ns], endpoint=True)
        counter = operator.list_tools
        assert counter is not None
        await eventually(lambda: probe.found("dump a large report", wl))
        reads = counter.count(hostile.url)
        assert operator.endpoint_url is not None
        async with connect(operator.endpoint_url) as client:
            result = await client.call_tool("call_tool", {"server_name": wl, "tool_name": "dump", "parameters": {}})
        assert "MCP_OPTIMIZER_MAX_CALL_RESULT_BYTES" in error_text(result)
        await eventually(lambda: counter.count(hostile.url) > reads, what="a re-probe")
        assert kube.server_status(ns, "reports")["phase"] == "Running"
        assert await probe.found("dump a large report", wl)

    # Now the server is gone: the call fails, the re-probe fails, and only that makes it ERROR.
    async with connect(operator.endpoint_url) as client:
        result = await client.call_tool("call_tool", {"server_name": wl, "tool_name": "dump", "parameters": {}})
    assert "connection refused" in error_text(result)
    await within(10, ready(kube, ns, "reports", "ToolsListFailed"), what="the re-probe marks it")
    assert not await probe.found("dump a large report", wl)


async def test_the_refresh_annotation_forces_a_reread(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    wl = workload_name(ns, "mail")
    with McpTestServer(MAIL) as server:
        kube.create_server(ns, "mail", {"url": server.url})
        counter = start_operator([ns]).list_tools
        assert counter is not None
        await eventually(lambda: probe.found("send an email", wl))
        server.set_tools([*MAIL, make_tool("delete_email", "Delete an email message")])
        kube.annotate_server(ns, "mail", {REFRESH_ANNOTATION: "1"})
        await within(10, lambda: probe.found("delete an email message", wl, "delete_email"), what="refresh 1")
        server.set_tools(MAIL[:1])
        kube.annotate_server(ns, "mail", {REFRESH_ANNOTATION: "2026-12-01T12:00:00Z"})
        await within(10, lambda: equals(probe.tools(wl), ["send_email"]), what="refresh 2")
        await eventually(lambda: kube.server_status(ns, "mail").get("toolCount") == 1)
        assert counter.count(server.url) == 3
