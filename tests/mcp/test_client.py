"""The operator's MCP client against real SDK servers on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from mcp_optimizer.mcp import client as client_module
from mcp_optimizer.mcp.client import McpClientError, wire_transport
from mcp_optimizer.testing.mcp_servers import (
    LOOPBACK_POLICY,
    AsgiTestServer,
    HangingServer,
    McpTestServer,
    McpTestServerFarm,
    build_mcp_app,
    closed_port,
    make_tool,
    refused_url,
)
from mcp_optimizer.testing.stdio_bridge import StdioBridge


def list_tools(*args: Any, **kwargs: Any) -> Any:
    return client_module.list_tools(*args, policy=LOOPBACK_POLICY, **kwargs)


def call_tool(*args: Any, **kwargs: Any) -> Any:
    return client_module.call_tool(*args, policy=LOOPBACK_POLICY, **kwargs)


TRANSPORTS = ["streamable-http", "sse"]
MODES = ["auto", "legacy"]

SEARCH = make_tool(
    "search",
    "Search the catalogue",
    {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"],
    },
    title="Search",
    annotations={"readOnlyHint": True, "title": "Search things"},
)
FETCH = make_tool("fetch", "Fetch a URL", {"type": "object", "properties": {"url": {"type": "string"}}})
NO_DESCRIPTION = {"name": "bare", "inputSchema": {"type": "object"}}


def endpoint(server: McpTestServer, transport: str) -> str:
    return server.url if transport == "streamable-http" else server.sse_url


@pytest.fixture(scope="module")
def server() -> Iterator[McpTestServer]:
    with McpTestServer([SEARCH, FETCH, NO_DESCRIPTION], name="fixed") as srv:
        yield srv


@pytest.fixture
def mutable_server() -> Iterator[McpTestServer]:
    with McpTestServer([FETCH], name="mutable") as srv:
        yield srv


async def assert_fails_fast(coro: Any, *, reason: str, contains: str, within: float = 5.0) -> McpClientError:
    """Await ``coro`` expecting McpClientError with ``reason`` and ``contains`` in a one-line message."""
    started = time.monotonic()
    with pytest.raises(McpClientError) as info:
        await coro
    elapsed = time.monotonic() - started
    error = info.value
    assert elapsed < within, f"took {elapsed:.2f}s: {error}"
    assert error.reason == reason, str(error)
    assert contains in str(error)
    assert "\n" not in str(error)
    return error


# --- listing ---------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_tools(server: McpTestServer, transport: str, mode: Any) -> None:
    tools = await list_tools(endpoint(server, transport), transport, timeout=5.0, mode=mode)

    assert [t["name"] for t in tools] == ["search", "fetch", "bare"]
    search = tools[0]
    assert search["description"] == "Search the catalogue"
    assert search["inputSchema"] == SEARCH["inputSchema"]
    assert search["title"] == "Search"
    assert search["annotations"] == {"readOnlyHint": True, "title": "Search things"}
    assert set(tools[1]) == {"name", "description", "inputSchema"}
    assert tools[2]["description"] == ""
    # Must survive a JSON round trip unchanged (it is stored and served again).
    assert json.loads(json.dumps(tools)) == tools


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_tools_follows_pagination(transport: str) -> None:
    tools = [make_tool(f"tool_{i:02d}", f"Tool number {i}") for i in range(7)]
    with McpTestServer(tools, page_size=3) as srv:
        listed = await list_tools(endpoint(srv, transport), transport, timeout=5.0)
    assert [t["name"] for t in listed] == [f"tool_{i:02d}" for i in range(7)]


@pytest.mark.asyncio
async def test_list_tools_empty_server() -> None:
    with McpTestServer([]) as srv:
        assert await list_tools(srv.url) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_relist_sees_tool_changes(mutable_server: McpTestServer, transport: str) -> None:
    url = endpoint(mutable_server, transport)
    assert [t["name"] for t in await list_tools(url, transport)] == ["fetch"]

    mutable_server.set_tools([FETCH, SEARCH])
    assert [t["name"] for t in await list_tools(url, transport)] == ["fetch", "search"]

    mutable_server.registry.remove_tool("fetch")
    changed = make_tool("search", "A better search", {"type": "object"})
    mutable_server.registry.add_tool(changed)
    listed = await list_tools(url, transport)
    assert [(t["name"], t["description"]) for t in listed] == [("search", "A better search")]

    mutable_server.set_tools([])
    assert await list_tools(url, transport) == []


# --- calling ---------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_tool_echoes_arguments(mutable_server: McpTestServer, transport: str, mode: Any) -> None:
    mutable_server.set_tools([SEARCH])
    arguments = {"query": "kubernetes operators", "limit": 3}

    result = await call_tool(endpoint(mutable_server, transport), transport, "search", arguments, 5.0, mode=mode)

    assert result["isError"] is False
    [block] = result["content"]
    assert block["type"] == "text"
    assert json.loads(block["text"]) == {"tool": "search", "arguments": arguments}
    assert result["structuredContent"] == {"tool": "search", "arguments": arguments}
    assert json.loads(json.dumps(result)) == result
    assert mutable_server.calls[-1] == ("search", arguments)


@pytest.mark.asyncio
async def test_call_tool_without_arguments(mutable_server: McpTestServer) -> None:
    result = await call_tool(mutable_server.url, "streamable-http", "fetch", None, 5.0)
    assert result["structuredContent"] == {"tool": "fetch", "arguments": {}}


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_unknown_tool_is_a_tool_error_not_an_exception(
    mutable_server: McpTestServer, transport: str
) -> None:
    result = await call_tool(endpoint(mutable_server, transport), transport, "nope", {}, 5.0)
    assert result["isError"] is True
    assert "Unknown tool: nope" in result["content"][0]["text"]


def recording_mcp_app(seen: list[dict[str, str]]) -> Any:
    """An echo MCP app that records the headers of every HTTP request it receives."""
    app, _ = build_mcp_app([FETCH])

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return recording


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_headers_are_sent_with_every_request(transport: str) -> None:
    seen: list[dict[str, str]] = []
    with AsgiTestServer(recording_mcp_app(seen), lifespan="on") as srv:
        url = srv.url("/mcp" if transport == "streamable-http" else "/sse")
        tools = await list_tools(url, transport, headers={"Authorization": "Bearer s3cret", "X-Tenant": "a"})
    assert [t["name"] for t in tools] == ["fetch"]
    assert len(seen) >= 2
    assert all(h.get("authorization") == "Bearer s3cret" and h.get("x-tenant") == "a" for h in seen)


# --- failures --------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_refused(transport: str) -> None:
    url = refused_url("/mcp" if transport == "streamable-http" else "/sse")
    error = await assert_fails_fast(list_tools(url, transport, timeout=5.0), reason="connect", contains="refused")
    assert error.endpoint == url
    assert url in str(error)
    await assert_fails_fast(call_tool(url, transport, "x", {}, 5.0), reason="connect", contains="refused")


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hanging_server_times_out(transport: str) -> None:
    with HangingServer() as hanging:
        url = hanging.url if transport == "streamable-http" else hanging.sse_url
        started = time.monotonic()
        with pytest.raises(McpClientError) as info:
            await list_tools(url, transport, timeout=1.0)
        elapsed = time.monotonic() - started
        assert hanging.connections_accepted >= 1
    assert 0.9 < elapsed < 3.0
    assert info.value.reason == "timeout"
    assert "timed out" in str(info.value) and url in str(info.value)


@pytest.mark.asyncio
async def test_call_tool_on_hanging_server_times_out() -> None:
    with HangingServer() as hanging:
        started = time.monotonic()
        with pytest.raises(McpClientError, match="timed out"):
            await call_tool(hanging.url, "streamable-http", "x", {"a": 1}, 0.5)
    assert time.monotonic() - started < 2.5


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_that_never_delivers_times_out(transport: str) -> None:
    """An HTTP server that answers 200 + event-stream but only ever sends keep-alive comments."""

    async def endless_stream(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})

        async def ping_forever() -> None:
            while True:
                await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ping_forever)
            # uvicorn silently drops writes to a closed connection: stop once the client is gone.
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

    with AsgiTestServer(endless_stream) as srv:
        started = time.monotonic()
        with pytest.raises(McpClientError) as info:
            await list_tools(srv.url("/mcp" if transport == "streamable-http" else "/sse"), transport, timeout=1.0)
        assert time.monotonic() - started < 3.0
    assert info.value.reason == "timeout"


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_path_is_http_404(server: McpTestServer, transport: str) -> None:
    url = f"{server.base_url}/not-mcp"
    await assert_fails_fast(list_tools(url, transport, timeout=5.0), reason="http", contains="HTTP 404")


@pytest.mark.asyncio
async def test_http_500_is_reported() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"boom"})

    with AsgiTestServer(broken) as srv:
        await assert_fails_fast(list_tools(srv.url(), timeout=5.0), reason="http", contains="HTTP 500")
        await assert_fails_fast(list_tools(srv.url("/sse"), "sse", timeout=5.0), reason="http", contains="HTTP 500")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("content_type", "body"),
    [(b"text/html", b"<html>hello</html>"), (b"application/json", b"{not json"), (b"application/json", b'{"a": 1}')],
)
async def test_garbage_answers_are_protocol_errors(content_type: bytes, body: bytes) -> None:
    async def garbage(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
            await send({"type": "http.response.body", "body": body})

    with AsgiTestServer(garbage) as srv, pytest.raises(McpClientError) as info:
        await list_tools(srv.url(), timeout=3.0)
    assert info.value.reason in ("protocol", "timeout")
    assert "\n" not in str(info.value)


def test_a_stdio_server_is_spoken_to_through_its_bridge() -> None:
    # One rule for tools/list and tools/call: the bridge's SSE path means SSE, else streamable HTTP.
    assert wire_transport("stdio", "http://bridge.ns.svc:8080/mcp") == "streamable-http"
    assert wire_transport("stdio", "http://127.0.0.1:18101/servers/time/sse") == "sse"
    assert wire_transport("stdio", "http://bridge/sse/") == "sse"
    assert wire_transport("sse", "http://x/mcp") == "sse"
    assert wire_transport("streamable-http", "http://x/sse") == "streamable-http"


@pytest.mark.asyncio
async def test_stdio_server_behind_an_http_bridge_lists_and_calls() -> None:
    # The arrangement ToolHive and mcp-proxy use: the server speaks stdio to a bridge process,
    # which serves it over HTTP as a pre-2026 server (HTTP 400 to the 2026 probe). Paginated.
    tools = [make_tool(f"tool_{i}", f"Tool number {i}", {"type": "object", "properties": {"n": {"type": "integer"}}})
             for i in range(5)]
    async with StdioBridge(tools, page_size=2) as bridge:
        for url in (bridge.url, bridge.sse_url):
            listed = await list_tools(url, "stdio", timeout=30)
            assert [t["name"] for t in listed] == [f"tool_{i}" for i in range(5)]
            result = await call_tool(url, "stdio", "tool_3", {"n": 3}, timeout=30)
            assert result["isError"] is False
            assert json.loads(result["content"][0]["text"]) == {"tool": "tool_3", "arguments": {"n": 3}}
    # An unknown transport is still refused before the network, naming every accepted one.
    await assert_fails_fast(list_tools("http://127.0.0.1:1/mcp", "websocket"), reason="config",
                            contains="streamable-http, sse, stdio")


@pytest.mark.asyncio
async def test_a_pre_2026_server_is_probed_once_then_spoken_to_directly() -> None:
    # Pre-2026 servers answer the SDK's server/discover probe with HTTP 400; that answer is
    # remembered per endpoint, so later connections start with initialize (no 400, one round
    # trip less) and the probe's 400 is not an error anyone sees.
    statuses: list[tuple[str, int]] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append((response.request.method, response.status_code))

    with McpTestServer([SEARCH], legacy=True) as legacy:
        original = client_module._new_http_client

        def traced(trace: Any, headers: Any, timeout: Any, auth: Any = None) -> httpx2.AsyncClient:
            http = original(trace, headers, timeout, auth)
            http.event_hooks["response"].append(record)
            return http

        client_module._new_http_client = traced  # type: ignore[assignment]
        try:
            assert [t["name"] for t in await list_tools(legacy.url, timeout=10)] == ["search"]
            first = list(statuses)
            statuses.clear()
            result = await call_tool(legacy.url, "streamable-http", "search", {"query": "x"}, timeout=10)
            second = list(statuses)
        finally:
            client_module._new_http_client = original
    assert result["isError"] is False
    assert first[0] == ("POST", 400)  # the probe, answered as pre-2026 servers answer it
    assert second[0] == ("POST", 200)  # straight to initialize
    assert all(status < 400 for _, status in second), second


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "transport", "timeout", "contains"),
    [
        ("http://127.0.0.1:1/mcp", "websocket", 1.0, "unsupported transport"),
        ("not a url", "streamable-http", 1.0, "absolute http"),
        ("ftp://example.com/mcp", "sse", 1.0, "absolute http"),
        ("http://127.0.0.1:1/mcp", "streamable-http", 0.0, "timeout must be"),
        ("http://127.0.0.1:1/mcp", "streamable-http", float("nan"), "timeout must be"),
    ],
)
async def test_invalid_requests_are_rejected(url: str, transport: str, timeout: float, contains: str) -> None:
    await assert_fails_fast(list_tools(url, transport, timeout=timeout), reason="config", contains=contains)


@pytest.mark.asyncio
async def test_unresolvable_host_is_a_connect_error() -> None:
    with pytest.raises(McpClientError) as info:
        await list_tools("http://does-not-exist.invalid:8080/mcp", timeout=5.0)
    assert info.value.reason in ("connect", "timeout")


@pytest.mark.asyncio
async def test_callers_cancellation_propagates() -> None:
    """The operator's own cancel scopes must still work: no McpClientError when the caller cancels."""
    with HangingServer() as hanging:
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await list_tools(hanging.url, timeout=10.0)
        assert scope.cancelled_caught
    assert time.monotonic() - started < 2.0


