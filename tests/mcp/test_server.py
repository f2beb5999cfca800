"""The MCP endpoint end to end: an SDK client over HTTP, a real index and real backend servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from mcp.shared.exceptions import MCPError

from mcp_optimizer.config import Settings
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.testing.mcp_servers import HangingServer, McpTestServerFarm, refused_url
from tests.mcp.server_env import (
    GITHUB,
    connect,
    endpoint_settings,
    error_text,
    farm,
    hits,
    payload,
    populate,
    running_endpoint,
)
from tests.support.backends import index_backend, settings

# The session fixture, and the index on SQLite and on PostgreSQL (every test here searches).
__all__ = ["farm", "index_backend", "settings"]

PINS = ("ns-a/github/create_issue", "ns-b/slack/send_message", "ns-a/jira/create_ticket", "nowhere/nothing")
META = {"find_tool", "search_registry", "list_tools", "call_tool"}


@pytest.fixture
async def world(indexer: Indexer, farm: McpTestServerFarm) -> Indexer:
    await populate(indexer, farm)
    return indexer


@pytest.fixture
async def endpoint(world: Indexer, settings: Settings) -> AsyncIterator[McpEndpoint]:
    async with running_endpoint(world, endpoint_settings(settings, pinned_tools=PINS)) as running:
        yield running


# --------------------------------------------------------------------------------- listing


async def test_advertises_meta_tools_and_running_pins(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    # Jira is stopped and "nowhere" does not exist: their pins are not advertised.
    assert set(tools) == META | {"ns-a_github__create_issue", "ns-b_slack__send_message"}
    assert "FIRST" in (tools["find_tool"].description or "")
    assert tools["find_tool"].input_schema["required"] == ["tool_description"]
    # A plain type (no anyOf with null): clients that convert strings by the type can see it.
    assert tools["find_tool"].input_schema["properties"]["limit"]["maximum"] == 50
    assert tools["find_tool"].input_schema["properties"]["limit"]["type"] == "integer"
    assert tools["call_tool"].input_schema["required"] == ["server_name", "tool_name"]
    pinned = tools["ns-a_github__create_issue"]
    assert pinned.input_schema == GITHUB[0]["inputSchema"]
    assert "Create a new issue" in (pinned.description or "")


async def test_configured_descriptions_replace_the_built_in_ones(world: Indexer, settings: Settings) -> None:
    custom = endpoint_settings(
        settings, find_tool_description="Search our tools.", call_tool_description="Run a tool found before."
    )
    async with running_endpoint(world, custom) as ep, connect(ep.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert tools["find_tool"].description == "Search our tools."
    assert tools["call_tool"].description == "Run a tool found before."


# ------------------------------------------------------------------------------- find_tool


async def test_find_tool_returns_running_tools_with_schema_and_token_estimate(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        result = await client.call_tool("find_tool", {"tool_description": "open a new issue in a github repo"})
    data = payload(result)
    first = data["tools"][0]
    assert (first["server"], first["tool"]) == ("ns-a/github", "create_issue")
    assert first["input_schema"] == GITHUB[0]["inputSchema"]
    assert first["description"] == GITHUB[0]["description"]
    estimate = data["token_estimate"]
    assert 0 < estimate["returned_tools_tokens"] <= estimate["all_running_tools_tokens"]
    assert estimate["saved_tokens"] == estimate["all_running_tools_tokens"] - estimate["returned_tools_tokens"]
    assert "/ 4" in estimate["method"]


async def test_find_tool_never_returns_stopped_or_erroring_servers(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        jira = await client.call_tool("find_tool", {"tool_description": "create a ticket in a jira project"})
        image = await client.call_tool("find_tool", {"tool_description": "resize an image", "limit": 50})
    assert all(server not in ("ns-a/jira", "ns-b/imaging") for server, _ in hits(jira) + hits(image))


async def test_find_tool_limit_keywords_and_group(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        one = await client.call_tool(
            "find_tool", {"tool_description": "run a query", "tool_keywords": ["sql", "postgres"], "limit": 1}
        )
        team_b = await client.call_tool(
            "find_tool", {"tool_description": "send a message to a channel", "group": "team-b"}
        )
        nothing = await client.call_tool("find_tool", {"tool_description": "send a message", "group": "no-such"})
    assert hits(one) == [("ns-a/postgres", "run_sql_query")]
    assert hits(team_b)[0] == ("ns-b/slack", "send_message")
    assert {server for server, _ in hits(team_b)} == {"ns-b/slack"}
    assert hits(nothing) == [] and "hint" in payload(nothing)


# ------------------------------------------------------------------------- search_registry


async def test_search_registry_finds_servers_that_do_not_run(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        notion = payload(await client.call_tool("search_registry", {"query": "create a page in notion"}))
        github = payload(await client.call_tool("search_registry", {"query": "create a github issue", "limit": 50}))
    first = notion["servers"][0]
    assert (first["name"], first["catalog"], first["remote"]) == ("notion", "toolhive", True)
    assert first["url"] == "https://mcp.notion.com/mcp"
    assert "create_page" in first["matching_tools"]
    # github runs (its workload is linked to the entry), so installing it is no answer.
    assert "github" not in {server["name"] for server in github["servers"]}


# ------------------------------------------------------------------------------ list_tools


async def test_list_tools_of_all_running_servers_and_of_one(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        everything = payload(await client.call_tool("list_tools", {}))
        github = payload(await client.call_tool("list_tools", {"server_name": "ns-a/github"}))
        stopped = error_text(await client.call_tool("list_tools", {"server_name": "ns-a/jira"}))
        unknown = error_text(await client.call_tool("list_tools", {"server_name": "ns-a/nope"}))
    servers = {entry["server"]: [tool["name"] for tool in entry["tools"]] for entry in everything["servers"]}
    assert servers == {
        "ns-a/github": ["create_issue", "list_pull_requests", "search_code"],
        "ns-a/postgres": ["list_tables", "run_sql_query"],
        "ns-b/slack": ["list_channels", "send_message"],
        "weather": ["get_forecast"],
    }
    assert github["server"] == "ns-a/github"
    assert {tool["name"]: tool["input_schema"] for tool in github["tools"]}["create_issue"] == GITHUB[0]["inputSchema"]
    assert "not running" in stopped and "STOPPED" in stopped and "scaled to zero" in stopped
    assert unknown.startswith("Unknown server 'ns-a/nope'")


# ------------------------------------------------------------------------------- call_tool


async def test_call_tool_forwards_to_the_real_server(endpoint: McpEndpoint, farm: McpTestServerFarm) -> None:
    farm.registry("github").clear_calls()
    arguments = {"repo": "acme/widgets", "title": "It broke"}
    async with connect(endpoint.url) as client:
        result = await client.call_tool(
            "call_tool", {"server_name": "ns-a/github", "tool_name": "create_issue", "parameters": arguments}
        )
        pinned = await client.call_tool("ns-a_github__create_issue", {"repo": "acme/x", "title": "pinned"})
    assert payload(result) == {"tool": "create_issue", "arguments": arguments}
    assert payload(pinned) == {"tool": "create_issue", "arguments": {"repo": "acme/x", "title": "pinned"}}
    assert farm.registry("github").calls == [
        ("create_issue", arguments),
        ("create_issue", {"repo": "acme/x", "title": "pinned"}),
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"server_name": "ns-a/nope", "tool_name": "x"}, "Unknown server 'ns-a/nope'"),
        ({"server_name": "ns-a/jira", "tool_name": "create_ticket"}, "is not running (status STOPPED"),
        ({"server_name": "ns-b/imaging", "tool_name": "resize_image"}, "is not running (status ERROR"),
        (
            {"server_name": "ns-a/github", "tool_name": "delete_repo"},
            "has no tool 'delete_repo'. Its tools: create_issue, list_pull_requests, search_code.",
        ),
    ],
)
async def test_call_tool_refuses_with_clear_messages(
    endpoint: McpEndpoint, farm: McpTestServerFarm, arguments: dict[str, str], expected: str
) -> None:
    for name in ("jira", "imaging", "github"):
        farm.registry(name).clear_calls()
    async with connect(endpoint.url) as client:
        message = error_text(await client.call_tool("call_tool", arguments))
    assert expected in message
    assert all(farm.registry(name).calls == [] for name in ("jira", "imaging", "github"))


async def test_workload_stopped_between_find_tool_and_call_tool(endpoint: McpEndpoint, world: Indexer) -> None:
    query = {"tool_description": "list the tables of the postgres database"}
    call = {"server_name": "ns-a/postgres", "tool_name": "list_tables"}
    async with connect(endpoint.url) as client:
        assert ("ns-a/postgres", "list_tables") in hits(await client.call_tool("find_tool", query))
        await world.set_workload_status("ns-a/postgres", WorkloadStatus.STOPPED, "pod deleted")
        assert "is not running (status STOPPED: pod deleted)" in error_text(await client.call_tool("call_tool", call))
        # Same session, next answers: gone from search and listing ...
        assert all(server != "ns-a/postgres" for server, _ in hits(await client.call_tool("find_tool", query)))
        listed = payload(await client.call_tool("list_tools", {}))
        assert "ns-a/postgres" not in {entry["server"] for entry in listed["servers"]}
        # ... and back as soon as it recovers.
        await world.set_workload_status("ns-a/postgres", WorkloadStatus.RUNNING)
        assert ("ns-a/postgres", "list_tables") in hits(await client.call_tool("find_tool", query))
        assert payload(await client.call_tool("call_tool", call)) == {"tool": "list_tables", "arguments": {}}


async def test_pins_follow_their_workload(endpoint: McpEndpoint, world: Indexer) -> None:
    async with connect(endpoint.url) as client:
        await world.set_workload_status("ns-a/github", WorkloadStatus.STOPPED)
        names = {tool.name for tool in (await client.list_tools()).tools}
        refused = error_text(await client.call_tool("ns-a_github__create_issue", {"repo": "r", "title": "t"}))
        await world.set_workload_status("ns-a/jira", WorkloadStatus.RUNNING)
        names_after = {tool.name for tool in (await client.list_tools()).tools}
    assert "ns-a_github__create_issue" not in names
    assert "is not running" in refused
    assert "ns-a_jira__create_ticket" in names_after


async def test_backend_failures_become_error_results(world: Indexer, settings: Settings) -> None:
    with HangingServer() as hanging:
        for name, endpoint_url in (("hanging", hanging.url), ("refusing", refused_url())):
            await world.apply_workload(
                WorkloadSpec(
                    f"ns-a/{name}",
                    name,
                    package=f"ghcr.io/example/{name}:1",
                    endpoint=endpoint_url,
                    status=WorkloadStatus.RUNNING,
                    group="team-a",
                    namespace="ns-a",
                    tools=[GITHUB[0]],
                )
            )
        async with (
            running_endpoint(world, endpoint_settings(settings, call_timeout=1.0)) as ep,
            connect(ep.url) as client,
        ):
            started = time.perf_counter()
            timed_out = error_text(
                await client.call_tool("call_tool", {"server_name": "ns-a/hanging", "tool_name": "create_issue"})
            )
            elapsed = time.perf_counter() - started
            refused = error_text(
                await client.call_tool("call_tool", {"server_name": "ns-a/refusing", "tool_name": "create_issue"})
            )
    assert "Calling 'create_issue' on server 'ns-a/hanging' failed (timeout)" in timed_out
    assert elapsed < 5
    assert "failed (connect)" in refused and "refused" in refused


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("find_tool", {}, "'tool_description' is required"),
        ("find_tool", {"tool_description": "   "}, "'tool_description' must not be empty"),
        ("find_tool", {"tool_description": "x" * 2001}, "'tool_description' is too long (at most 2000"),
        ("find_tool", {"tool_description": "x", "limit": 0}, "'limit' must be between 1 and 50"),
        ("find_tool", {"tool_description": "x", "limit": 51}, "'limit' must be between 1 and 50"),
        ("find_tool", {"tool_description": "x", "limit": "five"}, "'limit' must be an integer"),
        ("find_tool", {"tool_description": "x", "limit": True}, "'limit' must be an integer"),
        ("find_tool", {"tool_description": 42}, "'tool_description' must be a string"),
        ("find_tool", {"tool_description": "x", "tool_keywords": [1]}, "'tool_keywords' must be a string or a list"),
        ("find_tool", {"tool_description": "x", "tool_keywords": ["k"] * 21}, "'tool_keywords' has too many items"),
        ("find_tool", {"tool_description": "x", "group": ""}, "'group' must not be empty"),
        ("find_tool", {"tool_description": "x", "colour": "red"}, "'colour' is not a parameter of find_tool"),
        ("search_registry", {"query": ""}, "'query' must not be empty"),
        ("search_registry", {"query": "x", "limit": -1}, "'limit' must be between 1 and 50"),
        ("list_tools", {"server_name": ""}, "'server_name' must not be empty"),
        ("list_tools", {"server_name": ["a"]}, "'server_name' must be a string"),
        ("call_tool", {"tool_name": "x"}, "'server_name' is required"),
        ("call_tool", {"server_name": "ns-a/github", "tool_name": ""}, "'tool_name' must not be empty"),
        (
            "call_tool",
            {"server_name": "ns-a/github", "tool_name": "create_issue", "parameters": "title=x"},
            "'parameters' must be an object",
        ),
    ],
)
async def test_bad_arguments_are_clear_error_results(
    endpoint: McpEndpoint, tool: str, arguments: dict[str, object], expected: str
) -> None:
    async with connect(endpoint.url) as client:
        message = error_text(await client.call_tool(tool, arguments))
        # The session is still fine afterwards.
        assert {t.name for t in (await client.list_tools()).tools} >= META
    assert message.startswith(f"Invalid arguments for {tool}: ")
    assert expected in message


async def test_unknown_tool_is_an_mcp_error(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url) as client:
        with pytest.raises(MCPError, match="Unknown tool: no_such_tool"):
            await client.call_tool("no_such_tool", {})


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_clients(endpoint: McpEndpoint, farm: McpTestServerFarm) -> None:
    farm.registry("postgres").clear_calls()

    async def session(i: int, mode: str) -> None:
        async with connect(endpoint.url, mode=mode) as client:
            for round_ in range(3):
                found = hits(await client.call_tool("find_tool", {"tool_description": "run an SQL query on postgres"}))
                assert found[0] == ("ns-a/postgres", "run_sql_query")
                sql = f"select {i}, {round_}"
                result = await client.call_tool(
                    "call_tool",
                    {"server_name": "ns-a/postgres", "tool_name": "run_sql_query", "parameters": {"sql": sql}},
                )
                assert payload(result) == {"tool": "run_sql_query", "arguments": {"sql": sql}}
                assert len(payload(await client.call_tool("list_tools", {}))["servers"]) == 4

    started = time.perf_counter()
    await asyncio.gather(*(session(i, "legacy" if i % 2 else "auto") for i in range(8)))
    elapsed = time.perf_counter() - started
    assert sorted(args["sql"] for _, args in farm.registry("postgres").calls) == sorted(
        f"select {i}, {r}" for i in range(8) for r in range(3)
    )
    assert elapsed < 30


# --------------------------------------------------------------------------- transports


async def test_sse_transport(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.sse_url, transport="sse") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        found = hits(await client.call_tool("find_tool", {"tool_description": "weather forecast for a city"}))
        result = await client.call_tool(
            "call_tool", {"server_name": "weather", "tool_name": "get_forecast", "parameters": {"city": "Oslo"}}
        )
    assert names >= META
    assert found[0] == ("weather", "get_forecast")
    assert payload(result) == {"tool": "get_forecast", "arguments": {"city": "Oslo"}}


async def test_legacy_handshake_over_streamable_http(endpoint: McpEndpoint) -> None:
    async with connect(endpoint.url, mode="legacy") as client:
        assert client.server_info is not None and client.server_info.name == "mcp-optimizer"
        assert "find_tool" in (client.instructions or "")
        assert hits(await client.call_tool("find_tool", {"tool_description": "weather forecast"}))[0][0] == "weather"
