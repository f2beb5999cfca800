"""Real MCP servers on 127.0.0.1 for tests and benchmarks.

Everything here runs the official MCP Python SDK server (the low-level
``mcp.server.lowlevel.Server``) under uvicorn, so the operator's client is
exercised against the same wire behaviour a real workload would show:

* :func:`build_mcp_server` / :func:`build_mcp_app`: a server whose tools come
  from plain tool definitions (``name``, ``description``, ``inputSchema``) held
  in a mutable :class:`ToolRegistry`; calling a tool echoes its name and
  arguments back.
* :class:`McpTestServer`: one such server on a free port in a background
  thread, streamable HTTP at ``/mcp`` and SSE at ``/sse``.
* :class:`McpTestServerFarm`: many logical servers behind ONE uvicorn instance,
  at ``/s/<name>/mcp`` and ``/s/<name>/sse`` (benchmarks need hundreds).
* :class:`HangingServer`, :func:`closed_port`, :func:`refused_url`: endpoints
  that never answer or refuse connections.
* :class:`HostileMcpServer`: a server that speaks MCP over streamable HTTP but answers
  ``tools/list`` and ``tools/call`` with what a hostile tenant would serve (a 50 MB
  description, 100,000 tools, a page that never ends, bytes trickling in, a huge call result,
  a compressed answer); the answers are generated while they are sent, so the server itself
  holds none of them (:class:`Hostility` has the catalogue).

Run one server standalone with
``python -m mcp_optimizer.testing.mcp_servers --tools tools.json --port 8000``.

Why a hand-written ASGI router instead of Starlette ``Mount``s: every logical
server needs its own ``StreamableHTTPSessionManager`` whose ``run()`` must be
active while requests arrive, and Starlette never runs the lifespan of mounted
sub-apps (requests then fail with "Task group is not initialized"). The router
below owns all managers' lifetimes itself and can add or remove logical
servers while running.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gzip
import itertools
import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import anyio
import anyio.to_thread
import mcp_types as types
import uvicorn
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.mcp.destinations import DestinationPolicy

__all__ = [
    "LOOPBACK",
    "LOOPBACK_POLICY",
    "AsgiTestServer",
    "HangingServer",
    "HostileMcpServer",
    "Hostility",
    "McpHostApp",
    "McpTestServer",
    "McpTestServerFarm",
    "ToolDef",
    "ToolRegistry",
    "build_mcp_app",
    "build_mcp_server",
    "closed_port",
    "echo_payload",
    "main",
    "make_tool",
    "refused_url",
]

#: The allow-list entries that admit these servers: the operator refuses loopback by default, so
#: every test and benchmark that talks to them says so explicitly.
LOOPBACK: Final[tuple[str, ...]] = ("127.0.0.0/8", "::1")
#: A client policy that admits them: for tests and benchmarks that call these servers (or an
#: endpoint on loopback) through :mod:`mcp_optimizer.mcp.client` directly.
LOOPBACK_POLICY: Final = ClientPolicy(destinations=DestinationPolicy.allowing(LOOPBACK))

ToolDef = Mapping[str, Any]
"""A tool definition as MCP puts it on the wire: ``name``, ``description``, ``inputSchema`` (+ optional fields)."""

DEFAULT_HOST: Final = "127.0.0.1"
FARM_PREFIX: Final = "/s"
"""Logical farm servers live at ``/s/<name>/mcp`` and ``/s/<name>/sse``."""

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}}
_MAX_RECORDED_CALLS: Final = 10_000
"""Recorded calls are capped so long benchmarks do not grow memory without bound."""
_T = TypeVar("_T")
_SESSION_IDLE_TIMEOUT: Final = 300.0
"""Stateful sessions abandoned by a client (no DELETE) are reaped after this many seconds."""


def make_tool(
    name: str,
    description: str = "",
    input_schema: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a tool definition dict; ``extra`` adds wire fields such as ``title`` or ``annotations``."""
    tool: dict[str, Any] = {
        "name": name,
        "description": description,
        "inputSchema": dict(input_schema) if input_schema is not None else dict(_EMPTY_SCHEMA),
    }
    tool.update(extra)
    return tool


def _to_mcp_tool(tool: ToolDef | types.Tool) -> types.Tool:
    if isinstance(tool, types.Tool):
        return tool.model_copy(deep=True)
    data = dict(tool)
    if "inputSchema" not in data and "input_schema" not in data:
        # Convenience: a schema-less definition means "takes no arguments".
        data["inputSchema"] = dict(_EMPTY_SCHEMA)
    return types.Tool.model_validate(data)


