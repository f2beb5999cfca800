"""The endpoint's configuration and lifecycle: tokens, scopes, pins, token estimates, start/stop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
from mcp.client.client import Client

from mcp_optimizer.config import Settings, endpoint_host, resolve_auth_mode
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.mcp.auth import AuthConfigError, load_token_table, parse_tokens
from mcp_optimizer.mcp.kube_auth import AccessResource
from mcp_optimizer.mcp.pinned import PinnedToolsError, exposed_name, parse_pins
from mcp_optimizer.mcp.scope import NO_ACCESS, UNRESTRICTED, AccessScope
from mcp_optimizer.mcp.server import EndpointError, McpEndpoint, build_mcp_server, run_endpoint, serve
from mcp_optimizer.mcp.tokens import running_tools_tokens, token_report, tool_tokens
from mcp_optimizer.mcp.tools import OptimizerTools
from mcp_optimizer.testing.mcp_servers import McpTestServerFarm, make_tool
from tests.mcp.server_env import connect, endpoint_settings, farm, hits, payload, populate

__all__ = ["farm"]

SECRET = "s3cret-token-value-0123456789"


# ----------------------------------------------------------------------------- tokens file


def test_tokens_document_forms() -> None:
    digest = hashlib.sha256(b"other-token").hexdigest()
    entries = parse_tokens(
        f"tokens:\n- name: a\n  token: {SECRET}\n  groups: [g1, g2]\n"
        f"- name: b\n  token_sha256: {digest.upper()}\n  namespaces: ['*']\n",
        source="test",
    )
    assert entries == [
        (hashlib.sha256(SECRET.encode()).hexdigest(), AccessScope("a", frozenset({"g1", "g2"}), None)),
        (digest, AccessScope("b", None, None)),
    ]
    # A bare list and JSON work too.
    assert parse_tokens(f'[{{"name": "c", "token": "{SECRET}"}}]', source="test")[0][1] == AccessScope("c")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("tokens: [{name: a}]", "exactly one of 'token' and 'token_sha256'"),
        (f"tokens: [{{name: a, token: {SECRET}, token_sha256: '{'0' * 64}'}}]", "exactly one of"),
        ("tokens: [{name: a, token: 12345678}]", "tokens.0.token: Input should be a valid string (quote the value)"),
        ("tokens: [{name: a, token_sha256: abc}]", "64 hexadecimal characters"),
        (f"tokens: [{{name: a, token: {SECRET}, team: x}}]", "tokens.0.team: Extra inputs are not permitted"),
        (f"tokens: [{{token: {SECRET}}}]", "tokens.0.name: Field required"),
        ("tokens: [", "not valid YAML or JSON"),
        ("42", "invalid tokens document"),
    ],
)
def test_bad_tokens_documents_are_refused_without_echoing_tokens(document: str, expected: str) -> None:
    with pytest.raises(AuthConfigError, match=r"^test: ") as raised:
        parse_tokens(document, source="test")
    assert expected in str(raised.value)
    assert SECRET not in str(raised.value)


def test_token_table_from_settings(tmp_path: Path) -> None:
    assert load_token_table(Settings()) is None
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(f"tokens: [{{name: file, token: {SECRET}, groups: [g]}}]")
    table = load_token_table(Settings(auth_tokens_file=tokens_file, auth_tokens="[{name: env, token: other}]"))
    assert table is not None and len(table) == 2
    assert table.lookup(SECRET) == AccessScope("file", frozenset({"g"}), None)
    assert table.lookup("other") == AccessScope("env")
    assert table.lookup("guess") is None

    with pytest.raises(AuthConfigError, match="cannot read auth tokens file"):
        load_token_table(Settings(auth_tokens_file=tmp_path / "missing.yaml"))
    tokens_file.write_text("tokens: []")
    with pytest.raises(AuthConfigError, match="lists no tokens"):
        load_token_table(Settings(auth_tokens_file=tokens_file))
    with pytest.raises(AuthConfigError, match="are the same token"):
        load_token_table(Settings(auth_tokens=f"[{{name: a, token: {SECRET}}}, {{name: b, token: {SECRET}}}]"))
    with pytest.raises(AuthConfigError, match="two tokens are named 'a'"):
        load_token_table(Settings(auth_tokens="[{name: a, token: one}, {name: a, token: two}]"))


def test_endpoint_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MCP_HOST": "127.0.0.2",
        "MCP_PORT": "9000",
        "MCP_PATH": "/x/mcp",
        "CALL_TIMEOUT": "5",
        "AUTH_TOKENS": "[{name: a, token: b}]",
        "PINNED_TOOLS": "ns/github/create_issue, weather/get_forecast",
        "FIND_TOOL_DESCRIPTION": "Find.",
        "CALL_TOOL_DESCRIPTION": "Call.",
    }.items():
        monkeypatch.setenv(f"MCP_OPTIMIZER_{name}", value)
    settings = Settings.from_env()
    assert (settings.mcp_host, settings.mcp_port, settings.mcp_path, settings.call_timeout) == (
        "127.0.0.2",
        9000,
        "/x/mcp",
        5.0,
    )
    assert settings.pinned_tools == ("ns/github/create_issue", "weather/get_forecast")
    assert (settings.find_tool_description, settings.call_tool_description) == ("Find.", "Call.")
    assert "token: b" not in repr(settings)


# --------------------------------------------------------------------------- scopes, pins


def test_scopes() -> None:
    team = AccessScope.of("team", ["a"], ["ns-a"])
    assert team.allows("a", "ns-a")
    assert not team.allows("b", "ns-a") and not team.allows("a", "ns-b")
    assert not team.allows("a", None)  # unnamespaced servers need an unrestricted namespace axis
    assert AccessScope.of("groups-only", ["a"], None).allows("a", None)
    assert AccessScope.of("star", ["*"], ["*"]) == AccessScope("star")
    assert team.groups_for(None) == ["a"] and team.groups_for("a") == ["a"] and team.groups_for("b") == []
    assert UNRESTRICTED.groups_for("b") == ["b"] and UNRESTRICTED.groups_for(None) is None
    assert NO_ACCESS.is_empty and not NO_ACCESS.allows("a", "ns-a")


def test_pinned_tool_names() -> None:
    assert exposed_name("ns-a/github", "create_issue") == "ns-a_github__create_issue"
    assert exposed_name("weather", "get.forecast") == "weather__get.forecast"
    assert exposed_name("ns/my server!", "do it") == "ns_my_server__do_it"
    long_a, long_b = exposed_name("n" * 200, "a"), exposed_name("n" * 200, "b")
    assert len(long_a) == len(long_b) == 128 and long_a != long_b

    pins = parse_pins(["ns-a/github/create_issue", " weather/get_forecast ", "ns-a/github/create_issue"])
    assert [(p.exposed_name, p.server, p.tool) for p in pins.values()] == [
        ("ns-a_github__create_issue", "ns-a/github", "create_issue"),
        ("weather__get_forecast", "weather", "get_forecast"),
    ]
    with pytest.raises(PinnedToolsError, match="<workload name>/<tool>"):
        parse_pins(["create_issue"])
    with pytest.raises(PinnedToolsError, match="already taken"):
        parse_pins(["a b/c", "a_b/c"])


def test_token_estimate() -> None:
    # {"name":"t","description":"d","inputSchema":{}} is 45 characters.
    assert tool_tokens("t", "d", {}) == 12
    report = token_report([10, 20], [10, 20, 70])
    assert report["returned_tools_tokens"] == 30 and report["all_running_tools_tokens"] == 100
    assert report["saved_tokens"] == 70 and report["saved_percent"] == 70.0
    assert token_report([], [])["saved_percent"] == 0.0


# ----------------------------------------------------------------------- fail closed


@pytest.fixture
async def world(indexer: Indexer, farm: McpTestServerFarm) -> Indexer:
    await populate(indexer, farm)
    return indexer


async def test_a_message_without_a_scope_sees_nothing(world: Indexer, settings: Settings) -> None:
    """Reached without the auth middleware (here: in-process), the tools fail closed."""
    tools = OptimizerTools(ToolSearch(world.engine, world.embedder), replace_pins(settings))
    async with Client(build_mcp_server(tools), cache=None) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        found = await client.call_tool("find_tool", {"tool_description": "create a github issue"})
        listed = await client.call_tool("list_tools", {})
        called = await client.call_tool("call_tool", {"server_name": "ns-a/github", "tool_name": "create_issue"})
    assert names == {"find_tool", "search_registry", "list_tools", "call_tool"}
    assert hits(found) == [] and payload(found)["token_estimate"]["all_running_tools_tokens"] == 0
    assert payload(listed)["servers"] == []
    assert called.is_error


def replace_pins(settings: Settings) -> Settings:
    return endpoint_settings(settings, pinned_tools=("ns-a/github/create_issue",))


# ---------------------------------------------------------------------------- lifecycle


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_serve_until_stopped_then_release_the_port(world: Indexer, settings: Settings) -> None:
    stop = asyncio.Event()
    started: asyncio.Future[McpEndpoint] = asyncio.get_running_loop().create_future()
    search = ToolSearch(world.engine, world.embedder)
    task = asyncio.create_task(serve(endpoint_settings(settings), search, ready=started.set_result, stop=stop))
    endpoint = await asyncio.wait_for(started, 10)
    async with connect(endpoint.url) as client:
        assert hits(await client.call_tool("find_tool", {"tool_description": "weather forecast"}))
    stop.set()
    await asyncio.wait_for(task, 10)
    assert _port_is_free(endpoint.port)


async def test_cancelling_serve_shuts_down_cleanly(world: Indexer, settings: Settings) -> None:
    started: asyncio.Future[McpEndpoint] = asyncio.get_running_loop().create_future()
    search = ToolSearch(world.engine, world.embedder)
    task = asyncio.create_task(serve(endpoint_settings(settings), search, ready=started.set_result))
    endpoint = await asyncio.wait_for(started, 10)
    async with httpx2.AsyncClient() as http:
        assert (await http.get(endpoint.base_url + "/healthz")).status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert _port_is_free(endpoint.port)


async def test_address_in_use_is_an_endpoint_error(world: Indexer, settings: Settings) -> None:
    search = ToolSearch(world.engine, world.embedder)
    async with McpEndpoint(endpoint_settings(settings), search) as first:
        taken = endpoint_settings(settings, mcp_port=first.port)
        with pytest.raises(EndpointError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await McpEndpoint(taken, search).start()


async def test_run_endpoint_needs_an_index(tmp_path: Path) -> None:
    with pytest.raises(EndpointError, match="no index at"):
        await run_endpoint(Settings(db_path=tmp_path / "none.db"))


@pytest.mark.parametrize("mode", ["hybrid", "bm25"])
async def test_run_endpoint_serves_an_index_file_until_sigterm(
    world: Indexer, settings: Settings, tmp_path: Path, mode: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configured = endpoint_settings(settings, mcp_port=port)
    if mode == "bm25":  # keyword-only: no model is loaded (its path points nowhere)
        configured = replace(configured, search_mode="bm25", embedding_model_path=tmp_path / "no-model")
    task = asyncio.create_task(run_endpoint(configured))
    url = f"http://127.0.0.1:{port}"
    async with httpx2.AsyncClient() as http:
        for _ in range(500):
            if task.done():
                await task
            try:
                if (await http.get(url + "/healthz")).status_code == 200:
                    break
            except httpx2.TransportError:
                await asyncio.sleep(0.02)
    async with connect(url + "/mcp") as client:
        assert hits(await client.call_tool("find_tool", {"tool_description": "create a github issue"}))[0] == (
            "ns-a/github",
            "create_issue",
        )
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 15)
    assert _port_is_free(port)


async def test_sql_token_total_matches_the_per_tool_estimate(world: Indexer) -> None:
    odd = make_tool("déjà_vu", 'Täglich "quoted"\nnew line \u2603 / slash', {"type": "object", "properties": {"x": {}}})
    await world.apply_workload(
        WorkloadSpec(
            "ns-a/odd",
            "odd",
            package="ghcr.io/example/odd:1",
            endpoint="http://127.0.0.1:1/mcp",
            status=WorkloadStatus.RUNNING,
            group="team-a",
            namespace="ns-a",
            tools=[odd],
        )
    )
    search = ToolSearch(world.engine, world.embedder)
    for scope in (
        UNRESTRICTED,
        AccessScope.of("a", ["team-a"], ["ns-a"]),
        AccessScope.of("b", None, ["ns-b"]),
        NO_ACCESS,
    ):
        tools = [
            hit
            for hit in await search.running_tools(groups=scope.groups_for(None), namespaces=scope.namespace_filter())
            if scope.allows(hit.group, hit.namespace)
        ]
        expected = sum(tool_tokens(hit.tool, hit.description, hit.input_schema) for hit in tools)
        assert await running_tools_tokens(world.engine, scope) == expected, scope.name
    assert await running_tools_tokens(world.engine, NO_ACCESS) == 0


# ------------------------------------------------------------------- auth modes, listen address


@pytest.mark.parametrize(
    ("changes", "cluster", "mode", "host"),
    [
        ({}, False, "none", "127.0.0.1"),  # `serve` on a laptop: open, but loopback only
        ({}, True, "kubernetes", "0.0.0.0"),  # `run` in a cluster: secure by default
        ({"auth_tokens": "[{name: a, token: b}]"}, True, "tokens", "0.0.0.0"),  # today's tokens keep working
        ({"auth_tokens": "[{name: a, token: b}]"}, False, "tokens", "0.0.0.0"),
        ({"auth_mode": "none"}, True, "none", "127.0.0.1"),  # no auth must be chosen, then loopback
        ({"auth_mode": "none", "mcp_host": "0.0.0.0"}, True, "none", "0.0.0.0"),  # ... unless told otherwise
        ({"auth_mode": "kubernetes", "mcp_host": "10.0.0.5"}, False, "kubernetes", "10.0.0.5"),
    ],
)
def test_auth_mode_and_listen_address(changes: dict[str, str], cluster: bool, mode: str, host: str) -> None:
    settings = Settings(**changes)  # type: ignore[arg-type]
    assert resolve_auth_mode(settings, cluster=cluster) == mode
    assert endpoint_host(settings, mode) == host


def test_access_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AUTH_MODE": "Kubernetes",
        "AUTH_AUDIENCES": "mcp-optimizer, other",
        "AUTH_ACCESS_RESOURCE": "mcpservers.toolhive.stacklok.dev",
        "AUTH_CACHE_TTL": "5",
        "AUTH_CACHE_SIZE": "10",
        "AUTH_REVIEW_TIMEOUT": "2",
        "OPERATOR_NAMESPACE": "ops",
        "CATALOG_NAMESPACES": "platform, ops ,shared",
    }.items():
        monkeypatch.setenv(f"MCP_OPTIMIZER_{name}", value)
    settings = Settings.from_env()
    assert settings.auth_mode == "kubernetes" and settings.mcp_host is None
    assert settings.auth_audiences == ("mcp-optimizer", "other")
    assert (settings.auth_cache_ttl, settings.auth_cache_size, settings.auth_review_timeout) == (5.0, 10, 2.0)
    assert settings.auth_access_resource == "mcpservers.toolhive.stacklok.dev"
    assert settings.trusted_catalog_namespaces == ("ops", "platform", "shared")
    # Set but empty: the API server's own audiences (any ServiceAccount token).
    monkeypatch.setenv("MCP_OPTIMIZER_AUTH_AUDIENCES", "")
    assert Settings.from_env().auth_audiences == ()
    monkeypatch.delenv("MCP_OPTIMIZER_AUTH_AUDIENCES")
    assert Settings.from_env().auth_audiences == ("mcp-optimizer",)
    monkeypatch.setenv("MCP_OPTIMIZER_AUTH_MODE", "open")
    with pytest.raises(ValueError, match="MCP_OPTIMIZER_AUTH_MODE must be one of kubernetes, tokens, none, got 'open'"):
        Settings.from_env()


def test_access_resource_parsing() -> None:
    assert AccessResource.parse("mcpservers.mcp-optimizer.dev") == AccessResource("mcpservers", "mcp-optimizer.dev")
    assert AccessResource.parse("mcpservers.toolhive.stacklok.dev").group == "toolhive.stacklok.dev"
    assert AccessResource.parse("pods") == AccessResource("pods", "")
    with pytest.raises(ValueError, match=r"resource\.group"):
        AccessResource.parse(".dev")


async def test_a_mode_that_cannot_work_refuses_to_start(world: Indexer, settings: Settings) -> None:
    search = ToolSearch(world.engine, world.embedder)
    with pytest.raises(AuthConfigError, match="auth mode 'kubernetes' needs a cluster"):
        McpEndpoint(endpoint_settings(settings, auth_mode="kubernetes"), search)
    with pytest.raises(AuthConfigError, match="auth mode 'tokens' needs MCP_OPTIMIZER_AUTH_TOKENS_FILE"):
        McpEndpoint(endpoint_settings(settings, auth_mode="tokens"), search)


async def test_serve_without_a_cluster_is_open_on_loopback_only(
    world: Indexer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    search = ToolSearch(world.engine, world.embedder)
    local = endpoint_settings(settings, mcp_host=None)
    async with McpEndpoint(local, search) as endpoint:
        assert endpoint.authenticator.mode == "none" and endpoint.host == "127.0.0.1"
        assert endpoint.url.startswith("http://127.0.0.1:")
        async with connect(endpoint.url) as client:  # no token needed
            assert payload(await client.call_tool("list_tools", {}))["servers"]
    # Told to listen everywhere without auth: it does, and says so in the log.
    with caplog.at_level("WARNING", logger="mcp_optimizer.mcp.server"):
        async with McpEndpoint(endpoint_settings(settings, mcp_host="0.0.0.0"), search) as endpoint:
            assert endpoint.host == "0.0.0.0"
    assert any("without auth listens on 0.0.0.0" in r.getMessage() for r in caplog.records)
