"""ToolHive interop on the real control plane: ToolHive's real CRDs and example objects, its
operator played by writing status as it does, real MCP servers on 127.0.0.1 as its proxies.

What the issue asks, one test each: tools searchable when Ready and gone on Failed/Stopped within
a second, back on Ready; an MCPToolConfig change re-reads; MCPRemoteProxy and MCPServerEntry
indexed; registry matching by image and by URL against ToolHive's own catalog; a vMCP does not
double the results; ToolHive's MCPServer and ours of the same name are two workloads; deleting an
object removes its rows, and a restart removes the rows of objects deleted meanwhile. The
read-only guarantee is checked as the operator's ServiceAccount with list/watch only.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import pytest
from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.mcp.auth import build_token_table
from mcp_optimizer.mcp.scope import AccessScope
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.k8s.harness import (
    IndexProbe,
    Kube,
    OperatorFactory,
    OperatorThread,
    column_is,
    equals,
    eventually,
    legacy_catalog,
    within,
)
from tests.mcp.server_env import connect, payload
from tests.support import toolhive as th
from tests.support.shared import shared_dir

pytestmark = pytest.mark.kube

#: The issue: a phase change reaches search in under a second.
FAST = 1.0

FETCH_TOOLS = [
    make_tool("fetch", "Fetch a URL from the internet and return its content as markdown",
              {"type": "object", "properties": {"url": {"type": "string"}}}),
    make_tool("fetch_raw", "Download the raw bytes of a web page without converting them"),
]


def mcpserver(ns: str, name: str) -> str:
    return workload_name(ns, name, "MCPServer")


def entry(ns: str, name: str) -> str:
    return workload_name(ns, name, "MCPServerEntry")


def proxy(ns: str, name: str) -> str:
    return workload_name(ns, name, "MCPRemoteProxy")


def remote_proxy(name: str, remote_url: str, **spec: Any) -> dict[str, Any]:
    """An MCPRemoteProxy as a ToolHive user writes one (ToolHive ships no example of it)."""
    return {
        "apiVersion": "toolhive.stacklok.dev/v1beta1",
        "kind": "MCPRemoteProxy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"remoteUrl": remote_url, "transport": "streamable-http", "proxyPort": 8080, **spec},
    }


def server_entry(name: str, remote_url: str, group: str) -> dict[str, Any]:
    """An MCPServerEntry like ToolHive's mcpserverentry_basic example, at another URL."""
    (doc,) = [d for d in th.example("mcpserverentry_basic") if d["kind"] == "MCPServerEntry"]
    return {**doc, "metadata": {**doc["metadata"], "name": name},
            "spec": {**doc["spec"], "remoteUrl": remote_url, "groupRef": {"name": group}}}


def apply_example(api: client.ApiClient, ns: str, name: str) -> list[dict[str, Any]]:
    """Apply ToolHive's example ``name`` unchanged (in the test's namespace)."""
    return [th.apply(api, ns, doc) for doc in th.example(name)]


@pytest.fixture
def toolhive_crds(kube_api: client.ApiClient) -> None:
    """ToolHive's CRDs, installed (transformed for kube-apiserver 1.20) if they are not served."""
    if set(th.PLURALS.values()) - th.served_plurals(kube_api):
        th.install_crds(kube_api)


@pytest.fixture
def tns(ns: str, kube_api: client.ApiClient, toolhive_crds: None) -> Iterator[str]:
    """A test namespace whose ToolHive objects are deleted at teardown (after the operator stopped)."""
    yield ns
    th.empty_namespace(kube_api, ns)


async def _is(check: Any, expected: Any) -> bool:
    return bool(await check() == expected)


