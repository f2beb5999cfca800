"""The MCP endpoint agents talk to: streamable HTTP (and SSE for older clients) under uvicorn.

It runs inside the caller's event loop, so the operator can serve it beside kopf in one
process: :class:`McpEndpoint` starts and stops it, :func:`serve` runs it until told to stop,
and :func:`run_endpoint` is ``mcp-optimizer serve`` over an existing index file.

Routes (paths configurable in :class:`~mcp_optimizer.config.Settings`):

* ``/mcp``: streamable HTTP;
* ``/sse`` and ``/messages/``: the older HTTP+SSE transport;
* ``/healthz``: liveness, without a token.

The SDK's low-level server is used rather than ``MCPServer`` because the tool list is not
static: pinned tools appear and disappear with their workloads, per caller scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Self

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_optimizer import __version__
from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.mcp.auth import BearerAuthMiddleware, TokenTable, load_token_table
from mcp_optimizer.mcp.scope import current_scope
from mcp_optimizer.mcp.tools import INSTRUCTIONS, CallBackend, OptimizerTools

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
SERVER_NAME = "mcp-optimizer"
#: Seconds open streams (SSE, streamable HTTP GET) get to finish before shutdown cancels them.
GRACEFUL_SHUTDOWN_SECONDS = 3
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EndpointError(RuntimeError):
    """The endpoint could not start (address in use, bad configuration)."""


def build_mcp_server(tools: OptimizerTools) -> Server[Any]:
    """The SDK server whose ``tools/list`` and ``tools/call`` read the caller's scope on every message."""

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        # Private and immediately stale: the list depends on the caller's token and on which
        # workloads run right now, so no client (or shared cache) may reuse it.
        return types.ListToolsResult(
            tools=await tools.advertised_tools(current_scope.get()), ttl_ms=0, cache_scope="private"
        )

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        return await tools.run_tool(params.name, params.arguments, current_scope.get())

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        # Synchronous schema lookup for the SDK's Mcp-Param header checks; without it the SDK
        # would run a whole tools/list (index reads) before every tools/call.
        get_tool_input_schema=tools.meta_input_schema,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


def _transport_security(host: str) -> TransportSecuritySettings | None:
    # The SDK's own rule: DNS-rebinding protection when bound to loopback, where a browser
    # on the same machine is the attacker; in a cluster the Service name is the Host.
    if host not in _LOOPBACK_HOSTS:
        return None
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


class _SseEndpoint:
    """ASGI app for the SSE stream: one MCP session per open GET."""

    def __init__(self, server: Server[Any], transport: SseServerTransport) -> None:
        self.server = server
        self.transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.transport.connect_sse(scope, receive, send) as (read_stream, write_stream):
                await self.server.run(read_stream, write_stream, self.server.create_initialization_options())
        except ValueError:
            # connect_sse has already answered a request that failed its security checks.
            logger.debug("SSE connection refused", exc_info=True)