class ToolRegistry:
    """Thread-safe, mutable tool list shared by a test (any thread) and the server serving it.

    Also records every ``tools/call`` received so tests can check call forwarding.
    """

    def __init__(self, tools: Iterable[ToolDef | types.Tool] = ()) -> None:
        self._lock = threading.Lock()
        self._tools: tuple[types.Tool, ...] = ()
        self._by_name: dict[str, types.Tool] = {}
        self._calls: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=_MAX_RECORDED_CALLS)
        #: Complete ``tools/list`` requests (first pages) served: tells how many replicas listed.
        self.lists = 0
        self.set_tools(tools)

    def set_tools(self, tools: Iterable[ToolDef | types.Tool], *, allow_repeated_names: bool = False) -> None:
        """Replace the whole tool list; the next ``tools/list`` sees the new one.

        ``allow_repeated_names``: serve the list as given even when a name repeats, as buggy
        servers do (a call then runs the first tool of that name).

        Raises:
            ValueError: A definition is not a valid MCP tool, or a name repeats (unless allowed).
        """
        parsed = tuple(_to_mcp_tool(tool) for tool in tools)
        by_name: dict[str, types.Tool] = {}
        for tool in parsed:
            if tool.name in by_name:
                if allow_repeated_names:
                    continue
                raise ValueError(f"duplicate tool name {tool.name!r}")
            by_name[tool.name] = tool
        with self._lock:
            self._tools = parsed
            self._by_name = by_name

    def add_tool(self, tool: ToolDef | types.Tool) -> None:
        """Append one tool (replacing a tool of the same name in place)."""
        new = _to_mcp_tool(tool)
        with self._lock:
            if new.name in self._by_name:
                current = tuple(new if t.name == new.name else t for t in self._tools)
            else:
                current = (*self._tools, new)
            self._tools = current
            self._by_name = {t.name: t for t in current}

    def remove_tool(self, name: str) -> None:
        """Remove a tool by name (no-op if absent)."""
        with self._lock:
            self._tools = tuple(t for t in self._tools if t.name != name)
            self._by_name.pop(name, None)

    @property
    def tools(self) -> list[dict[str, Any]]:
        """Current tools as wire-format dicts (copies)."""
        with self._lock:
            snapshot = self._tools
        return [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in snapshot]

    @property
    def names(self) -> list[str]:
        """Current tool names, in listing order."""
        with self._lock:
            return [t.name for t in self._tools]

    def snapshot(self) -> tuple[types.Tool, ...]:
        """Current tools as SDK models (an immutable snapshot; do not mutate the models)."""
        with self._lock:
            return self._tools

    def find(self, name: str) -> types.Tool | None:
        """The tool called ``name``, or None."""
        with self._lock:
            return self._by_name.get(name)

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """``inputSchema`` of ``name`` (or None); lets the SDK validate headers without a listing."""
        tool = self.find(name)
        return tool.input_schema if tool is not None else None

    def record_call(self, name: str, arguments: Mapping[str, Any]) -> None:
        with self._lock:
            self._calls.append((name, dict(arguments)))

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        """``(tool_name, arguments)`` of every call received, oldest first (last 10 000)."""
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()


