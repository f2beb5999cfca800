"""A small world for the MCP endpoint tests: real backends, a real index, real MCP clients.

* one :class:`McpTestServerFarm` (session-wide, its own thread) serves every backend a
  workload can be forwarded to;
* :func:`populate` fills a fresh index (real SQLite file, real model) with running, stopped
  and erroring workloads in two teams plus a registry catalog;
* :func:`connect` opens an SDK client over streamable HTTP or SSE, with an optional token.

Imported by the ``test_server*`` modules (fixtures are re-exported there), not a conftest,
so nothing here leaks into the other tests of this package.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from mcp_optimizer.catalog import CatalogEntry, ToolDefinition
from mcp_optimizer.config import Settings
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.mcp.auth import TokenTable, build_token_table
from mcp_optimizer.mcp.scope import AccessScope
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.testing.mcp_servers import LOOPBACK, McpTestServerFarm, make_tool

#: A streamable HTTP POST's headers, an MCP initialize request and a tools/list one (in a session
#: it opened), for the tests that speak HTTP to the endpoint below the SDK: status codes, headers,
#: sessions.
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
LISTING = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}


def _schema(**props: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in props.items()},
        "required": list(props),
    }


GITHUB = [
    make_tool("create_issue", "Create a new issue in a GitHub repository", _schema(repo="string", title="string")),
    make_tool("list_pull_requests", "List the open pull requests of a GitHub repository", _schema(repo="string")),
    make_tool("search_code", "Search source code across GitHub repositories", _schema(query="string")),
]
POSTGRES = [
    make_tool("run_sql_query", "Run a read-only SQL query against the PostgreSQL database", _schema(sql="string")),
    make_tool("list_tables", "List the tables of the PostgreSQL database"),
]
JIRA = [
    make_tool("create_ticket", "Create a ticket in a Jira project", _schema(project="string", summary="string")),
]
SLACK = [
    make_tool("send_message", "Send a chat message to a Slack channel", _schema(channel="string", text="string")),
    make_tool("list_channels", "List the channels of the Slack workspace"),
]
IMAGING = [make_tool("resize_image", "Resize an image to the given width and height", _schema(path="string"))]
WEATHER = [make_tool("get_forecast", "Get the weather forecast for a city", _schema(city="string"))]

BACKENDS = {
    "github": GITHUB,
    "postgres": POSTGRES,
    "jira": JIRA,
    "slack": SLACK,
    "imaging": IMAGING,
    "weather": WEATHER,
}

TOKEN_A = "token-for-team-a-0123456789abcdef"
TOKEN_B = "token-for-team-b-0123456789abcdef"
TOKEN_ADMIN = "token-for-admins-0123456789abcdef"
#: Strings that must never reach a team-a client: team-b's workloads, namespace and tools (the
#: registry catalog is shared knowledge, so its "slack" entry and tool names may appear).
TEAM_B_SECRETS = ("ns-b", "team-b", "imaging", "resize_image", "list_channels")


@pytest.fixture(scope="session")
def farm() -> Iterator[McpTestServerFarm]:
    with McpTestServerFarm(BACKENDS) as backends:
        yield backends


def workload_specs(farm: McpTestServerFarm) -> list[WorkloadSpec]:
    running, stopped, error = WorkloadStatus.RUNNING, WorkloadStatus.STOPPED, WorkloadStatus.ERROR
    return [
        WorkloadSpec(
            "ns-a/github",
            "github",
            package="ghcr.io/github/github-mcp-server:1.0",
            endpoint=farm.url("github"),
            status=running,
            group="team-a",
            namespace="ns-a",
            tools=GITHUB,
        ),
        WorkloadSpec(
            "ns-a/postgres",
            "postgres",
            package="docker.io/mcp/postgres:16",
            endpoint=farm.url("postgres"),
            status=running,
            group="team-a",
            namespace="ns-a",
            tools=POSTGRES,
        ),
        WorkloadSpec(
            "ns-a/jira",
            "jira",
            package="ghcr.io/example/jira-mcp:1",
            endpoint=farm.url("jira"),
            status=stopped,
            status_reason="scaled to zero",
            group="team-a",
            namespace="ns-a",
            tools=JIRA,
        ),
        WorkloadSpec(
            "ns-b/slack",
            "slack",
            package="ghcr.io/example/slack-mcp:2",
            endpoint=farm.url("slack"),
            status=running,
            group="team-b",
            namespace="ns-b",
            tools=SLACK,
        ),
        WorkloadSpec(
            "ns-b/imaging",
            "imaging",
            package="ghcr.io/example/imaging:1",
            endpoint=farm.url("imaging"),
            status=error,
            status_reason="CrashLoopBackOff",
            group="team-b",
            namespace="ns-b",
            tools=IMAGING,
        ),
        # A local-style workload: no namespace, only visible to namespace-unrestricted callers.
        WorkloadSpec(
            "weather",
            "weather",
            url="https://weather.example.com/mcp",
            endpoint=farm.url("weather"),
            status=running,
            tools=WEATHER,
        ),
    ]


def catalog_entries() -> list[CatalogEntry]:
    def tools(*defs: tuple[str, str]) -> list[ToolDefinition]:
        return [ToolDefinition(name=name, description=text) for name, text in defs]

    return [
        CatalogEntry(
            name="github",
            remote=False,
            package="ghcr.io/github/github-mcp-server:1.0",
            description="GitHub: issues, pull requests and code",
            tools=tools(*((t["name"], t["description"]) for t in GITHUB)),
        ),
        CatalogEntry(
            name="slack",
            remote=False,
            package="ghcr.io/example/slack-mcp:2",
            description="Slack messaging: send messages and read channels",
            tools=tools(("send_message", "Send a chat message to a Slack channel")),
        ),
        CatalogEntry(
            name="notion",
            remote=True,
            url="https://mcp.notion.com/mcp",
            description="Notion workspace pages and databases",
            tools=tools(
                ("create_page", "Create a page in a Notion workspace"), ("search_pages", "Search Notion pages")
            ),
        ),
        CatalogEntry(
            name="filesystem",
            remote=False,
            package="docker.io/mcp/filesystem:1",
            description="Read and write files on a local filesystem",
            tools=tools(("read_file", "Read the contents of a file"), ("write_file", "Write text to a file")),
        ),
    ]


async def populate(indexer: Indexer, farm: McpTestServerFarm) -> None:
    await indexer.load_catalog("toolhive", catalog_entries())
    for spec in workload_specs(farm):
        await indexer.apply_workload(spec)


def endpoint_settings(settings: Settings, **overrides: Any) -> Settings:
    # The backends run on loopback, which the endpoint refuses to call unless it is allowed.
    base = replace(settings, mcp_host="127.0.0.1", mcp_port=0, call_timeout=10.0, allowed_destinations=LOOPBACK)
    return replace(base, **overrides)


def token_table() -> TokenTable:
    return build_token_table(
        [
            (_digest(TOKEN_A), AccessScope.of("team-a", ["team-a"], ["ns-a"])),
            (_digest(TOKEN_B), AccessScope.of("team-b", ["team-b"], ["ns-b"])),
            (_digest(TOKEN_ADMIN), AccessScope.of("admin", None, None)),
        ]
    )


def _digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


@asynccontextmanager
async def running_endpoint(indexer: Indexer, settings: Settings, **kwargs: Any) -> AsyncIterator[McpEndpoint]:
    search = ToolSearch(indexer.engine, indexer.embedder, min_similarity=settings.min_similarity)
    async with McpEndpoint(settings, search, **kwargs) as endpoint:
        yield endpoint


@asynccontextmanager
async def connect(
    url: str, *, token: str | None = None, transport: str = "streamable-http", mode: str = "auto"
) -> AsyncIterator[Client]:
    """An SDK client on the endpoint; ``cache=None`` so every answer comes from the server."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if transport == "sse":
        async with Client(sse_client(url, headers=headers), mode="legacy", cache=None) as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client,
    ):
        yield client


def payload(result: types.CallToolResult) -> dict[str, Any]:
    """The JSON a successful meta-tool call returned (text and structured content agree)."""
    assert not result.is_error, text(result)
    data = json.loads(text(result))
    assert result.structured_content == data
    return data  # type: ignore[no-any-return]


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def error_text(result: types.CallToolResult) -> str:
    assert result.is_error, f"expected an error result, got {text(result)}"
    return text(result)


def hits(result: types.CallToolResult) -> list[tuple[str, str]]:
    return [(hit["server"], hit["tool"]) for hit in payload(result)["tools"]]