@pytest.mark.asyncio
async def test_native_asyncio_cancellation_propagates() -> None:
    with HangingServer() as hanging:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(list_tools(hanging.url, timeout=10.0), 0.3)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await call_tool(hanging.sse_url, "sse", "x", {}, 10.0)
        task = asyncio.ensure_future(list_tools(hanging.url, timeout=10.0))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - started < 3.0


# --- test server machinery -------------------------------------------------------------------


def _uvicorn_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("uvicorn-")]


@pytest.mark.asyncio
async def test_server_stops_cleanly_async_context() -> None:
    before = len(_uvicorn_threads())
    async with httpx2.AsyncClient(timeout=5.0) as http:
        async with McpTestServer([FETCH], name="async-ctx") as srv:
            assert [t["name"] for t in await list_tools(srv.url)] == ["fetch"]
            port = srv.port
            # Leave an SSE stream open across shutdown: stop() must still finish promptly.
            stream = http.stream("GET", srv.sse_url)
            response = await stream.__aenter__()
            assert response.status_code == 200
            started = time.monotonic()
        assert time.monotonic() - started < 5.0
        await stream.__aexit__(None, None, None)
    assert len(_uvicorn_threads()) == before
    with pytest.raises(McpClientError, match="refused"):
        await list_tools(f"http://127.0.0.1:{port}/mcp", timeout=2.0)