def echo_payload(tool_name: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a test tool answers: its own name and the arguments it received."""
    return {"tool": tool_name, "arguments": dict(arguments or {})}


def build_mcp_server(
    tools: Iterable[ToolDef | types.Tool] | ToolRegistry = (),
    *,
    name: str = "mcp-test-server",
    page_size: int | None = None,
) -> tuple[Server[Any], ToolRegistry]:
    """Build an SDK low-level MCP server exposing ``tools``, whose calls echo name and arguments.

    Args:
        tools: Tool definitions, or an existing registry to share.
        name: Server name reported in ``serverInfo``.
        page_size: Serve ``tools/list`` in pages of this size (``nextCursor`` pagination);
            None returns everything in one page.

    Returns:
        The server and the registry that drives it; change the registry to change the tools.

    A call's result has one text block holding ``json.dumps({"tool": ..., "arguments": ...})``
    and the same object as ``structuredContent`` (omitted for tools declaring an
    ``outputSchema``, which the echo would not satisfy). Unknown tools answer
    ``isError: true``; a tool declaring ``execution.taskSupport: "required"`` refuses a plain
    call with a JSON-RPC error, as the TypeScript SDK's servers do.
    """
    if page_size is not None and page_size <= 0:
        raise ValueError("page_size must be positive or None")
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        snapshot = registry.snapshot()
        if params is None or params.cursor is None:
            registry.lists += 1
        if page_size is None:
            return types.ListToolsResult(tools=list(snapshot))
        cursor = params.cursor if params is not None else None
        start = _parse_cursor(cursor, len(snapshot))
        end = start + page_size
        return types.ListToolsResult(
            tools=list(snapshot[start:end]),
            next_cursor=str(end) if end < len(snapshot) else None,
        )

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        arguments = dict(params.arguments or {})
        registry.record_call(params.name, arguments)
        tool = registry.find(params.name)
        if tool is None:
            return types.CallToolResult(
                content=[types.TextContent(text=f"Unknown tool: {params.name}")],
                is_error=True,
            )
        if tool.execution is not None and tool.execution.task_support == "required":
            # What the TypeScript SDK answers (server-everything's simulate-research-query).
            raise MCPError(
                code=types.INVALID_REQUEST,
                message=f'Tool "{params.name}" requires task-based execution.',
            )
        payload = echo_payload(params.name, arguments)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(payload, sort_keys=True))],
            structured_content=payload if tool.output_schema is None else None,
        )

    server: Server[Any] = Server(
        name,
        version="0.0.0",
        get_tool_input_schema=registry.input_schema,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )
    return server, registry


def _parse_cursor(cursor: str | None, total: int) -> int:
    if cursor is None:
        return 0
    try:
        offset = int(cursor)
    except ValueError:
        offset = -1
    if not 0 <= offset <= total:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor: {cursor!r}")
    return offset


@dataclass(eq=False)
class _Mounted:
    """One logical MCP server inside a host app."""

    name: str
    prefix: str
    server: Server[Any]
    registry: ToolRegistry
    manager: StreamableHTTPSessionManager
    sse: SseServerTransport
    cancel_scope: anyio.CancelScope | None = None
    ready: bool = False
    stopped: anyio.Event | None = None


class McpHostApp:
    """ASGI app routing ``<prefix>/mcp``, ``<prefix>/sse`` and ``<prefix>/messages/`` to logical servers.

    The ASGI lifespan keeps one task group open in which each logical server's
    session manager runs; servers can be added or removed while the app runs
    (from other threads through :meth:`call_in_loop`).
    """

    def __init__(self, *, json_response: bool = False, legacy: bool = False) -> None:
        self._json_response = json_response
        self._legacy = legacy
        self._mounted: dict[str, _Mounted] = {}
        self._task_group: TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._task_group is not None

    def create(self, prefix: str, name: str, registry: ToolRegistry, page_size: int | None) -> _Mounted:
        """Build (but do not start) a logical server at ``prefix``."""
        server, registry = build_mcp_server(registry, name=name, page_size=page_size)
        manager = StreamableHTTPSessionManager(
            app=server,
            json_response=self._json_response,
            # No DNS-rebinding checks: loopback test servers are contacted by IP from the same host.
            security_settings=None,
            session_idle_timeout=_SESSION_IDLE_TIMEOUT,
        )
        sse = SseServerTransport(f"{prefix}/messages/")
        return _Mounted(name=name, prefix=prefix, server=server, registry=registry, manager=manager, sse=sse)

    def get(self, prefix: str) -> _Mounted | None:
        return self._mounted.get(prefix)

    def mount_before_start(self, mounted: _Mounted) -> None:
        if self.running:
            raise RuntimeError("host app is running; use mount_running()")
        if mounted.prefix in self._mounted:
            raise ValueError(f"a server is already mounted at {mounted.prefix!r}")
        self._mounted[mounted.prefix] = mounted

    def unmount_before_start(self, prefix: str) -> None:
        if self.running:
            raise RuntimeError("host app is running; use unmount()")
        self._mounted.pop(prefix, None)

    async def mount_running(self, mounted: _Mounted) -> None:
        """Start and expose a logical server (must run on the app's event loop)."""
        if self._task_group is None:
            raise RuntimeError("host app is not running")
        if mounted.prefix in self._mounted:
            raise ValueError(f"a server is already mounted at {mounted.prefix!r}")
        self._mounted[mounted.prefix] = mounted
        try:
            await self._task_group.start(self._run_mounted, mounted)
        except BaseException:
            self._mounted.pop(mounted.prefix, None)
            raise

    async def unmount(self, prefix: str) -> None:
        """Stop a logical server; its URLs answer 404 from now on (must run on the app's loop)."""
        mounted = self._mounted.pop(prefix, None)
        if mounted is None:
            raise KeyError(prefix)
        mounted.ready = False
        if mounted.cancel_scope is not None:
            mounted.cancel_scope.cancel()
        if mounted.stopped is not None:
            await mounted.stopped.wait()

    def call_in_loop(self, coro_fn: Callable[..., Coroutine[Any, Any, _T]], *args: Any, timeout: float = 30.0) -> _T:
        """Run ``await coro_fn(*args)`` on the app's event loop from another thread."""
        if self._loop is None:
            raise RuntimeError("host app is not running")
        future = asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop)
        return future.result(timeout)

    async def _run_mounted(
        self, mounted: _Mounted, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        mounted.stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                mounted.cancel_scope = scope
                async with mounted.manager.run():
                    mounted.ready = True
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            mounted.ready = False
            mounted.stopped.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        mounted, sub = self._route(scope["path"])
        if mounted is None or not mounted.ready:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        if sub in ("/mcp", "/mcp/"):
            if self._legacy:
                await refuse_without_session(mounted.manager.handle_request, scope, receive, send)
            else:
                await mounted.manager.handle_request(scope, receive, send)
        elif sub in ("/sse", "/sse/"):
            if scope["method"] != "GET":
                await PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "GET"})(
                    scope, receive, send
                )
                return
            async with mounted.sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
                await mounted.server.run(read_stream, write_stream, mounted.server.create_initialization_options())
        elif sub == "/messages" or sub.startswith("/messages/"):
            await mounted.sse.handle_post_message(scope, receive, send)
        else:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)

    def _route(self, path: str) -> tuple[_Mounted | None, str]:
        if path.startswith(FARM_PREFIX + "/"):
            name, _, rest = path[len(FARM_PREFIX) + 1 :].partition("/")
            mounted = self._mounted.get(f"{FARM_PREFIX}/{name}")
            if mounted is not None:
                return mounted, "/" + rest
        return self._mounted.get(""), path

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        started = False
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                self._loop = asyncio.get_running_loop()
                for mounted in list(self._mounted.values()):
                    await tg.start(self._run_mounted, mounted)
                started = True
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
                # Refuse new mounts from here on; cancelling the group stops every session manager.
                self._task_group = None
                tg.cancel_scope.cancel()
        except Exception as exc:
            failure: Message = {
                "type": "lifespan.shutdown.failed" if started else "lifespan.startup.failed",
                "message": repr(exc),
            }
            await send(failure)
            return
        finally:
            self._task_group = None
            self._loop = None
        await send({"type": "lifespan.shutdown.complete"})


