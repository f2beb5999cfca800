"""MCPServer lifecycle against the real API server: create, update, delete, invalid, unreachable."""

from __future__ import annotations

import pytest

from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION, workload_name
from mcp_optimizer.testing.mcp_servers import HangingServer, McpTestServer, make_tool, refused_url
from tests.k8s.harness import MERGE_PATCH, IndexProbe, Kube, OperatorFactory, eventually

pytestmark = pytest.mark.kube

WEATHER = [
    make_tool("get_forecast", "Get the weather forecast for a city for the next days"),
    make_tool("get_alerts", "Severe weather alerts for a US state"),
]
GIT = [
    make_tool("git_log", "Show the commit history of a git repository"),
    make_tool("git_diff", "Show changes between commits in a git repository"),
]


async def test_remote_server_create_update_delete(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(WEATHER) as weather, McpTestServer(GIT) as git:
        kube.create_server(ns, "weather", {"url": weather.url})
        start_operator([ns])
        wl = workload_name(ns, "weather")

        # Created: indexed RUNNING with its tools, searchable, status written back.
        await eventually(lambda: probe.found("weather forecast for tomorrow", wl, "get_forecast"))
        assert await probe.tools(wl) == ["get_alerts", "get_forecast"]
        status = await eventually(lambda: kube.server_status(ns, "weather").get("phase") == "Running"
                                  and kube.server_status(ns, "weather"))
        assert status["toolCount"] == 2
        assert status["observedGeneration"] == 1
        assert status["lastSyncTime"]
        assert "registryServer" not in status
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert conditions["ToolsIndexed"]["status"] == "True"
        assert conditions["RegistryMatched"]["reason"] == "NotInRegistry"

        # Spec change: another URL (the row is updated in place, tools re-read).
        kube.patch_server(ns, "weather", {"url": git.url, "group": "dev"})
        await eventually(lambda: probe.found("commit history", wl, "git_log"))
        assert await probe.tools(wl) == ["git_diff", "git_log"]
        row = await probe.workload(wl)
        assert row is not None
        assert row["group"] == "dev"
        assert row["url"] == git.url
        # The old tools are gone from search. (The server itself may still match "weather": its
        # name is in its tools' full-text rows, and the MCPServer is still called weather.)
        assert not await probe.found("weather forecast for tomorrow", wl, "get_forecast")
        assert not await probe.found("weather alerts", wl, "get_alerts")
        await eventually(lambda: kube.server_status(ns, "weather").get("observedGeneration") == 2)

        # Delete: the finalizer removes the row, then lets the object go.
        kube.delete_server(ns, "weather")
        await eventually(lambda: kube.server(ns, "weather") is None, what="object deleted")
        assert await probe.workload(wl) is None
        assert not await probe.found("commit history", wl)


async def test_container_server_without_pods_is_indexed_stopped(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(WEATHER) as weather:
        kube.create_server(ns, "weather", {"image": "ghcr.io/acme/weather:1.0", "endpoint": weather.url})
        counter = start_operator([ns]).list_tools
        wl = workload_name(ns, "weather")
        await eventually(lambda: probe.status(wl), what="row")
        assert await probe.status(wl) == "STOPPED"
        status = await eventually(lambda: kube.server_status(ns, "weather").get("phase") and
                                  kube.server_status(ns, "weather"))
        assert status["phase"] == "Stopped"
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Ready"]["reason"] == "NoPods"
        assert conditions["ToolsIndexed"]["reason"] == "NotRunning"
        # Not running: the operator does not try to read its tools.
        assert counter is not None and counter.count(weather.url) == 0


async def test_invalid_spec_is_a_permanent_error_with_an_event(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(WEATHER) as weather:
        # Passes the CRD schema (endpoint is optional there) but a container server needs one.
        kube.create_server(ns, "broken", {"image": "ghcr.io/acme/weather:1.0"})
        start_operator([ns])
        wl = workload_name(ns, "broken")
        await eventually(lambda: kube.condition(ns, "broken", "Ready").get("reason") == "InvalidSpec")
        assert kube.server_status(ns, "broken")["phase"] == "Error"
        await eventually(lambda: kube.has_event(ns, "broken", "InvalidSpec", "Warning"))
        assert await probe.workload(wl) is None

        # Fixing the spec is a new change: the server gets indexed.
        kube.patch_server(ns, "broken", {"url": weather.url, "image": None})
        await eventually(lambda: probe.status(wl), what="row")
        await eventually(lambda: kube.server_status(ns, "broken").get("phase") == "Running")

        # Breaking it again removes it from the index (the cluster has no valid server by that name).
        kube.patch_server(ns, "broken", {"url": None, "image": "ghcr.io/acme/weather:1.0"})
        await eventually(lambda: kube.condition(ns, "broken", "Ready").get("reason") == "InvalidSpec")

        async def removed() -> bool:
            return await probe.workload(wl) is None

        await eventually(removed, what="row removed")


async def test_unreachable_and_hanging_servers(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    refused = refused_url()
    with HangingServer() as hanging, McpTestServer(WEATHER) as weather:
        kube.create_server(ns, "refused", {"url": refused})
        kube.create_server(ns, "hanging", {"url": hanging.url})
        kube.create_server(ns, "fine", {"url": weather.url})
        start_operator([ns], mcp_timeout=1.0)

        # The healthy server is not held up by the other two.
        await eventually(lambda: probe.found("weather forecast", workload_name(ns, "fine")), timeout=10)
        for name in ("refused", "hanging"):
            await eventually(lambda name=name: kube.condition(ns, name, "ToolsIndexed").get("reason")
                             == "ToolsListFailed", timeout=15)
            assert kube.server_status(ns, name)["phase"] == "Error"
            assert await probe.status(workload_name(ns, name)) == "ERROR"
            await eventually(lambda name=name: kube.has_event(ns, name, "ToolsListFailed", "Warning"))
        assert "timed out" in kube.condition(ns, "hanging", "ToolsIndexed")["message"]
        assert "refused" in kube.condition(ns, "refused", "ToolsIndexed")["message"]
        assert hanging.connections_accepted >= 1


async def test_a_failing_server_recovers_by_retry(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    server = McpTestServer(WEATHER)
    url = refused_url()
    # The URL is refused until a server listens there: start one on that very port later.
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    kube.create_server(ns, "late", {"url": url})
    start_operator([ns])
    wl = workload_name(ns, "late")
    await eventually(lambda: kube.condition(ns, "late", "ToolsIndexed").get("reason") == "ToolsListFailed")
    server = McpTestServer(WEATHER, port=port)
    with server:
        # kopf retries with backoff (1 s, 2 s, 4 s, ...): the server is picked up without a change.
        await eventually(lambda: probe.found("weather forecast", wl), timeout=20)
        await eventually(lambda: kube.server_status(ns, "late").get("phase") == "Running")
        assert kube.condition(ns, "late", "ToolsIndexed")["status"] == "True"


async def test_a_stripped_finalizer_does_not_leave_the_row_behind(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(WEATHER) as weather:
        kube.create_server(ns, "weather", {"url": weather.url})
        start_operator([ns])
        wl = workload_name(ns, "weather")
        await eventually(lambda: probe.found("weather forecast", wl))
        # Someone removes the finalizer by hand and deletes the object: no delete handler runs.
        kube.objects.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "weather", {"metadata": {"finalizers": None}}, _content_type=MERGE_PATCH
        )
        kube.delete_server(ns, "weather")

        async def removed() -> bool:
            return await probe.workload(wl) is None

        await eventually(removed, what="row removed")
