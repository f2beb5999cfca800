"""The MCP endpoint agents talk to: streamable HTTP (and SSE for older clients) under uvicorn.

It runs inside the caller's event loop, so the operator can serve it beside kopf in one
process: :class:`McpEndpoint` starts and stops it, :func:`serve` runs it until told to stop,
and :func:`run_endpoint` is ``mcp-optimizer serve`` over an existing index file.

Routes (paths configurable in :class:`~mcp_optimizer.config.Settings`):

* ``/mcp``: streamable HTTP;
* ``/sse`` and ``/messages/``: the older HTTP+SSE transport;
* ``/healthz``: liveness, without a token.

Every other request passes the auth middleware (:mod:`.auth`: Kubernetes, static tokens or
none) and every session is counted per caller (:mod:`.sessions`). Where it listens follows the
auth mode (:func:`~mcp_optimizer.config.endpoint_host`): without auth, loopback unless told otherwise.

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
from typing import TYPE_CHECKING, Any, Self

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from mcp_optimizer import __version__
from mcp_optimizer.config import AUTH_KUBERNETES, AUTH_NONE, Settings, endpoint_host
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.errors import McpOptimizerError
from mcp_optimizer.mcp.auth import Authenticator, BearerAuthMiddleware, StaticTokens, TokenTable, build_authenticator
from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.mcp.scope import current_scope
from mcp_optimizer.mcp.sessions import BoundedSessionManager, SessionLimitResponses, SessionLimits, SseEndpoint
from mcp_optimizer.mcp.tools import INSTRUCTIONS, CallBackend, CallFailureListener, OptimizerTools

if TYPE_CHECKING:
    from kubernetes import client

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
SERVER_NAME = "mcp-optimizer"
#: Seconds open requests get to finish before shutdown cancels them. Idle streams (an agent's
#: SSE or streamable HTTP GET stream) never finish by themselves and always cost all of it, so
#: it is short: stopping the operator must take well under the 2 s a rollout can spare.
GRACEFUL_SHUTDOWN_SECONDS = 1
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EndpointError(McpOptimizerError, RuntimeError):
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


def session_limits(settings: Settings) -> SessionLimits:
    return SessionLimits(
        per_identity=settings.sessions_per_identity,
        total=settings.max_sessions,
        idle_timeout=settings.session_idle_timeout,
    )


def build_app(
    settings: Settings, tools: OptimizerTools, authenticator: Authenticator, *, host: str, limits: SessionLimits
) -> ASGIApp:
    """The whole ASGI app: MCP over streamable HTTP and SSE, bounded sessions, behind the auth middleware."""
    server = build_mcp_server(tools)
    security = _transport_security(host)
    manager = BoundedSessionManager(server, limits=limits, security_settings=security)
    sse = SseServerTransport(settings.messages_path, security_settings=security)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    routes: list[BaseRoute] = [
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route(settings.mcp_path, SessionLimitResponses(StreamableHTTPASGIApp(manager))),
        Route(settings.sse_path, SseEndpoint(server, sse, limits), methods=["GET"]),
        Mount(settings.messages_path, app=sse.handle_post_message),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return BearerAuthMiddleware(app, authenticator, public_paths=[HEALTH_PATH])


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
        call_failures: CallFailureListener | None = None,
        policy: ClientPolicy | None = None,
        tokens: TokenTable | None = None,
        authenticator: Authenticator | None = None,
        kube_config: client.Configuration | None = None,
    ) -> None:
        """Auth: ``authenticator`` if given, else static ``tokens`` if given (tests), else what
        ``settings`` choose (:func:`~mcp_optimizer.mcp.auth.build_authenticator`), with
        ``kube_config`` as the cluster Kubernetes auth reviews tokens with. ``call_failures``
        hears of every forwarded call that got no answer (the operator, in ``mcp-optimizer run``);
        ``policy``: bounds and destination rules for forwarded calls (default: from ``settings``)."""
        self.settings = settings
        self.tools = OptimizerTools(
            search, settings, call_backend=call_backend, call_failures=call_failures, policy=policy
        )
        if authenticator is None:
            authenticator = (
                StaticTokens(tokens)
                if tokens is not None
                else build_authenticator(settings, kube_config=kube_config, namespaces=search.workload_namespaces)
            )
        self.authenticator = authenticator
        self.host = endpoint_host(settings, authenticator.mode)
        self.sessions = session_limits(settings)
        self.app = build_app(settings, self.tools, authenticator, host=self.host, limits=self.sessions)
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
        host = self.host
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
        if self.authenticator.mode == AUTH_NONE and self.host not in _LOOPBACK_HOSTS:
            logger.warning(
                "MCP endpoint without auth listens on %s: anyone who reaches it sees and calls every server",
                self.host,
            )
        self._socket = _bind(self.host, self.settings.mcp_port)
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
        logger.info(
            "MCP endpoint listening on %s (SSE: %s), auth %s", self.url, self.sse_url, self.authenticator.mode
        )

    @staticmethod
    async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits the process when the app's startup fails; here that would take the
            # operator down with it, so it becomes an ordinary error.
            raise EndpointError("the MCP endpoint failed to start; see the log") from exc

    async def wait(self) -> None:
        """Return when the endpoint has stopped serving (after :meth:`stop`, or a failure)."""
        task = self._task
        if task is not None:
            await asyncio.wait({task})

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
            await self.authenticator.aclose()
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
    kube_config: client.Configuration | None = None,
    call_failures: CallFailureListener | None = None,
    policy: ClientPolicy | None = None,
    ready: Callable[[McpEndpoint], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the MCP endpoint until ``stop`` is set or the calling task is cancelled.

    ``kube_config``: the cluster, for Kubernetes auth. ``ready`` is called once requests are
    served. Shutdown is clean either way: open sessions are closed and the port is released
    before this returns (or re-raises the cancellation).
    """
    async with McpEndpoint(
        settings, search, call_backend=call_backend, kube_config=kube_config,
        call_failures=call_failures, policy=policy,
    ) as endpoint:
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

    kube_config = None
    if settings.auth_mode == AUTH_KUBERNETES:
        # Only when asked for: on a laptop `serve` needs no cluster (and then runs without auth, on loopback).
        from mcp_optimizer.kubeapi import load_client_config

        try:
            kube_config = load_client_config(None)
        except Exception as exc:
            raise EndpointError(f"auth mode 'kubernetes' needs a cluster, but none is configured: {exc}") from exc
    if settings.db_url is None and not settings.db_path.is_file():
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
                search = ToolSearch(indexer.engine, embedder, min_similarity=settings.min_similarity,
                                    hnsw_ef_search=settings.pg_hnsw_ef_search if settings.pg_hnsw else 0)
                await serve(settings, search, kube_config=kube_config, ready=ready, stop=stop)
        finally:
            await indexer.close()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