def test_server_start_stop_sync() -> None:
    srv = McpTestServer([FETCH], name="sync").start()
    try:
        assert srv.url.endswith("/mcp") and srv.sse_url.endswith("/sse")
        assert srv.tools[0]["name"] == "fetch"
    finally:
        srv.stop()
    srv.stop()  # idempotent
    assert not [t for t in _uvicorn_threads() if t.name == "uvicorn-sync"]


def test_closed_port_refuses() -> None:
    import socket

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", closed_port()), timeout=2):
        pass


# --- farm ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def farm() -> Iterator[McpTestServerFarm]:
    tool_sets = {
        f"srv-{i:03d}": [make_tool(f"srv{i}_tool{j}", f"Tool {j} of server {i}") for j in range(i % 4 + 1)]
        for i in range(50)
    }
    with McpTestServerFarm(tool_sets) as running:
        yield running


@pytest.mark.asyncio
async def test_farm_serves_distinct_tool_sets(farm: McpTestServerFarm) -> None:
    assert len(farm.names) == 50
    results: dict[str, list[str]] = {}

    async def fetch(name: str) -> None:
        tools = await list_tools(farm.url(name), timeout=10.0)
        results[name] = [t["name"] for t in tools]

    async with anyio.create_task_group() as tg:
        for name in farm.names:
            tg.start_soon(fetch, name)

    for i in range(50):
        assert results[f"srv-{i:03d}"] == [f"srv{i}_tool{j}" for j in range(i % 4 + 1)]