async def test_mcpserver_phase_drives_search(
    tns: str, kube_api: client.ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """ToolHive's fetch example, unchanged: Ready -> searchable, Failed/Stopped -> gone within a
    second (one write, no tools/list), Ready again -> back with the stored tools."""
    (server_doc,) = th.example("mcpserver_fetch")
    th.apply(kube_api, tns, server_doc)
    operator = start_operator([tns])
    counter = operator.list_tools
    assert counter is not None
    wl = mcpserver(tns, "fetch")

    def status() -> Any:
        return probe.status(wl)

    async def searchable() -> bool:
        return await probe.found("fetch a web page as markdown", wl, "fetch")

    with McpTestServer(FETCH_TOOLS) as proxy:
        # Created, no status yet (ToolHive has not reconciled it): not indexed. Pending: STOPPED.
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Pending", url=proxy.url)
        await eventually(lambda: _is(status, "STOPPED"), what="indexed as STOPPED")
        row = await probe.workload(wl)
        assert row is not None
        assert row["name"] == "fetch" and row["package"] == "ghcr.io/stackloklabs/gofetch/server"
        assert row["namespace"] == tns and row["group"] == "default"
        assert counter.count(proxy.url) == 0
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready")
        await eventually(searchable, what="tools searchable once Ready")
        assert await status() == "RUNNING"
        assert counter.count(proxy.url) == 1
        row = await probe.workload(wl)
        assert row is not None
        assert row["endpoint"] == proxy.url and row["transport"] == "streamable-http"

        for phase, expected in (("Failed", "ERROR"), ("Ready", "RUNNING"), ("Stopped", "STOPPED"),
                                ("Ready", "RUNNING"), ("Terminating", "STOPPED"), ("Ready", "RUNNING")):
            th.set_status(kube_api, "MCPServer", tns, "fetch", phase=phase, message=f"now {phase}")
            took = await within(FAST * 5, functools.partial(_is, status, expected), what=f"{phase}")
            assert took < FAST, f"{phase} took {took:.2f}s to reach the index"
            assert await searchable() is (expected == "RUNNING")
        row = await probe.workload(wl)
        assert row is not None
        assert counter.count(proxy.url) == 1, "a phase change must not re-read tools"

        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Failed", message="CrashLoopBackOff")
        await eventually(lambda: _is(status, "ERROR"))
        assert "Failed: CrashLoopBackOff" in (await probe.workload(wl) or {})["status_reason"]


NOTION_TOOLS = [
    make_tool("notion_search", "Search the pages and databases of a Notion workspace"),
    make_tool("notion_create_page", "Create a new page in a Notion workspace"),
]
WEATHER_TOOLS = [make_tool("get_forecast", "Get the weather forecast for a city")]


def put_toolhive_catalog(kube: Any, ns: str) -> str:
    """ToolHive's own registry catalog from ../shared (102 servers), as a catalog ConfigMap."""
    registry = shared_dir() / "data" / "toolhive-registry" / "registry.json"
    kube.put_catalog(ns, "toolhive-registry", registry.read_text())
    return f"{ns}/toolhive-registry"


async def test_tool_config_change_rereads_the_tools(
    tns: str, kube_api: client.ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """ToolHive's fetch-with-MCPToolConfig example: the proxy applies the filter; changing the
    MCPToolConfig reads the tools again, and so does ToolHive recording a new toolConfigHash."""
    apply_example(kube_api, tns, "mcpserver_fetch_tools_filter")
    wl = mcpserver(tns, "fetch")
    with McpTestServer([FETCH_TOOLS[0]]) as proxy_server:  # the filter keeps "fetch" only
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready", url=proxy_server.url, toolConfigHash="h1")
        operator = start_operator([tns])
        counter = operator.list_tools
        assert counter is not None
        await eventually(lambda: equals(probe.tools(wl), ["fetch"]), what="filtered tools indexed")
        reads = counter.count(proxy_server.url)

        # The user widens the filter; ToolHive's proxy lists both tools (nothing written on the MCPServer yet).
        proxy_server.set_tools(FETCH_TOOLS)
        th.patch_spec(kube_api, "MCPToolConfig", tns, "fetch-tools", {"toolsFilter": ["fetch", "fetch_raw"]})
        await eventually(lambda: equals(probe.tools(wl), ["fetch", "fetch_raw"]), what="re-read after the change")
        assert counter.count(proxy_server.url) == reads + 1
        assert await probe.found("download the raw bytes of a page", wl, "fetch_raw")

        # An override renames a tool; ToolHive applies it and records the new hash on the server.
        proxy_server.set_tools([make_tool("get_web_page", "Get a web page as markdown"), FETCH_TOOLS[1]])
        th.set_status(kube_api, "MCPServer", tns, "fetch", toolConfigHash="h2")
        await eventually(lambda: equals(probe.tools(wl), ["fetch_raw", "get_web_page"]), what="re-read on the new hash")


async def test_proxies_and_entries_are_indexed_and_matched_to_the_registry(
    tns: str, kube: Kube, kube_api: client.ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """Registry matching against ToolHive's own catalog: MCPServers by image (the fetch and
    GitHub examples, unchanged), an MCPRemoteProxy and the MCPServerEntry example by URL. A
    Pending entry is never contacted; a Valid one is read at its remote URL."""
    for name in ("mcpserver_fetch", "mcpserver_github", "mcpserverentry_basic"):
        apply_example(kube_api, tns, name)
    th.apply(kube_api, tns, remote_proxy("notion", "https://mcp.notion.com/mcp"))
    with (
        McpTestServer(FETCH_TOOLS) as fetch_proxy,
        McpTestServer(NOTION_TOOLS) as notion_proxy,
        McpTestServer(WEATHER_TOOLS) as weather,
    ):
        th.apply(kube_api, tns, server_entry("weather", weather.url, "remote-tools"))
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready", url=fetch_proxy.url)
        th.set_status(kube_api, "MCPServer", tns, "github", phase="Pending")
        th.set_status(kube_api, "MCPRemoteProxy", tns, "notion", phase="Ready", url=notion_proxy.url)
        th.set_status(kube_api, "MCPServerEntry", tns, "context7", phase="Pending")
        th.set_status(kube_api, "MCPServerEntry", tns, "weather", phase="Valid")
        operator = start_operator([tns], catalog_namespaces=(tns,))
        counter = operator.list_tools
        assert counter is not None
        # The catalogs come after the start (the ToolHive catalog's ~1,800 texts take a while on a
        # loaded machine; the start's catalog load would hold back readiness meanwhile).
        toolhive_catalog = put_toolhive_catalog(kube, tns)
        # A second catalog lists the loopback server an entry points at, so that it matches by URL too.
        kube.put_catalog(tns, "local", legacy_catalog(remote_servers={
            "weather-local": {"url": weather.url, "description": "Weather forecasts", "tools": ["get_forecast"]}}))

        linked = {
            mcpserver(tns, "fetch"): ("fetch", toolhive_catalog),  # by image, another tag than the catalog's
            mcpserver(tns, "github"): ("github", toolhive_catalog),
            proxy(tns, "notion"): ("notion-remote", toolhive_catalog),  # by spec.remoteUrl, read at status.url
            entry(tns, "context7"): ("context7-remote", toolhive_catalog),
            entry(tns, "weather"): ("weather-local", f"{tns}/local"),
        }
        for wl, (registry_name, catalog) in linked.items():
            await eventually(lambda wl=wl, r=registry_name: column_is(probe.workload(wl), "registry_server_name", r),
                             timeout=180, what=f"{wl} linked to {registry_name}")
            assert (await probe.workload(wl) or {})["registry_catalog"] == catalog
        assert await probe.found("search my notion workspace", proxy(tns, "notion"), "notion_search")
        assert await probe.found("weather forecast for Paris", entry(tns, "weather"), "get_forecast")
        assert await probe.found("fetch a web page", mcpserver(tns, "fetch"), "fetch")
        assert await probe.status(mcpserver(tns, "github")) == "STOPPED"
        assert await probe.status(entry(tns, "context7")) == "STOPPED"
        assert counter.count("https://mcp.context7.com/mcp") == 0, "a Pending entry must not be contacted"
        assert counter.count(notion_proxy.url) == 1 and counter.count("https://mcp.notion.com/mcp") == 0
        row = await probe.workload(proxy(tns, "notion"))
        assert row is not None
        assert (row["url"], row["endpoint"]) == ("https://mcp.notion.com/mcp", notion_proxy.url)
        # Events about ToolHive's objects are posted as for ours (an Event is not a write to them).
        await eventually(lambda: kube.has_event(tns, "notion", "RegistryLinked", "Normal"))

        # An entry ToolHive fails: out of search within a second.
        th.set_status(kube_api, "MCPServerEntry", tns, "weather", phase="Failed")
        took = await within(FAST * 5, lambda: column_is(probe.workload(entry(tns, "weather")), "status", "ERROR"))
        assert took < FAST
        assert not await probe.found("weather forecast for Paris", entry(tns, "weather"))


async def test_a_vmcp_does_not_double_the_results(
    tns: str, kube_api: client.ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """ToolHive's simple vMCP example: by default the group is indexed through its backend and
    the vMCP is left out; with the setting, through the vMCP and the backend is left out. Either
    way each tool is found once."""
    apply_example(kube_api, tns, "vmcp_simple_discovered")
    tool = make_tool("convert_units", "Convert a quantity between units of length, mass or temperature")
    prefixed = {**tool, "name": "yardstick-simple_convert_units"}  # vMCP's prefix conflict resolution
    backend_wl = mcpserver(tns, "yardstick-simple")
    vmcp_wl = workload_name(tns, "simple-vmcp", "VirtualMCPServer")
    query = "convert a length from miles to kilometres"

    async def conversions() -> list[tuple[str, str]]:
        return [(h.server, h.tool) for h in await probe.search(query, limit=20) if "convert_units" in h.tool]

    with McpTestServer([tool]) as backend, McpTestServer([prefixed]) as vmcp:
        th.set_status(kube_api, "MCPServer", tns, "yardstick-simple", phase="Ready", url=backend.url)
        # vMCP's status.url has no path; it serves streamable HTTP at /mcp.
        th.set_status(kube_api, "VirtualMCPServer", tns, "simple-vmcp", phase="Ready",
                      url=vmcp.url.removesuffix("/mcp"))
        first = start_operator([tns])
        await eventually(lambda: equals(conversions(), [(backend_wl, "convert_units")]), what="backend indexed once")
        assert await probe.workload(vmcp_wl) is None
        first.stop()

        second = start_operator([tns], toolhive_vmcp_groups=(f"{tns}/my-services",))
        await eventually(lambda: equals(conversions(), [(vmcp_wl, "yardstick-simple_convert_units")]),
                         what="the group through its vMCP, once")
        assert await probe.workload(backend_wl) is None  # removed by the start's garbage collection
        assert second.list_tools is not None and second.list_tools.count(vmcp.url) >= 1
        # Degraded (some backends down) still serves.
        th.set_status(kube_api, "VirtualMCPServer", tns, "simple-vmcp", phase="Degraded")
        await eventually(lambda: column_is(probe.workload(vmcp_wl), "status_reason", "ToolHive reports Degraded"))
        assert await probe.status(vmcp_wl) == "RUNNING"


def endpoint_settings(op_settings: Any) -> Any:
    return replace(op_settings, mcp_host="127.0.0.1", mcp_port=0, call_timeout=10.0)


async def test_toolhive_and_our_mcpserver_of_the_same_name_are_two_workloads(
    tns: str,
    kube: Kube,
    kube_api: client.ApiClient,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    op_settings: Settings,
    embedder: Embedder,
) -> None:
    """servers --json, find_tool and call_tool tell ToolHive's MCPServer fetch and ours apart
    (ToolHive's is served over SSE here: the proxy URL ``.../sse#fetch``)."""
    tools = [FETCH_TOOLS[0]]
    with McpTestServer(tools, name="ours") as ours, McpTestServer(tools, name="theirs") as theirs:
        kube.create_server(tns, "fetch", {"url": ours.url})
        apply_example(kube_api, tns, "mcpserver_fetch")
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready", url=f"{theirs.sse_url}#fetch")
        start_operator([tns])
        ours_wl, theirs_wl = workload_name(tns, "fetch"), mcpserver(tns, "fetch")
        for wl in (ours_wl, theirs_wl):
            await eventually(lambda wl=wl: probe.found("fetch a web page", wl, "fetch"), what=wl)
        row = await probe.workload(theirs_wl)
        assert row is not None
        assert (row["endpoint"], row["transport"]) == (theirs.sse_url, "sse")

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcp_optimizer", "--db", str(op_settings.db_path), "servers", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        listed = {i["workload_name"]: i for i in json.loads(out) if i["kind"] == "workload"}
        assert listed[ours_wl]["url"] == ours.url and listed[ours_wl]["name"] == "fetch"
        assert listed[theirs_wl]["package"] == "ghcr.io/stackloklabs/gofetch/server"
        assert listed[theirs_wl]["name"] == "fetch"

        search = ToolSearch(probe.engine, embedder)
        async with McpEndpoint(endpoint_settings(op_settings), search) as endpoint, connect(endpoint.url) as session:
            found = payload(await session.call_tool("find_tool", {"tool_description": "fetch a web page"}))
            assert {h["server"] for h in found["tools"] if h["tool"] == "fetch"} == {ours_wl, theirs_wl}
            result = payload(await session.call_tool("call_tool", {
                "server_name": theirs_wl, "tool_name": "fetch", "parameters": {"url": "https://example.com"}}))
            assert result is not None
            assert theirs.calls == [("fetch", {"url": "https://example.com"})] and ours.calls == []


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def test_toolhive_groups_are_scopes(
    tns: str,
    kube_api: client.ApiClient,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    op_settings: Settings,
    embedder: Embedder,
) -> None:
    """spec.groupRef (ToolHive's mixed-group example) and the group label become the workload's
    group: find_tool(group=...) and tokens scoped to a group see only that group's servers."""
    apply_example(kube_api, tns, "mcpserverentry_mixed_group")
    (fetch_doc,) = th.example("mcpserver_fetch")
    th.apply(kube_api, tns, {**fetch_doc, "metadata": {**fetch_doc["metadata"], "name": "ops-fetch",
                                                       "labels": {"toolhive.stacklok.dev/group": "ops"}}})
    github_tools = [make_tool("create_issue", "Create a new issue in a GitHub repository")]
    with McpTestServer(github_tools) as github, McpTestServer(FETCH_TOOLS) as fetch:
        th.set_status(kube_api, "MCPServer", tns, "github-mcp", phase="Ready", url=github.url)
        th.set_status(kube_api, "MCPServer", tns, "ops-fetch", phase="Ready", url=fetch.url)
        th.set_status(kube_api, "MCPServerEntry", tns, "context7", phase="Pending")
        start_operator([tns])
        github_wl, fetch_wl = mcpserver(tns, "github-mcp"), mcpserver(tns, "ops-fetch")
        await eventually(lambda: probe.found("open a bug report on github", github_wl))
        await eventually(lambda: probe.found("fetch a web page", fetch_wl))
        assert (await probe.workload(github_wl) or {})["group"] == "engineering-team"
        assert (await probe.workload(fetch_wl) or {})["group"] == "ops"
        await eventually(lambda: column_is(probe.workload(entry(tns, "context7")), "group", "engineering-team"))
        assert await probe.workload(workload_name(tns, "eng-tools", "VirtualMCPServer")) is None

        assert await probe.found("open a bug report on github", github_wl, groups=["engineering-team"])
        assert not await probe.found("open a bug report on github", github_wl, groups=["ops"])

        tokens = build_token_table([(_digest("ops-token"), AccessScope.of("ops", ["ops"], [tns]))])
        search = ToolSearch(probe.engine, embedder)
        async with (
            McpEndpoint(endpoint_settings(op_settings), search, tokens=tokens) as endpoint,
            connect(endpoint.url, token="ops-token") as session,
        ):
            hits = payload(await session.call_tool("find_tool", {"tool_description": "create a github issue"}))
            assert github_wl not in {h["server"] for h in hits["tools"]}
            hits = payload(await session.call_tool("find_tool", {"tool_description": "fetch a web page"}))
            assert fetch_wl in {h["server"] for h in hits["tools"]}


async def test_deleted_objects_leave_no_rows_even_across_a_restart(
    tns: str, kube_api: client.ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """Deletion is noticed by the watch (ToolHive's own finalizer holding the object is enough);
    objects deleted while the operator is down are collected at its start."""
    apply_example(kube_api, tns, "mcpserver_fetch")
    th.apply(kube_api, tns, remote_proxy("notion", "https://mcp.notion.com/mcp"))
    held = remote_proxy("held", "https://mcp.linear.app/mcp")
    held["metadata"]["finalizers"] = ["toolhive.stacklok.dev/finalizer"]  # as ToolHive's operator adds
    th.apply(kube_api, tns, held)
    with McpTestServer(WEATHER_TOOLS) as weather, McpTestServer(NOTION_TOOLS) as notion:
        th.apply(kube_api, tns, server_entry("weather", weather.url, "remote-tools"))
        th.set_status(kube_api, "MCPServerEntry", tns, "weather", phase="Valid")
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Pending")
        th.set_status(kube_api, "MCPRemoteProxy", tns, "notion", phase="Ready", url=notion.url)
        th.set_status(kube_api, "MCPRemoteProxy", tns, "held", phase="Ready", url=notion.url)
        first = start_operator([tns])
        names = {mcpserver(tns, "fetch"), proxy(tns, "notion"), proxy(tns, "held"), entry(tns, "weather")}
        await eventually(lambda: equals(probe.workload_names(), names), what="all four indexed")
        await eventually(lambda: probe.found("weather forecast", entry(tns, "weather")))

        th.delete(kube_api, "MCPRemoteProxy", tns, "held")  # stays, Terminating, until ToolHive releases it
        await eventually(lambda: equals(probe.workload_names(), names - {proxy(tns, "held")}), what="held removed")
        assert th.get(kube_api, "MCPRemoteProxy", tns, "held") is not None
        th.delete(kube_api, "MCPServer", tns, "fetch")
        await eventually(lambda: equals(probe.workload_names(), {proxy(tns, "notion"), entry(tns, "weather")}))
        first.stop()

        th.delete(kube_api, "MCPServerEntry", tns, "weather")  # while the operator is down
        start_operator([tns])
        await eventually(lambda: equals(probe.workload_names(), {proxy(tns, "notion")}), what="collected at start")
        assert not await probe.found("weather forecast", entry(tns, "weather"))


#: The least the operator needs for its own work (as in test_operator_restart.py) ...
OPERATOR_RULES = [
    {"apiGroups": ["mcp-optimizer.dev"], "resources": ["mcpservers"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["mcp-optimizer.dev"], "resources": ["mcpservers/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
#: ... and what it adds for ToolHive: read, nothing else (the Helm chart's toolhive rule).
TOOLHIVE_RULE = {
    "apiGroups": ["toolhive.stacklok.dev"],
    "resources": ["mcpservers", "mcpremoteproxies", "mcpserverentries", "mcptoolconfigs"],
    "verbs": ["list", "watch"],
}


def _untouched(obj: dict[str, Any]) -> dict[str, Any]:
    """What must stay exactly as the user and ToolHive left it."""
    meta = obj["metadata"]
    return {
        "resourceVersion": meta["resourceVersion"],
        "finalizers": meta.get("finalizers"),
        "annotations": meta.get("annotations"),
        "status": obj.get("status"),
    }


async def test_read_only_as_the_operators_service_account(
    tns: str,
    kube: Kube,
    kube_api: client.ApiClient,
    operator_kubeconfig: str,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As its ServiceAccount, first without any right on ToolHive's resources (it starts, serves
    its own MCPServers and says in one line why ToolHive is not watched), then with list/watch
    only (picked up without a restart of the process): it indexes, follows phases and tool
    configuration changes, and ToolHive's objects end exactly as ToolHive left them."""
    caplog.set_level(logging.INFO, logger="mcp_optimizer.operator.runner")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    role = f"mcp-optimizer-th-{tns[-8:]}"
    rbac.create_cluster_role(cast(Any, {"metadata": {"name": role}, "rules": OPERATOR_RULES}))
    rbac.create_cluster_role_binding(cast(Any, {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "mcp-optimizer", "namespace": "mcp-optimizer-system"}],
    }))
    try:
        with McpTestServer(FETCH_TOOLS) as fetch, McpTestServer(NOTION_TOOLS) as notion, \
                McpTestServer(WEATHER_TOOLS) as ours:
            apply_example(kube_api, tns, "mcpserver_fetch_tools_filter")
            th.apply(kube_api, tns, remote_proxy("notion", "https://mcp.notion.com/mcp"))
            th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready", url=fetch.url, toolConfigHash="h1")
            th.set_status(kube_api, "MCPRemoteProxy", tns, "notion", phase="Ready", url=notion.url)
            kube.create_server(tns, "weather", {"url": ours.url})
            settings = replace(start_operator.base, namespaces=(tns,), toolhive_recheck_interval=1.0)
            operator = OperatorThread(settings, kubeconfig=operator_kubeconfig, embedder=start_operator.embedder)
            start_operator.started.append(operator)
            operator.start()
            await eventually(lambda: probe.found("weather forecast", workload_name(tns, "weather")),
                             what="its own MCPServers, as today")
            lines = [r.getMessage() for r in caplog.records if "ToolHive resources are not watched" in r.getMessage()]
            assert len(lines) == 1 and "no permission to list" in lines[0], lines
            assert await probe.workload(mcpserver(tns, "fetch")) is None

            # The Helm chart's rule, granted while it runs: picked up at the next check.
            role_body = rbac.read_cluster_role(role)
            role_body.rules = [*(role_body.rules or ()), client.V1PolicyRule(**{
                "api_groups": TOOLHIVE_RULE["apiGroups"], "resources": TOOLHIVE_RULE["resources"],
                "verbs": TOOLHIVE_RULE["verbs"]})]
            rbac.replace_cluster_role(role, role_body)
            wl = mcpserver(tns, "fetch")
            await eventually(lambda: probe.found("fetch a web page", wl), timeout=30, what="ToolHive picked up")
            await eventually(lambda: probe.found("search my notion workspace", proxy(tns, "notion")))
            assert await probe.found("weather forecast", workload_name(tns, "weather"))

            th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Failed")
            await eventually(lambda: column_is(probe.workload(wl), "status", "ERROR"))
            th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready")
            await eventually(lambda: column_is(probe.workload(wl), "status", "RUNNING"))
            fetch.set_tools([FETCH_TOOLS[1]])
            th.patch_spec(kube_api, "MCPToolConfig", tns, "fetch-tools", {"toolsFilter": ["fetch_raw"]})
            await eventually(lambda: equals(probe.tools(wl), ["fetch_raw"]), what="MCPToolConfig change re-read")

            before = {(kind, o["metadata"]["name"]): _untouched(o) for kind, o in th.objects_in(kube_api, tns)}
            th.delete(kube_api, "MCPRemoteProxy", tns, "notion")
            await eventually(lambda: equals(probe.workload(proxy(tns, "notion")), None), what="deleted proxy's rows")
            # The operator did its whole job; ToolHive's objects carry nothing of it: no finalizer,
            # no annotation, no status, not one write since ToolHive's (the test's) own.
            after = {(kind, o["metadata"]["name"]): _untouched(o) for kind, o in th.objects_in(kube_api, tns)}
            del before[("MCPRemoteProxy", "notion")]
            assert after == before
            for (_, _), state in after.items():
                assert not state["finalizers"] and not state["annotations"]
            ours_meta = (kube.server(tns, "weather") or {})["metadata"]
            assert "mcp-optimizer.dev/finalizer" in ours_meta["finalizers"]  # ours, by contrast, is managed
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


async def test_absent_crds_then_installed(
    ns: str,
    kube: Kube,
    kube_api: client.ApiClient,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without ToolHive's CRDs the operator starts and serves as today, with one log line; once
    they are installed, it picks them up (kopf restarted in-process, the index kept)."""
    caplog.set_level(logging.INFO, logger="mcp_optimizer.operator.runner")
    th.remove_crds(kube_api)
    try:
        with McpTestServer(WEATHER_TOOLS) as ours, McpTestServer(FETCH_TOOLS) as fetch:
            kube.create_server(ns, "weather", {"url": ours.url})
            operator = start_operator([ns], toolhive_recheck_interval=1.0)
            ours_wl = workload_name(ns, "weather")
            await eventually(lambda: probe.found("weather forecast", ours_wl), what="serves as today")

            def not_watched() -> list[str]:
                messages = [r.getMessage() for r in caplog.records]
                return [m for m in messages if "ToolHive resources are not watched" in m]

            assert len(not_watched()) == 1 and "is not served" in not_watched()[0], not_watched()
            th.install_crds(kube_api)
            apply_example(kube_api, ns, "mcpserver_fetch")
            th.set_status(kube_api, "MCPServer", ns, "fetch", phase="Ready", url=fetch.url)
            wl = mcpserver(ns, "fetch")
            await eventually(lambda: probe.found("fetch a web page", wl), timeout=60, what="picked up")
            assert operator.running
            assert await probe.found("weather forecast", ours_wl)
            assert len(not_watched()) == 1, "the periodic check does not repeat the line"
            # Our MCPServer was resumed by the new kopf run, not re-created: one tools/list before
            # the restart, one at the resume; the row kept its id.
            assert operator.list_tools is not None and operator.list_tools.count(ours.url) <= 2
    finally:
        th.empty_namespace(kube_api, ns)
        if set(th.PLURALS.values()) - th.served_plurals(kube_api):
            th.install_crds(kube_api)