async def refuse_without_session(app: Callable[[Scope, Receive, Send], Any], scope: Scope, receive: Receive,
                                 send: Send) -> None:
    """Answer like a pre-2026 streamable HTTP server (MCP SDK 1.x, mcp-proxy, ToolHive's proxy).

    Those servers only accept ``initialize`` without an ``Mcp-Session-Id`` header and answer
    anything else, the 2026 ``server/discover`` probe included, with HTTP 400 "Bad Request:
    Missing session ID". Everything else goes to ``app`` unchanged (the body is replayed).
    """
    if scope["method"] != "POST" or any(k.lower() == b"mcp-session-id" for k, _ in scope["headers"]):
        await app(scope, receive, send)
        return
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        chunks.append(message.get("body", b""))
        more = bool(message.get("more_body"))
    body = b"".join(chunks)
    try:
        method = json.loads(body).get("method")
    except (ValueError, AttributeError):
        method = None
    if method != "initialize":
        error = {"jsonrpc": "2.0", "id": "server-error",
                 "error": {"code": types.INVALID_REQUEST, "message": "Bad Request: Missing session ID"}}
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(error).encode()})
        return
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    await app(scope, replay, send)


def build_mcp_app(
    tools: Iterable[ToolDef | types.Tool] | ToolRegistry = (),
    *,
    name: str = "mcp-test-server",
    page_size: int | None = None,
    json_response: bool = False,
    legacy: bool = False,
) -> tuple[McpHostApp, ToolRegistry]:
    """An ASGI app (with lifespan) serving one echo MCP server.

    Streamable HTTP at ``/mcp``, SSE at ``/sse`` (messages at ``/messages/``).
    Serve it with any ASGI server, lifespan enabled, e.g. ``uvicorn.run(app, lifespan="on")``.
    ``legacy``: answer the 2026 protocol probe as pre-2026 servers do (see
    :func:`refuse_without_session`).
    """
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
    app = McpHostApp(json_response=json_response, legacy=legacy)
    app.mount_before_start(app.create("", name, registry, page_size))
    return app, registry


