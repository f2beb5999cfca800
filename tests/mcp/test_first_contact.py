"""What a new user meets first, end to end: stdio servers behind a bridge, task-only tools,
string-typed clients (the MCP Inspector's CLI sends every argument as a string)."""

from __future__ import annotations

import json
from typing import Any

from mcp_optimizer.config import Settings
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.mcp import list_tools
from mcp_optimizer.testing.mcp_servers import LOOPBACK_POLICY, McpTestServer, make_tool
from mcp_optimizer.testing.stdio_bridge import StdioBridge
from tests.mcp.server_env import connect, endpoint_settings, error_text, hits, payload, running_endpoint

TIME_TOOLS = [
    make_tool("get_current_time", "Get the current time in a specific timezone",
              {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}),
    make_tool("convert_time", "Convert a time between timezones",
              {"type": "object", "properties": {"source_timezone": {"type": "string"}, "time": {"type": "string"},
                                                "target_timezone": {"type": "string"}}}),
]
EVERYTHING_TOOLS = [
    make_tool("get-sum", "Returns the sum of two numbers",
              {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
               "required": ["a", "b"]}),
    make_tool("echo", "Echoes back the input message",
              {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
    make_tool("get-resource-links", "Returns a number of resource links",
              {"type": "object", "properties": {"count": {"type": "integer"}, "filter": {"type": "object"},
                                                "verbose": {"type": "boolean"}}}),
    # server-everything's tool that refuses plain tools/call: it requires MCP tasks.
    make_tool("simulate-research-query", "Simulates a deep research query over many sources and writes a report",
              {"type": "object", "properties": {"topic": {"type": "string"}}},
              execution={"taskSupport": "required"}),
]



async def index_server(indexer: Indexer, name: str, url: str, transport: str) -> None:
    """What the operator does for a remote MCPServer: tools/list with its transport, then index."""
    tools = await list_tools(url, transport, timeout=30, policy=LOOPBACK_POLICY)
    await indexer.apply_workload(WorkloadSpec(
        f"demo/{name}", name, url=url, endpoint=url, transport=transport, status=WorkloadStatus.RUNNING,
        namespace="demo", tools=tools,
    ))


async def test_stdio_server_is_found_and_called_through_its_bridge(indexer: Indexer, settings: Settings) -> None:
    async with StdioBridge(TIME_TOOLS, name="time") as bridge:
        # Stored as declared ("stdio"), as every index before this fix holds it: the client maps it.
        await index_server(indexer, "time", bridge.url, "stdio")
        await index_server(indexer, "time-sse", bridge.sse_url, "stdio")
        async with running_endpoint(indexer, endpoint_settings(settings)) as endpoint, connect(endpoint.url) as client:
            found = hits(await client.call_tool("find_tool", {"tool_description": "what time is it in Tokyo"}))
            assert found[0][1] == "get_current_time"
            for server in ("demo/time", "demo/time-sse"):
                result = await client.call_tool("call_tool", {
                    "server_name": server, "tool_name": "get_current_time", "parameters": {"timezone": "Asia/Tokyo"}})
                assert payload(result) == {"tool": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}


async def test_task_only_tools_are_neither_found_nor_called(indexer: Indexer, settings: Settings) -> None:
    with McpTestServer(EVERYTHING_TOOLS, legacy=True) as everything:
        listed = await list_tools(everything.url, timeout=30, policy=LOOPBACK_POLICY)
        assert listed[-1]["execution"] == {"taskSupport": "required"}  # the client keeps what tells it
        await index_server(indexer, "everything", everything.url, "streamable-http")
        async with running_endpoint(indexer, endpoint_settings(settings)) as endpoint, connect(endpoint.url) as client:
            for query in ("research a topic in depth and write a report", "simulate a research query",
                          "add two numbers"):
                found = hits(await client.call_tool("find_tool", {"tool_description": query, "limit": 10}))
                assert ("demo/everything", "simulate-research-query") not in found, (query, found)
            listing = payload(await client.call_tool("list_tools", {"server_name": "demo/everything"}))
            assert [t["name"] for t in listing["tools"]] == ["echo", "get-resource-links", "get-sum"]
            refused = error_text(await client.call_tool("call_tool", {
                "server_name": "demo/everything", "tool_name": "simulate-research-query"}))
            assert "has no tool 'simulate-research-query'" in refused
        assert [name for name, _ in everything.calls] == []


async def test_a_string_typed_client_can_find_and_call(indexer: Indexer, settings: Settings) -> None:
    # Exactly what `mcp-inspector --cli ... --tool-arg limit=3 --tool-arg parameters={...}` sends
    # when it cannot tell the type: every value a string.
    with McpTestServer(EVERYTHING_TOOLS, legacy=True) as everything:
        await index_server(indexer, "everything", everything.url, "streamable-http")
        async with running_endpoint(indexer, endpoint_settings(settings)) as endpoint, connect(endpoint.url) as client:
            # The advertised schemas give optional arguments a plain type, which the Inspector
            # converts by itself; a client that does not still gets through.
            schemas = {t.name: t.input_schema for t in (await client.list_tools()).tools}
            assert schemas["find_tool"]["properties"]["limit"]["type"] == "integer"
            assert schemas["call_tool"]["properties"]["parameters"]["type"] == "object"

            found = hits(await client.call_tool("find_tool", {"tool_description": "sum of numbers", "limit": "2"}))
            assert 1 <= len(found) <= 2 and found[0] == ("demo/everything", "get-sum")

            called = await client.call_tool("call_tool", {
                "server_name": "demo/everything", "tool_name": "get-sum", "parameters": '{"a": 2, "b": 3}'})
            assert payload(called) == {"tool": "get-sum", "arguments": {"a": 2, "b": 3}}

            # Inner values as strings too: read against the target tool's own inputSchema, and only
            # where that schema refuses a string.
            everything.registry.clear_calls()
            arguments: dict[str, Any] = {"count": "3", "filter": '{"kind": "text"}', "verbose": "true"}
            await client.call_tool("call_tool", {
                "server_name": "demo/everything", "tool_name": "get-resource-links", "parameters": arguments})
            await client.call_tool("call_tool", {
                "server_name": "demo/everything", "tool_name": "echo", "parameters": {"message": "42"}})
            await client.call_tool("call_tool", {
                "server_name": "demo/everything", "tool_name": "get-sum", "parameters": {"a": "2.5", "b": "x"}})
            assert everything.calls == [
                ("get-resource-links", {"count": 3, "filter": {"kind": "text"}, "verbose": True}),
                ("echo", {"message": "42"}),  # the schema takes a string: untouched
                ("get-sum", {"a": 2.5, "b": "x"}),  # "x" is no number: left for the server to refuse
            ]

            # A string that means nothing of the declared type still gets the clear refusal.
            for bad, message in (({"limit": "three"}, "'limit' must be an integer"),
                                 ({"limit": "2.5"}, "'limit' must be an integer"),
                                 ({"limit": "0"}, "'limit' must be between 1 and 50")):
                refused = error_text(await client.call_tool("find_tool", {"tool_description": "x", **bad}))
                assert message in refused, refused
            refused = error_text(await client.call_tool("call_tool", {
                "server_name": "demo/everything", "tool_name": "echo", "parameters": "[1, 2]"}))
            assert "'parameters' must be an object" in refused
    assert json.loads(json.dumps(arguments))  # the caller's own dict was not modified
    assert arguments["count"] == "3"
