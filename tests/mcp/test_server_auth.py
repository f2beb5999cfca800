"""Scoped access: a token bound to team A never learns of, or reaches, team B's servers."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from mcp_optimizer.config import Settings
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.testing.mcp_servers import McpTestServerFarm
from tests.mcp.server_env import (
    HEADERS,
    INIT,
    LISTING,
    TEAM_B_SECRETS,
    TOKEN_A,
    TOKEN_ADMIN,
    TOKEN_B,
    connect,
    endpoint_settings,
    error_text,
    farm,
    hits,
    payload,
    populate,
    running_endpoint,
    text,
    token_table,
)

__all__ = ["farm"]

PINS = ("ns-a/github/create_issue", "ns-b/slack/send_message")
TRANSPORTS = [("streamable-http", "auto"), ("streamable-http", "legacy"), ("sse", "legacy")]


@pytest.fixture
async def world(indexer: Indexer, farm: McpTestServerFarm) -> Indexer:
    await populate(indexer, farm)
    return indexer


@pytest.fixture
async def endpoint(world: Indexer, settings: Settings) -> AsyncIterator[McpEndpoint]:
    async with running_endpoint(world, endpoint_settings(settings, pinned_tools=PINS), tokens=token_table()) as ep:
        yield ep


@dataclass
class Transcript:
    """Everything a client was told, to check that nothing out of scope was among it."""

    texts: list[str] = field(default_factory=list)

    def add(self, value: object) -> None:
        if isinstance(value, types.CallToolResult):
            self.texts.append(text(value))
        elif isinstance(value, types.ListToolsResult):
            self.texts.append(value.model_dump_json())
        else:
            self.texts.append(str(value))

    def leaks(self, secrets: tuple[str, ...]) -> list[str]:
        return [secret for secret in secrets if any(secret in t for t in self.texts)]


def _url(endpoint: McpEndpoint, transport: str) -> str:
    return endpoint.sse_url if transport == "sse" else endpoint.url


async def _team_a_session(client: Client, transcript: Transcript) -> None:
    """Every way team A could try to see or touch team B's servers; asserts each is refused."""

    async def call(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        result = await client.call_tool(name, arguments)
        transcript.add(result)
        return result

    listed = await client.list_tools()
    transcript.add(listed)
    assert {tool.name for tool in listed.tools} == {
        "find_tool",
        "search_registry",
        "list_tools",
        "call_tool",
        "ns-a_github__create_issue",
    }

    slack_query = {"tool_description": "send a chat message to a slack channel", "limit": 50}
    assert {server for server, _ in hits(await call("find_tool", slack_query))} <= {"ns-a/github", "ns-a/postgres"}
    own_query = {"tool_description": "create an issue in a github repository"}
    assert hits(await call("find_tool", own_query))[0] == ("ns-a/github", "create_issue")
    # A group outside the scope reads like one that does not exist; the hint names only the
    # caller's own groups. (It echoes the name sent, so it is compared, not transcribed.)
    group_hints = []
    for group in ("team-b", "no-such-group"):
        result = await client.call_tool("find_tool", {**slack_query, "group": group})
        assert hits(result) == []
        group_hints.append(payload(result)["hint"].replace(group, "<group>"))
    assert group_hints[0] == group_hints[1]
    assert group_hints[0].startswith("No running server you can use is in group '<group>'")
    assert "Groups with running servers you can use: 'team-a'." in group_hints[0]
    estimate = payload(await call("find_tool", slack_query))["token_estimate"]

    everything = payload(await call("list_tools", {}))
    assert {entry["server"] for entry in everything["servers"]} == {"ns-a/github", "ns-a/postgres"}

    # Out of scope reads exactly like "does not exist". (These answers echo the name the client
    # sent, so they are compared with each other instead of going into the transcript.)
    for tool, arguments in (
        ("list_tools", {}),
        ("call_tool", {"tool_name": "send_message", "parameters": {"text": "hi"}}),
        ("call_tool", {"tool_name": "resize_image"}),
    ):
        answers = []
        for server in ("ns-b/slack", "ns-b/imaging", "ns-b/nothing-here"):
            result = await client.call_tool(tool, {**arguments, "server_name": server})
            answers.append(error_text(result).replace(server, "<server>"))
        assert len(set(answers)) == 1, answers
        assert answers[0].startswith("Unknown server '<server>'")

    # A pinned tool out of scope is an unknown tool, word for word.
    messages = []
    for name in ("ns-b_slack__send_message", "ns-b_slack__no_such_pin"):
        with pytest.raises(MCPError) as raised:
            await client.call_tool(name, {"channel": "c", "text": "hi"})
        messages.append(str(raised.value).replace(name, "<name>"))
    assert messages[0] == messages[1] == "Unknown tool: <name>"

    # Slack runs, but not for team A: for team A it is a server worth installing.
    registry = payload(await call("search_registry", {"query": "send slack messages", "limit": 50}))
    assert "slack" in {server["name"] for server in registry["servers"]}

    # The token estimate counts team A's tools only (2 servers, 5 tools).
    own = payload(await call("list_tools", {"server_name": "ns-a/github"}))["tools"]
    assert len(own) == 3
    assert estimate["all_running_tools_tokens"] < 400


@pytest.mark.parametrize(("transport", "mode"), TRANSPORTS)
async def test_team_a_never_sees_team_b(
    endpoint: McpEndpoint, farm: McpTestServerFarm, transport: str, mode: str
) -> None:
    farm.registry("slack").clear_calls()
    farm.registry("imaging").clear_calls()
    transcript = Transcript()
    async with connect(_url(endpoint, transport), token=TOKEN_A, transport=transport, mode=mode) as client:
        await _team_a_session(client, transcript)
    assert transcript.leaks(TEAM_B_SECRETS) == []
    # Nothing was forwarded to team B's backends.
    assert farm.registry("slack").calls == [] and farm.registry("imaging").calls == []


@pytest.mark.parametrize(("transport", "mode"), TRANSPORTS)
async def test_team_b_and_admin_scopes(endpoint: McpEndpoint, transport: str, mode: str) -> None:
    url = _url(endpoint, transport)
    async with connect(url, token=TOKEN_B, transport=transport, mode=mode) as team_b:
        found = hits(await team_b.call_tool("find_tool", {"tool_description": "send a chat message", "limit": 50}))
        listed = payload(await team_b.call_tool("list_tools", {}))
        registry = payload(await team_b.call_tool("search_registry", {"query": "send slack messages", "limit": 50}))
        pinned = await team_b.call_tool("ns-b_slack__send_message", {"channel": "general", "text": "hi"})
        names = {tool.name for tool in (await team_b.list_tools()).tools}
    assert found[0] == ("ns-b/slack", "send_message")
    assert {server for server, _ in found} == {"ns-b/slack"}
    assert {entry["server"] for entry in listed["servers"]} == {"ns-b/slack"}
    # Slack runs in team B's scope, so the registry does not suggest installing it.
    assert "slack" not in {server["name"] for server in registry["servers"]}
    assert payload(pinned)["arguments"] == {"channel": "general", "text": "hi"}
    assert "ns-b_slack__send_message" in names and "ns-a_github__create_issue" not in names

    async with connect(url, token=TOKEN_ADMIN, transport=transport, mode=mode) as admin:
        listed = payload(await admin.call_tool("list_tools", {}))
    assert {entry["server"] for entry in listed["servers"]} == {"ns-a/github", "ns-a/postgres", "ns-b/slack", "weather"}


async def test_interleaved_tokens_keep_their_own_scope(endpoint: McpEndpoint) -> None:
    """Scopes travel with each message, not with whoever opened the connection or the server loop."""
    query = {"tool_description": "send a chat message to a slack channel", "limit": 50}

    async def session(token: str, transport: str, mode: str) -> set[str]:
        seen: set[str] = set()
        async with connect(_url(endpoint, transport), token=token, transport=transport, mode=mode) as client:
            for _ in range(4):
                seen |= {server for server, _ in hits(await client.call_tool("find_tool", query))}
                seen |= {e["server"] for e in payload(await client.call_tool("list_tools", {}))["servers"]}
                await asyncio.sleep(0)
        return seen

    runs = [(token, transport, mode) for token in (TOKEN_A, TOKEN_B) for transport, mode in TRANSPORTS]
    results = await asyncio.gather(*(session(*run) for run in runs))
    for (token, _, _), seen in zip(runs, results, strict=True):
        prefix = "ns-a/" if token == TOKEN_A else "ns-b/"
        assert seen and all(server.startswith(prefix) for server in seen), (token, seen)


async def test_missing_or_unknown_token_is_401(endpoint: McpEndpoint) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.post(endpoint.url, json=body, headers=headers)
        wrong = await http.post(endpoint.url, json=body, headers={**headers, "Authorization": "Bearer nope"})
        basic = await http.post(endpoint.url, json=body, headers={**headers, "Authorization": "Basic dTpw"})
        sse = await http.get(endpoint.sse_url, headers={"Authorization": "Bearer nope"})
        health = await http.get(endpoint.base_url + "/healthz")
    for response in (missing, wrong, basic, sse):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "nope" not in response.text
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 401 in transport-specific errors
        async with connect(endpoint.url, token="wrong-token") as client:
            await client.list_tools()


async def test_a_session_cannot_be_used_with_another_token(endpoint: McpEndpoint) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(endpoint.url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {TOKEN_A}"})
        assert opened.status_code == 200
        session = opened.headers["mcp-session-id"]
        session_headers = {**HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
        hijack = await http.post(
            endpoint.url, json=LISTING, headers={**session_headers, "Authorization": f"Bearer {TOKEN_B}"}
        )
    assert hijack.status_code == 404
    assert "slack" not in hijack.text and "github" not in hijack.text


async def test_tokens_from_a_file(world: Indexer, settings: Settings, tmp_path: Path) -> None:
    digest = hashlib.sha256(TOKEN_B.encode()).hexdigest()
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(
        "tokens:\n"
        f"  - {{name: team-a, token: {TOKEN_A}, groups: [team-a], namespaces: [ns-a]}}\n"
        f"  - {{name: team-b, token_sha256: {digest}, groups: [team-b]}}\n"
    )
    configured = endpoint_settings(settings, auth_tokens_file=tokens_file)
    async with running_endpoint(world, configured) as ep:
        async with connect(ep.url, token=TOKEN_A) as client:
            servers_a = {e["server"] for e in payload(await client.call_tool("list_tools", {}))["servers"]}
        async with connect(ep.url, token=TOKEN_B) as client:
            servers_b = {e["server"] for e in payload(await client.call_tool("list_tools", {}))["servers"]}
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.post(ep.url, json={})).status_code == 401
    assert servers_a == {"ns-a/github", "ns-a/postgres"}
    assert servers_b == {"ns-b/slack"}
    assert not re.search(r"ns-a|weather", str(servers_b))