@pytest.mark.asyncio
async def test_farm_sse_and_calls_reach_the_right_server(farm: McpTestServerFarm) -> None:
    tools = await list_tools(farm.sse_url("srv-007"), "sse", timeout=5.0)
    assert [t["name"] for t in tools] == [f"srv7_tool{j}" for j in range(4)]

    result = await call_tool(farm.url("srv-003"), "streamable-http", "srv3_tool0", {"x": 1}, 5.0)
    assert result["structuredContent"] == {"tool": "srv3_tool0", "arguments": {"x": 1}}
    assert farm.registry("srv-003").calls[-1] == ("srv3_tool0", {"x": 1})
    assert not farm.registry("srv-004").calls


@pytest.mark.asyncio
async def test_farm_changes_at_runtime(farm: McpTestServerFarm) -> None:
    farm.set_tools("srv-010", [make_tool("replaced")])
    assert [t["name"] for t in await list_tools(farm.url("srv-010"))] == ["replaced"]

    farm.add_server("late", [make_tool("late_tool")])
    try:
        assert [t["name"] for t in await list_tools(farm.sse_url("late"), "sse")] == ["late_tool"]
        url = farm.url("late")
        assert [t["name"] for t in await list_tools(url)] == ["late_tool"]
    finally:
        farm.remove_server("late")
    await assert_fails_fast(list_tools(url, timeout=5.0), reason="http", contains="HTTP 404")
    with pytest.raises(KeyError):
        farm.url("late")


# --- command line ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_command_line_entry_point(tmp_path: Path) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([SEARCH, FETCH]))
    port = closed_port()
    cmd = [sys.executable, "-m", "mcp_optimizer.testing.mcp_servers", "--tools", str(tools_file), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    process = await anyio.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                tools = await list_tools(f"http://127.0.0.1:{port}/mcp", timeout=2.0)
                break
            except McpClientError:
                if process.returncode is not None or time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.1)
        assert [t["name"] for t in tools] == ["search", "fetch"]
    finally:
        process.terminate()
        with anyio.move_on_after(10) as scope:
            await process.wait()
        if scope.cancelled_caught:
            process.kill()
            await process.wait()
        await process.aclose()