class _UvicornThread:
    """Runs an ASGI app with uvicorn on its own event loop in a daemon thread."""

    def __init__(
        self, app: Any, *, host: str, port: int, name: str, lifespan: Literal["auto", "on", "off"] = "on"
    ) -> None:
        self._app = app
        self._lifespan = lifespan
        self._host = host
        self._requested_port = port
        self._name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.port: int | None = None

    def start(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP must be explicit: asyncio only sets TCP_NODELAY on accepted connections
        # whose listening socket says proto=TCP, and without it keep-alive POSTs stall ~40 ms
        # on Nagle + delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan=self._lifespan,
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
            backlog=4096,
            # Long-lived SSE streams must not hold shutdown hostage.
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"uvicorn-{self._name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                sock.close()
                raise RuntimeError(f"MCP test server {self._name!r} failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"MCP test server {self._name!r} did not start within {timeout}s")
            time.sleep(0.005)
        _wait_for_port(self._host, self.port, deadline)

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:
            self._error = exc
        finally:
            sock.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread is None or self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
        if self._thread.is_alive():
            raise RuntimeError(f"MCP test server {self._name!r} did not stop")
        self._thread = None


def _wait_for_port(host: str, port: int, deadline: float) -> None:
    """Block until ``host:port`` accepts TCP connections."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host}:{port} does not accept connections") from None
            time.sleep(0.01)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _ThreadedServerBase:
    """Start/stop plus sync and async context management around a :class:`_UvicornThread`."""

    _runner: _UvicornThread
    _host: str

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if self._runner.port is None:
            raise RuntimeError("server not started")
        return self._runner.port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{_url_host(self._host)}:{self.port}"

    def start(self) -> Self:
        """Start serving; returns once the port accepts connections."""
        self._runner.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread (idempotent)."""
        self._runner.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Off the event loop: starting blocks until the port is ready.
        await anyio.to_thread.run_sync(self._runner.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self._runner.stop)


class AsgiTestServer(_ThreadedServerBase):
    """Any ASGI app on ``127.0.0.1:<free port>`` in a background thread.

    For simulating broken servers (wrong content types, HTTP errors, streams that never
    deliver a message) that the SDK server cannot be made to produce.
    """

    def __init__(
        self,
        app: Any,
        *,
        name: str = "asgi-test-server",
        host: str = DEFAULT_HOST,
        port: int = 0,
        lifespan: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self._host = host
        # "auto" by default: plain test apps often do not implement the lifespan protocol.
        self._runner = _UvicornThread(app, host=host, port=port, name=name, lifespan=lifespan)

    def url(self, path: str = "/mcp") -> str:
        """URL of ``path`` on this server."""
        return f"{self.base_url}{path}"


class McpTestServer(_ThreadedServerBase):
    """One echo MCP server on ``127.0.0.1:<free port>`` in a background thread.

    Streamable HTTP at :attr:`url` (``/mcp``), SSE at :attr:`sse_url` (``/sse``).

    Example::

        with McpTestServer([make_tool("search", "Search things")]) as server:
            tools = await list_tools(server.url)
            server.set_tools([])
    """

    def __init__(
        self,
        tools: Iterable[ToolDef | types.Tool] = (),
        *,
        name: str = "mcp-test-server",
        page_size: int | None = None,
        json_response: bool = False,
        legacy: bool = False,
        host: str = DEFAULT_HOST,
        port: int = 0,
    ) -> None:
        self._host = host
        self._app, self.registry = build_mcp_app(
            tools, name=name, page_size=page_size, json_response=json_response, legacy=legacy
        )
        self._runner = _UvicornThread(self._app, host=host, port=port, name=name)

    @property
    def url(self) -> str:
        """Streamable HTTP endpoint."""
        return f"{self.base_url}/mcp"

    @property
    def sse_url(self) -> str:
        """SSE endpoint."""
        return f"{self.base_url}/sse"

    @property
    def tools(self) -> list[dict[str, Any]]:
        """Currently served tools (wire-format dicts)."""
        return self.registry.tools

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        """``(tool_name, arguments)`` of every call received."""
        return self.registry.calls

    def set_tools(self, tools: Iterable[ToolDef | types.Tool]) -> None:
        """Replace the served tools; effective for the next ``tools/list``."""
        self.registry.set_tools(tools)


class McpTestServerFarm(_ThreadedServerBase):
    """Many logical echo MCP servers behind one uvicorn instance.

    Server ``name`` is served at ``/s/<name>/mcp`` (streamable HTTP) and
    ``/s/<name>/sse`` (SSE). Each has its own SDK server, session manager and
    :class:`ToolRegistry`. Servers can be added and removed before or while
    running; a removed server's URLs answer 404.

    Not safe to call :meth:`add_server`/:meth:`remove_server` concurrently with :meth:`start`.
    """

    def __init__(
        self,
        tool_sets: Mapping[str, Iterable[ToolDef | types.Tool]] | None = None,
        *,
        page_size: int | None = None,
        json_response: bool = False,
        host: str = DEFAULT_HOST,
        port: int = 0,
    ) -> None:
        self._host = host
        self._page_size = page_size
        self._app = McpHostApp(json_response=json_response)
        self._runner = _UvicornThread(self._app, host=host, port=port, name="mcp-test-farm")
        self._names: list[str] = []
        self._lock = threading.Lock()
        for name, tools in (tool_sets or {}).items():
            self.add_server(name, tools)

    @staticmethod
    def _prefix(name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid server name {name!r}: use letters, digits, '.', '_' or '-'")
        return f"{FARM_PREFIX}/{name}"

    def add_server(self, name: str, tools: Iterable[ToolDef | types.Tool] = ()) -> ToolRegistry:
        """Add a logical server (live if the farm is running); returns its registry."""
        prefix = self._prefix(name)
        with self._lock:
            if name in self._names:
                raise ValueError(f"server {name!r} already exists")
            mounted = self._app.create(prefix, name, ToolRegistry(tools), self._page_size)
            if self._app.running:
                self._app.call_in_loop(self._app.mount_running, mounted)
            else:
                self._app.mount_before_start(mounted)
            self._names.append(name)
        return mounted.registry

    def remove_server(self, name: str) -> None:
        """Stop and remove a logical server."""
        prefix = self._prefix(name)
        with self._lock:
            if name not in self._names:
                raise KeyError(name)
            if self._app.running:
                self._app.call_in_loop(self._app.unmount, prefix)
            else:
                self._app.unmount_before_start(prefix)
            self._names.remove(name)

    @property
    def names(self) -> list[str]:
        """Names of the logical servers, in insertion order."""
        with self._lock:
            return list(self._names)

    def _mounted(self, name: str) -> _Mounted:
        mounted = self._app.get(self._prefix(name))
        if mounted is None:
            raise KeyError(name)
        return mounted

    def url(self, name: str) -> str:
        """Streamable HTTP endpoint of server ``name``."""
        self._mounted(name)
        return f"{self.base_url}{FARM_PREFIX}/{name}/mcp"

    def sse_url(self, name: str) -> str:
        """SSE endpoint of server ``name``."""
        self._mounted(name)
        return f"{self.base_url}{FARM_PREFIX}/{name}/sse"

    @property
    def urls(self) -> dict[str, str]:
        """Streamable HTTP endpoint of every server, by name."""
        return {name: self.url(name) for name in self.names}

    def registry(self, name: str) -> ToolRegistry:
        """The tool registry of server ``name``."""
        return self._mounted(name).registry

    def set_tools(self, name: str, tools: Iterable[ToolDef | types.Tool]) -> None:
        """Replace the tools of server ``name``."""
        self.registry(name).set_tools(tools)


class HangingServer:
    """Accepts TCP connections on 127.0.0.1 and never answers a byte (for timeout tests).

    Accepted connections are held open until :meth:`stop`, so clients see
    neither a refusal nor a reset: only silence.
    """

    def __init__(self, host: str = DEFAULT_HOST) -> None:
        self._host = host
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.port: int | None = None

    @property
    def connections_accepted(self) -> int:
        """How many connections were accepted so far."""
        return len(self._conns)

    @property
    def url(self) -> str:
        """A streamable-HTTP-looking URL that will hang."""
        return f"http://{_url_host(self._host)}:{self.port}/mcp"

    @property
    def sse_url(self) -> str:
        """An SSE-looking URL that will hang."""
        return f"http://{_url_host(self._host)}:{self.port}/sse"

    def start(self) -> Self:
        if self._listener is not None:
            raise RuntimeError("already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((self._host, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="hanging-server", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener], [], [], 0.05)
            if readable:
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                self._conns.append(conn)

    def stop(self) -> None:
        """Close every connection and the listener, and join the thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Hostile servers
# --------------------------------------------------------------------------------------------

Chunks = Callable[[str | None], Iterator[bytes]]
"""The JSON of a result (``ListToolsResult`` or ``CallToolResult``), in pieces, given the cursor."""

_FILLER: Final = b"lorem ipsum dolor sit amet " * 2427  # 65,529 bytes of plain text
#: Plain English: about one word piece per word, as real descriptions (lorem ipsum is about two).
_ENGLISH: Final = b"the quick brown fox jumps over the lazy dog " * 1489


def _text(size: int | None, filler: bytes = _FILLER) -> Iterator[bytes]:
    """``size`` bytes of JSON-safe text (None: without end), in 64 KiB pieces."""
    sent = 0
    while size is None or sent < size:
        piece = filler if size is None else filler[: size - sent]
        sent += len(piece)
        yield piece


@dataclass(frozen=True)
class Hostility:
    """What a :class:`HostileMcpServer` answers. Build one with the class methods."""

    name: str
    #: ``tools/list`` result for a cursor.
    tools_list: Chunks
    #: ``tools/call`` result (for any tool and arguments).
    call_result: Chunks = field(default=lambda cursor: iter([b'{"content":[{"type":"text","text":"ok"}]}']))
    #: Seconds between pieces (a trickling server).
    delay: float = 0.0
    #: ``Content-Encoding`` to send the answers with (``gzip``), or None.
    encoding: str | None = None
    #: A ``Content-Length`` to announce (a lie is fine: the client must stop on the announcement).
    announced_length: int | None = None

    @classmethod
    def huge_description(cls, size: int = 50 * 1024 * 1024) -> Hostility:
        """One tool whose description is ``size`` bytes (the issue's 50 MB answer)."""

        def chunks(cursor: str | None) -> Iterator[bytes]:
            yield b'{"tools":[{"name":"huge","inputSchema":{"type":"object"},"description":"'
            yield from _text(size)
            yield b'"}]}'

        return cls(f"description of {size:,} bytes", chunks)

    @classmethod
    def endless_page(cls) -> Hostility:
        """A tools/list page that never ends."""

        def chunks(cursor: str | None) -> Iterator[bytes]:
            yield b'{"tools":[{"name":"endless","inputSchema":{"type":"object"},"description":"'
            yield from _text(None)

        return cls("a tools/list page without end", chunks)

    @classmethod
    def huge_schema(cls, size: int = 20 * 1024 * 1024, *, properties: int = 2000) -> Hostility:
        """One tool whose inputSchema is about ``size`` bytes: ``properties`` properties with long
        descriptions."""
        each = max(1, size // properties)

        def chunks(cursor: str | None) -> Iterator[bytes]:
            yield b'{"tools":[{"name":"deep","description":"A tool with a huge schema",'
            yield b'"inputSchema":{"type":"object","properties":{'
            for i in range(properties):
                yield (b"," if i else b"") + b'"p%06d":{"type":"string","description":"' % i
                yield from _text(each)
                yield b'"}'
            yield b"}}}]}"

        return cls(f"inputSchema of {size:,} bytes", chunks)

    @classmethod
    def many_tools(
        cls, count: int = 100_000, *, page_size: int | None = None, description: str = "A tool"
    ) -> Hostility:
        """``count`` small tools, in one page or in pages of ``page_size``."""
        text = json.dumps(description).encode()

        def chunks(cursor: str | None) -> Iterator[bytes]:
            start = int(cursor or 0)
            end = count if page_size is None else min(count, start + page_size)
            yield b'{"tools":['
            for batch in range(start, end, 1000):  # a thousand tools a piece: sending is not the test
                yield b",".join(
                    b'{"name":"tool_%06d","description":%s,"inputSchema":{"type":"object"}}' % (i, text)
                    for i in range(batch, min(end, batch + 1000))
                ) + (b"," if batch + 1000 < end else b"")
            yield b"]" + (b',"nextCursor":"%d"' % end if end < count else b"") + b"}"

        return cls(f"{count:,} tools", chunks)

    @classmethod
    def endless_pages(cls, *, description_size: int = 512 * 1024) -> Hostility:
        """Pages without end, each with one tool with a ``description_size``-byte description and a
        new cursor: a listing that only a bound on all pages together stops."""

        def chunks(cursor: str | None) -> Iterator[bytes]:
            page = int(cursor or 0)
            yield b'{"tools":[{"name":"page_%06d","inputSchema":{"type":"object"},"description":"' % page
            yield from _text(description_size)
            yield b'"}],"nextCursor":"%d"}' % (page + 1)

        return cls("pages without end", chunks)

    @classmethod
    def bounded_but_big(
        cls, *, tools: int = 600, page_size: int = 80, description_size: int = 9000, schema_properties: int = 40
    ) -> Hostility:
        """As much as fits the default bounds: ``tools`` tools (in pages of ``page_size``), each with a
        description a little over the description bound and a wide schema, all of which is indexed
        (clipped) and searchable: the most a tenant can make everyone's find_tool carry."""
        schema = json.dumps(
            {
                "type": "object",
                "properties": {
                    f"arg{i}": {"type": "string", "description": f"argument {i} of the tool"}
                    for i in range(schema_properties)
                },
            }
        ).encode()

        def chunks(cursor: str | None) -> Iterator[bytes]:
            start = int(cursor or 0)
            end = min(tools, start + page_size)
            yield b'{"tools":['
            for i in range(start, end):
                yield (b"," if i > start else b"") + b'{"name":"bulk_%05d","inputSchema":%s,"description":"' % (
                    i,
                    schema,
                )
                yield b"email message %d " % i
                yield from _text(description_size, _ENGLISH)
                yield b'"}'
            yield b"]" + (b',"nextCursor":"%d"' % end if end < tools else b"") + b"}"

        return cls(f"{tools} tools at the bounds", chunks)

    @classmethod
    def trickle(cls, delay: float = 0.05) -> Hostility:
        """A small, valid answer sent one piece every ``delay`` seconds (never finishes in time)."""
        answer = b'{"tools":[{"name":"slow","description":"A slow tool","inputSchema":{"type":"object"}}]}'

        def chunks(cursor: str | None) -> Iterator[bytes]:
            for i in range(len(answer)):
                yield answer[i : i + 1]

        return cls("bytes trickling in", chunks, delay=delay)

    @classmethod
    def huge_result(cls, size: int = 50 * 1024 * 1024) -> Hostility:
        """A normal tool whose call answers ``size`` bytes of text."""

        def tools(cursor: str | None) -> Iterator[bytes]:
            yield b'{"tools":[{"name":"dump","description":"Dump a large report","inputSchema":{"type":"object"}}]}'

        def result(cursor: str | None) -> Iterator[bytes]:
            yield b'{"content":[{"type":"text","text":"'
            yield from _text(size)
            yield b'"}]}'

        return cls(f"call result of {size:,} bytes", tools, call_result=result)

    @classmethod
    def compressed(cls) -> Hostility:
        """A small gzip-compressed answer (its decoded size is unknown until decoded)."""
        return replace(cls.many_tools(10), name="gzip-compressed answer", encoding="gzip")

    @classmethod
    def lying_length(cls, announced: int = 50 * 1024 * 1024) -> Hostility:
        """Announces ``announced`` bytes in Content-Length."""
        return replace(cls.many_tools(10), name=f"Content-Length {announced:,}", announced_length=announced)


class _HostileApp:
    """MCP over streamable HTTP (JSON answers, no sessions) with hostile tools/list and tools/call."""

    def __init__(self, hostility: Hostility) -> None:
        self.hostility = hostility
        #: Bytes of tools/list and tools/call answers handed to the HTTP server so far.
        self.bytes_sent = 0
        self.requests: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await PlainTextResponse("Method Not Allowed", status_code=405)(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        method = request.get("method", "")
        self.requests[method] += 1
        if "id" not in request:
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        prefix = b'{"jsonrpc":"2.0","id":' + json.dumps(request["id"]).encode()
        params = request.get("params") or {}
        if method == "initialize":
            version = params.get("protocolVersion") or "2025-06-18"
            result: dict[str, Any] = {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "0"},
            }
            await self._answer(send, receive, iter([prefix + b',"result":' + json.dumps(result).encode() + b"}"]))
        elif method in ("tools/list", "tools/call"):
            chunks = (
                self.hostility.tools_list(params.get("cursor"))
                if method == "tools/list"
                else self.hostility.call_result(None)
            )
            body_chunks = itertools.chain([prefix + b',"result":'], chunks, [b"}"])
            await self._answer(send, receive, body_chunks, hostile=True)
        elif method == "ping":
            await self._answer(send, receive, iter([prefix + b',"result":{}}']))
        else:
            error = b',"error":{"code":-32601,"message":"Method not found"}}'
            await self._answer(send, receive, iter([prefix + error]))

    async def _answer(self, send: Send, receive: Receive, chunks: Iterator[bytes], *, hostile: bool = False) -> None:
        headers = [(b"content-type", b"application/json")]
        hostility = self.hostility
        if hostile and hostility.encoding == "gzip":
            headers.append((b"content-encoding", b"gzip"))
            chunks = iter([gzip.compress(b"".join(chunks))])
        if hostile and hostility.announced_length is not None:
            headers.append((b"content-length", str(hostility.announced_length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # The client hanging up must end an endless answer: uvicorn's send() then just returns.
        gone = anyio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for chunk in chunks:
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if hostile:
                    self.bytes_sent += len(chunk)
                await anyio.sleep(hostility.delay if hostile else 0)
            if not gone.is_set():
                # A lying Content-Length makes the end of the body a protocol error: the client
                # hung up long before, which is the point.
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b""})
            tg.cancel_scope.cancel()


class HostileMcpServer(AsgiTestServer):
    """A hostile MCP server on ``127.0.0.1:<free port>`` (streamable HTTP at :attr:`url`).

    Example::

        with HostileMcpServer(Hostility.huge_description()) as server:
            await list_tools(server.url, ...)  # must fail with reason "limit", fast
    """

    def __init__(self, hostility: Hostility, *, host: str = DEFAULT_HOST) -> None:
        self.app = _HostileApp(hostility)
        super().__init__(self.app, name=f"hostile: {hostility.name}", host=host, lifespan="off")

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"{self.base_url}/mcp"

    @property
    def bytes_sent(self) -> int:
        """Bytes of hostile answers the server got to send before the client stopped reading."""
        return self.app.bytes_sent


def closed_port(host: str = DEFAULT_HOST) -> int:
    """A port on ``host`` with (almost certainly) nothing listening: connecting is refused."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def refused_url(path: str = "/mcp", host: str = DEFAULT_HOST) -> str:
    """An http URL whose connection attempts are refused."""
    return f"http://{_url_host(host)}:{closed_port(host)}{path}"


def _load_tools(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list) or not all(isinstance(tool, dict) for tool in data):
        raise ValueError(f"{path}: expected a JSON list of tool objects (or {{'tools': [...]}})")
    return data


async def serve_stdio(tools: Iterable[ToolDef | types.Tool], *, name: str, page_size: int | None) -> None:
    """Serve one echo MCP server over this process's stdin/stdout (as stdio servers run)."""
    from mcp.server.stdio import stdio_server

    server, _ = build_mcp_server(tools, name=name, page_size=page_size)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: serve one echo MCP server from a JSON tool list until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m mcp_optimizer.testing.mcp_servers",
        description="Serve an echo MCP server (streamable HTTP at /mcp, SSE at /sse) from a JSON tool list.",
    )
    parser.add_argument("--tools", type=Path, help="JSON file: a list of MCP tool objects (default: no tools)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    parser.add_argument("--name", default="mcp-test-server", help="server name reported to clients")
    parser.add_argument("--page-size", type=int, default=None, help="paginate tools/list with this page size")
    parser.add_argument("--json-response", action="store_true", help="answer with JSON instead of SSE streams")
    parser.add_argument("--legacy", action="store_true",
                        help="refuse the 2026 protocol probe with HTTP 400, as pre-2026 servers do")
    parser.add_argument("--stdio", action="store_true", help="serve over stdin/stdout instead of HTTP")
    args = parser.parse_args(argv)

    try:
        tools = _load_tools(args.tools) if args.tools is not None else []
        app, _ = build_mcp_app(tools, name=args.name, page_size=args.page_size, json_response=args.json_response,
                               legacy=args.legacy)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.stdio:
        anyio.run(lambda: serve_stdio(tools, name=args.name, page_size=args.page_size))
        return 0
    port = args.port if args.port != 0 else closed_port(args.host)
    host = _url_host(args.host)
    print(
        f"Serving {len(tools)} tool(s): streamable HTTP http://{host}:{port}/mcp, SSE http://{host}:{port}/sse",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=port, lifespan="on", log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