def build_app(settings: Settings, tools: OptimizerTools, tokens: TokenTable | None) -> ASGIApp:
    """The whole ASGI app: MCP over streamable HTTP and SSE behind bearer-token scoping."""
    server = build_mcp_server(tools)
    security = _transport_security(settings.mcp_host)
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    sse = SseServerTransport(settings.messages_path, security_settings=security)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    routes: list[BaseRoute] = [
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route(settings.mcp_path, StreamableHTTPASGIApp(manager)),
        Route(settings.sse_path, _SseEndpoint(server, sse), methods=["GET"]),
        Mount(settings.messages_path, app=sse.handle_post_message),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return BearerAuthMiddleware(app, tokens, public_paths=[HEALTH_PATH])


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process owner (kopf, the CLI) decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise EndpointError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise EndpointError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class McpEndpoint:
    """The MCP endpoint over one index, started and stopped within the running event loop.

    ``async with McpEndpoint(settings, search) as endpoint:`` serves until the block ends;
    ``endpoint.url`` is the streamable HTTP URL (with the real port when ``settings.mcp_port`` is 0).
    """

    def __init__(
        self,
        settings: Settings,
        search: ToolSearch,
        *,
        call_backend: CallBackend | None = None,
        tokens: TokenTable | None = None,
    ) -> None:
        """``tokens`` overrides the tokens configured in ``settings`` (for tests)."""
        self.settings = settings
        self.tools = OptimizerTools(search, settings, call_backend=call_backend)
        self.tokens = tokens if tokens is not None else load_token_table(settings)
        self.app = build_app(settings, self.tools, self.tokens)
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``settings.mcp_port`` is 0)."""
        if self._port is None:
            raise RuntimeError("the endpoint is not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = self.settings.mcp_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The streamable HTTP URL."""
        return self.base_url + self.settings.mcp_path

    @property
    def sse_url(self) -> str:
        return self.base_url + self.settings.sse_path

    async def start(self) -> None:
        """Listen and return once requests are served; raises :class:`EndpointError`."""
        if self._task is not None:
            raise RuntimeError("the endpoint is already started")
        self._socket = _bind(self.settings.mcp_host, self.settings.mcp_port)
        self._port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            # The process's logging belongs to its owner: uvicorn must not reconfigure it.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        self._uvicorn = server = _EmbeddedUvicorn(config)
        self._task = asyncio.create_task(self._serve(server, self._socket), name="mcp-endpoint")
        while not server.started:
            if self._task.done():
                await self._task  # raises the startup failure
                raise EndpointError("the MCP endpoint stopped while starting")
            await asyncio.sleep(0.01)
        logger.info("MCP endpoint listening on %s (SSE: %s)", self.url, self.sse_url)

    @staticmethod
    async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits the process when the app's startup fails; here that would take the
            # operator down with it, so it becomes an ordinary error.
            raise EndpointError("the MCP endpoint failed to start; see the log") from exc

    async def stop(self) -> None:
        """Stop accepting, give open requests a moment, then close everything. Idempotent."""
        task, server = self._task, self._uvicorn
        if task is None or server is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), GRACEFUL_SHUTDOWN_SECONDS + 5)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except EndpointError:
            pass
        finally:
            self._task = None
            if self._socket is not None:
                self._socket.close()
            logger.info("MCP endpoint stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve(
    settings: Settings,
    search: ToolSearch,
    *,
    call_backend: CallBackend | None = None,
    ready: Callable[[McpEndpoint], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the MCP endpoint until ``stop`` is set or the calling task is cancelled.

    ``ready`` is called once requests are served. Shutdown is clean either way: open
    sessions are closed and the port is released before this returns (or re-raises the
    cancellation).
    """
    async with McpEndpoint(settings, search, call_backend=call_backend) as endpoint:
        if ready is not None:
            ready(endpoint)
        await (stop or asyncio.Event()).wait()


async def run_endpoint(settings: Settings, *, ready: Callable[[McpEndpoint], object] | None = None) -> None:
    """``mcp-optimizer serve``: the endpoint alone over an existing index file, until SIGINT/SIGTERM.

    ``ready`` is called with the running endpoint (e.g. to print ``endpoint.url``).

    Raises :class:`EndpointError` when the index file is missing or the port cannot be bound,
    :class:`~mcp_optimizer.mcp.auth.AuthConfigError` for a bad tokens document and
    :class:`~mcp_optimizer.embeddings.EmbeddingError` when the model cannot be loaded.
    """
    from mcp_optimizer.embeddings import configured_embedder
    from mcp_optimizer.ingest import Indexer

    if not settings.db_path.is_file():
        raise EndpointError(
            f"no index at {settings.db_path}: create one with `mcp-optimizer catalog load` or "
            "`mcp-optimizer workload apply` first"
        )
    # Handlers first: a SIGTERM while the model loads then means "stop once started", which
    # exits cleanly instead of killing the process halfway through opening the index.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        embedder = configured_embedder(settings)  # None in keyword-only mode: no model at all
        if embedder is not None:
            # Load the model now so a bad model path fails at start, not at the first find_tool.
            await asyncio.to_thread(embedder.load)
        # Opening migrates the schema and, if the index was made with another model, re-embeds
        # its texts once (the endpoint must not compare vectors of two models).
        indexer = await Indexer.open(settings, embedder)
        try:
            if not stop.is_set():
                search = ToolSearch(indexer.engine, embedder, min_similarity=settings.min_similarity)
                await serve(settings, search, ready=ready, stop=stop)
        finally:
            await indexer.close()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
