"""What a new user meets first, on the real API server: stdio servers behind a bridge are indexed
and callable, task-only tools are left out, and every problem gets a status that names the object
and says what to do (duplicate tool names, a too-long name, a registryRef of the wrong kind)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from mcp_optimizer.testing.stdio_bridge import StdioBridge
from tests.k8s.harness import IndexProbe, Kube, OperatorFactory, eventually, legacy_catalog
from tests.mcp.server_env import connect, hits, payload

pytestmark = pytest.mark.kube

TIME = [
    make_tool("get_current_time", "Get the current time in a specific timezone",
              {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}),
    make_tool("convert_time", "Convert a time between timezones"),
]
EVERYTHING = [
    make_tool("echo", "Echoes back the input message"),
    make_tool("get-sum", "Returns the sum of two numbers"),
    make_tool("simulate-research-query", "Simulates a deep research query and writes a report",
              execution={"taskSupport": "required"}),
]


def conditions(kube: Kube, ns: str, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in kube.server_status(ns, name).get("conditions") or ()}


async def test_stdio_servers_behind_a_bridge_are_indexed_and_callable(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe, op_settings: Settings
) -> None:
    async with StdioBridge(TIME, name="time", page_size=1) as bridge:
        # ToolHive's registry says "stdio" for most servers; users copy it. Both bridge paths.
        kube.create_server(ns, "time", {"url": bridge.url, "transport": "stdio"})
        kube.create_server(ns, "time-sse", {"url": bridge.sse_url, "transport": "stdio"})
        start_operator([ns])
        for name in ("time", "time-sse"):
            await eventually(lambda name=name: kube.server_status(ns, name).get("phase") == "Running", timeout=60,
                             what=f"{name} Running")
            assert kube.server_status(ns, name)["toolCount"] == 2
        row = await probe.workload(workload_name(ns, "time"))
        assert row is not None and row["transport"] == "stdio"  # stored as declared

        # The call path reads the same row: it must reach the server the listing reached.
        search = ToolSearch(probe.engine, probe.embedder)
        settings = replace(op_settings, mcp_host="127.0.0.1", mcp_port=0, call_timeout=30.0)
        async with McpEndpoint(settings, search) as endpoint, connect(endpoint.url) as client:
            found = hits(await client.call_tool("find_tool", {"tool_description": "what time is it in Tokyo"}))
            assert found[0][1] == "get_current_time"
            for name in ("time", "time-sse"):
                result = await client.call_tool("call_tool", {
                    "server_name": workload_name(ns, name), "tool_name": "get_current_time",
                    "parameters": {"timezone": "Asia/Tokyo"}})
                assert payload(result) == {"tool": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}


async def test_task_only_tools_and_repeated_names_are_reported_not_fatal(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(EVERYTHING, legacy=True) as everything, McpTestServer(legacy=True) as sloppy:
        sloppy.registry.set_tools([make_tool("search", "Search the wiki"), make_tool("search", "Search again"),
                                   make_tool("read_page", "Read a wiki page")], allow_repeated_names=True)
        kube.create_server(ns, "everything", {"url": everything.url})
        kube.create_server(ns, "wiki", {"url": sloppy.url})
        start_operator([ns])

        await eventually(lambda: kube.server_status(ns, "everything").get("phase") == "Running", timeout=60)
        assert await probe.tools(workload_name(ns, "everything")) == ["echo", "get-sum"]
        tools = conditions(kube, ns, "everything")["ToolsIndexed"]
        assert tools["status"] == "True"
        assert tools["message"] == ("2 tools indexed; 1 left out because they only run as MCP tasks, which "
                                    "call_tool does not support: simulate-research-query")

        # Repeated names: the spec is fine and the server works, so it stays Running and searchable.
        await eventually(lambda: kube.server_status(ns, "wiki").get("phase") == "Running", timeout=60)
        wiki = conditions(kube, ns, "wiki")
        assert wiki["Ready"]["status"] == "True"
        assert wiki["ToolsIndexed"]["reason"] == "DuplicateToolNames"
        assert "repeats tool names (search)" in wiki["ToolsIndexed"]["message"]
        assert "the MCP server must be fixed" in wiki["ToolsIndexed"]["message"]
        assert "InvalidSpec" not in {c["reason"] for c in wiki.values()}
        assert await probe.tools(workload_name(ns, "wiki")) == ["read_page", "search"]
        await eventually(lambda: kube.has_event(ns, "wiki", "DuplicateToolNames", "Warning"), what="Warning Event")


async def test_a_name_too_long_for_the_default_selector_says_so(
    ns: str, kube: Kube, start_operator: OperatorFactory
) -> None:
    name = "search-the-engineering-wiki-and-the-runbooks-of-the-platform-team"  # 65 characters
    assert len(name) > 63
    with McpTestServer(EVERYTHING) as server:
        kube.create_server(ns, name, {"image": "ghcr.io/acme/wiki:1", "endpoint": server.url})
        start_operator([ns])
        ready = await eventually(lambda: conditions(kube, ns, name).get("Ready"), timeout=60)
    assert ready["reason"] == "PodSelectorUnmatchable"
    assert "label values are at most 63 characters and this one has 65" in ready["message"]
    assert "set spec.podSelector" in ready["message"]
    await eventually(lambda: kube.has_event(ns, name, "PodSelectorUnmatchable", "Warning"), what="Warning Event")


async def test_a_registry_ref_of_the_wrong_kind_keeps_a_working_server_in_search(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(EVERYTHING) as server:
        kube.put_catalog(ns, "catalog", legacy_catalog(
            servers={"wiki-image": {"image": "ghcr.io/acme/wiki:1", "description": "Wiki (container)"}},
            remote_servers={"wiki": {"url": server.url, "description": "The engineering wiki"}},
        ))
        # A remote server pinned to a container entry: a mistake no reconcile can make right.
        kube.create_server(ns, "wiki", {"url": server.url,
                                        "registryRef": {"catalog": f"{ns}/catalog", "name": "wiki-image"}})
        start_operator([ns], catalog_namespaces=(ns,))
        await eventually(lambda: kube.server_status(ns, "wiki").get("phase") == "Running", timeout=60)
        status = kube.server_status(ns, "wiki")
        matched = conditions(kube, ns, "wiki")["RegistryMatched"]
        # Matched by its URL instead, and found by find_tool.
        assert status["registryServer"] == {"name": "wiki", "catalog": f"{ns}/catalog"}
        assert matched["status"] == "True"
        assert "its pinned registry entry" in matched["message"] and "the pin is ignored" in matched["message"]
        assert await probe.found("add two numbers", workload_name(ns, "wiki"), "get-sum")
        await eventually(lambda: kube.has_event(ns, "wiki", "RegistryRefInvalid", "Warning"), what="Warning Event")
