"""One-shot MCP client calls from the operator to workload MCP servers.

Every public coroutine here opens a fresh connection, performs one logical
operation (list all tools, or call one tool) and closes the connection again.
The operator reconciles many independent workloads, so a broken, slow or
malicious MCP server must only ever cost it a bounded amount of time and a
single, well-defined exception type: :class:`McpClientError`. The only other
thing that can escape is the caller's own cancellation, which must propagate
for the operator's task management (kopf, asyncio timeouts) to keep working.

Everything a server sends is bounded while it is read (:mod:`mcp_optimizer.mcp.limits`): the
HTTP transport counts every response body as it streams in and stops the operation at the bound,
so an endless or 50 MB answer is never buffered; answers must not be compressed (a compressed
size says nothing about the decoded one). Every TCP connection goes through the destination
rules (:mod:`mcp_optimizer.mcp.destinations`), which resolve the name once, check each address
and connect to a checked one. Credentials in a URL become HTTP Basic auth and are never part of
a message (:mod:`mcp_optimizer.redaction`).

Built on the official MCP Python SDK 2.x (`mcp.Client` plus its streamable
HTTP and SSE transports). Protocol negotiation defaults to the SDK's ``"auto"``
mode: a ``server/discover`` probe for 2026-era servers, falling back to the
classic ``initialize`` handshake for everything older. Pre-2026 servers answer
that probe with HTTP 400, which is the expected answer, not a failure: the
client remembers which endpoints speak only ``initialize`` (:class:`_EraMemo`)
and goes straight to the handshake with them from then on.

Which transport is spoken to a server is decided here, once, for ``tools/list``
and ``tools/call`` alike (:func:`wire_transport`): a ``stdio`` server is only
reachable through the HTTP bridge that runs it (ToolHive's proxy, mcp-proxy),
so its endpoint is spoken to over that bridge's HTTP transport.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import re
import ssl
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import httpcore2
import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from mcp_optimizer.config import Settings
from mcp_optimizer.errors import McpOptimizerError
from mcp_optimizer.mcp.destinations import DestinationPolicy, DestinationRefused
from mcp_optimizer.mcp.limits import LARGE_LIST_BYTES, ClientLimits, LimitExceeded, clip_tool
from mcp_optimizer.redaction import redact_url, redact_urls, split_userinfo

__all__ = [
    "SUPPORTED_TRANSPORTS",
    "TRANSPORTS",
    "ClientPolicy",
    "ErrorReason",
    "McpClientError",
    "ProtocolMode",
    "call_tool",
    "list_tools",
    "wire_transport",
]

logger = logging.getLogger(__name__)

SUPPORTED_TRANSPORTS: Final[tuple[str, ...]] = ("streamable-http", "sse")
"""Transports the operator speaks over the network."""

TRANSPORTS: Final[tuple[str, ...]] = (*SUPPORTED_TRANSPORTS, "stdio")
"""Transports a server may declare (the MCPServer CRD's enum, ToolHive's registry)."""

ProtocolMode = Literal["auto", "legacy"]
"""``"auto"``: probe ``server/discover`` and fall back to ``initialize`` (SDK default).
``"legacy"``: go straight to the ``initialize`` handshake (one round trip less
against pre-2026 servers, but cannot talk to modern-only servers)."""

ErrorReason = Literal["config", "connect", "timeout", "http", "protocol", "limit", "destination"]
"""Coarse failure category carried by :class:`McpClientError`, for status reporting. ``limit``: the
server sent more than a bound allows; ``destination``: the destination rules refused the URL."""

_MAX_TOOL_PAGES: Final = 1000
"""Upper bound on ``tools/list`` pages: a server paginating forever is a protocol violation."""

_MAX_CAUSE_CHARS: Final = 400
"""Error causes are truncated so one bad server cannot flood logs or CR status fields."""

_PYDANTIC_URL_RE: Final = re.compile(r"For further information visit \S+")
"""Boilerplate pydantic appends to every validation error; it only wastes the message budget."""

_ERA_MEMO_SIZE: Final = 10_000
"""Endpoints remembered as handshake-only; a few hundred bytes each, least recently used go first."""

_T = TypeVar("_T")


class McpClientError(McpOptimizerError):
    """Any failure talking to an MCP server; the message is a single line naming the endpoint.

    Attributes:
        endpoint: The MCP endpoint URL that was contacted.
        transport: The transport that was requested.
        reason: Coarse category of the failure (see :data:`ErrorReason`).
    """

    # Keyword defaults keep the exception copyable/picklable (both rebuild it from ``args`` only).
    def __init__(
        self, message: str, *, endpoint: str = "", transport: str = "", reason: ErrorReason = "protocol"
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.transport = transport
        self.reason: ErrorReason = reason


@dataclass(frozen=True)
class ClientPolicy:
    """What every operation of this client obeys: the bounds and the destination rules.

    The defaults are safe: default bounds, and no allow-list (so loopback is refused).
    """

    limits: ClientLimits = field(default_factory=ClientLimits)
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)

    @classmethod
    def from_settings(cls, settings: Settings, *, apiserver_url: str | None = None) -> ClientPolicy:
        """The policy of this process (``apiserver_url``: where its own Kubernetes client goes)."""
        return cls(
            limits=ClientLimits(
                page_bytes=settings.max_page_bytes,
                list_bytes=settings.max_list_bytes,
                tools=settings.max_tools,
                description_chars=settings.max_description_chars,
                schema_bytes=settings.max_schema_bytes,
                call_result_bytes=settings.max_call_result_bytes,
                concurrent_large_lists=settings.max_concurrent_large_lists,
            ),
            destinations=DestinationPolicy.from_environment(settings.allowed_destinations, apiserver_url=apiserver_url),
        )


DEFAULT_POLICY: Final = ClientPolicy()


class _ProtocolViolation(Exception):
    """Raised internally when the server's answers are well-formed but make no sense."""


class _HttpTrace:
    """Remembers the status of the latest POST so MCP errors can name the HTTP failure behind them.

    The streamable HTTP transport turns HTTP 4xx/5xx answers into synthetic
    JSON-RPC errors (e.g. 404 becomes ``-32601 Not Found``), which would read
    as a protocol problem; the real HTTP status is far more useful to an operator.
    """

    def __init__(self) -> None:
        self.last_post_status: int | None = None
        self.last_post_reason: str = ""
        #: Status of the connection's first POST: in ``auto`` mode, the ``server/discover`` probe.
        self.first_post_status: int | None = None
        #: True when the endpoint was known to be handshake-only, so no probe was sent.
        self.probe_skipped = False

    async def on_response(self, response: httpx2.Response) -> None:
        """httpx2 response hook (runs once headers are in, before the body is read)."""
        if response.request.method == "POST":
            if self.first_post_status is None:
                self.first_post_status = response.status_code
            self.last_post_status = response.status_code
            self.last_post_reason = response.reason_phrase

    def http_failure(self) -> str | None:
        """``"HTTP 404 Not Found"`` if the latest POST failed, else None."""
        if self.last_post_status is None or self.last_post_status < 400:
            return None
        return f"HTTP {self.last_post_status} {self.last_post_reason}".strip()


class _EraMemo:
    """Endpoints known to speak only the pre-2026 ``initialize`` handshake (bounded LRU).

    In ``auto`` mode every connection first sends the 2026 ``server/discover`` probe, which
    older servers refuse (streamable HTTP servers with HTTP 400): one wasted round trip per
    operation and a "400 Bad Request" in every HTTP log. Remembering the answer per endpoint
    sends later connections straight to the handshake; any failure forgets the endpoint, so a
    server upgraded to the 2026 protocol is probed again.
    """

    def __init__(self, size: int = _ERA_MEMO_SIZE) -> None:
        self._legacy: OrderedDict[Hashable, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def is_legacy(self, key: Hashable) -> bool:
        with self._lock:
            if key not in self._legacy:
                return False
            self._legacy.move_to_end(key)
            return True

    def remember(self, key: Hashable, *, legacy: bool) -> None:
        with self._lock:
            if not legacy:
                self._legacy.pop(key, None)
                return
            self._legacy[key] = None
            self._legacy.move_to_end(key)
            while len(self._legacy) > self._size:
                self._legacy.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._legacy.pop(key, None)


_ERA_MEMO = _EraMemo()


@dataclass(frozen=True)
class _Budget:
    """Bytes one operation may receive: in any one response, and in all responses together."""

    per_response: int
    total: int
    #: What the bounds are, for messages: ("one tools/list page", "MCP_OPTIMIZER_MAX_PAGE_BYTES").
    response_bound: tuple[str, str]
    total_bound: tuple[str, str]
    #: Turns for large answers (listings only): a semaphore per event loop, sized so.
    large_turns: int | None = None


#: Process-wide turns for large listings: one semaphore per event loop (tests run several loops)
#: and number of turns (a process normally has one policy).
_LARGE_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _large_turns(size: int) -> asyncio.Semaphore:
    by_size = _LARGE_TURNS.setdefault(asyncio.get_running_loop(), {})
    if size not in by_size:
        by_size[size] = asyncio.Semaphore(size)
    return by_size[size]


class _Exchange:
    """One operation's shared state: the HTTP trace, bytes received and the first bound it broke."""

    def __init__(self, budget: _Budget, policy: ClientPolicy, namespace: str | None) -> None:
        self.budget = budget
        self.destinations = policy.destinations
        self.namespace = namespace
        self.trace = _HttpTrace()
        self.received = 0
        self.violation: LimitExceeded | DestinationRefused | None = None
        #: The operation's deadline scope: a broken bound ends the whole operation at once,
        #: whichever SDK task met it (some of them log and swallow errors).
        self.scope: anyio.CancelScope | None = None
        #: The turn this operation holds for a large answer, released when it ends.
        self.turn: asyncio.Semaphore | None = None

    async def take_turn_if_large(self) -> None:
        """Wait for a turn once the answer is large (reading pauses meanwhile: backpressure)."""
        size = self.budget.large_turns
        if size is None or self.turn is not None or self.received < LARGE_LIST_BYTES:
            return
        turns = _large_turns(size)
        await turns.acquire()
        self.turn = turns

    def release_turn(self) -> None:
        if self.turn is not None:
            self.turn.release()
            self.turn = None

    def fail(self, exc: LimitExceeded | DestinationRefused) -> None:
        if self.violation is None:
            self.violation = exc
        if self.scope is not None:
            self.scope.cancel()

    def count(self, received_in_response: int, chunk: int, limit: int, what: tuple[str, str]) -> None:
        self.received += chunk
        if received_in_response > limit:
            self.fail(LimitExceeded(
                f"the server sent more than {limit:,} bytes in one response, the bound of {what[0]} ({what[1]})"
            ))
        elif self.received > self.budget.total:
            bound, setting = self.budget.total_bound
            self.fail(LimitExceeded(
                f"the server sent more than {self.budget.total:,} bytes in all, the bound of {bound} ({setting})"
            ))
        if self.violation is not None:
            raise self.violation


class _CountingStream(httpx2.AsyncByteStream):
    """A response body that counts its bytes as they arrive and stops at the bound."""

    def __init__(self, inner: httpx2.AsyncByteStream, exchange: _Exchange, limit: int, what: tuple[str, str]) -> None:
        self._inner = inner
        self._exchange = exchange
        self._limit = limit
        self._what = what
        self._received = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._received += len(chunk)
            self._exchange.count(self._received, len(chunk), self._limit, self._what)
            await self._exchange.take_turn_if_large()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _GuardedBackend(httpcore2.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the destination rules admit (DNS rebinding safe)."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await self._exchange.destinations.resolve(host, port, self._exchange.namespace)
        except DestinationRefused as exc:
            self._exchange.fail(exc)
            raise
        except OSError as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from exc
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not MCP destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx's own transport over :class:`_GuardedBackend`, with every response body counted.

    No proxy from the environment: a proxy would make the connection (and the destination
    check) on the operator's behalf, out of the rules' sight.
    """

    def __init__(self, exchange: _Exchange) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        self._exchange = exchange
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(exchange),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        exchange = self._exchange
        budget = exchange.budget
        # A GET is an event stream that carries every message of the session (SSE transport)
        # or the server's own messages (streamable HTTP): only the total bounds it.
        if request.method == "GET":
            limit, what = budget.total, budget.total_bound
        else:
            limit, what = budget.per_response, budget.response_bound
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        declared = response.headers.get("content-length", "")
        problem: LimitExceeded | None = None
        if encoding not in ("", "identity"):
            problem = LimitExceeded(
                f"the server compressed its answer ({encoding}) although it was asked not to; a compressed "
                "answer is refused because its size is not known before it is decoded"
            )
        elif declared.isdigit() and int(declared) > limit:
            problem = LimitExceeded(
                f"the server announced {int(declared):,} bytes in one response, more than the bound of "
                f"{what[0]}, {limit:,} bytes ({what[1]})"
            )
        if problem is not None:
            await response.aclose()
            exchange.fail(problem)
            raise problem
        response.stream = _CountingStream(response.stream, exchange, limit, what)  # type: ignore[arg-type]
        return response


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One shared client SSL context.

    httpx2 builds a fresh one (loading the CA bundle) for every client, which
    costs 15-40 ms; as every operation here creates a client, reuse it.
    """
    return httpx2.create_ssl_context()


def _new_http_client(
    exchange: _Exchange,
    headers: Mapping[str, str] | None,
    timeout: httpx2.Timeout | None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    kwargs: dict[str, Any] = {
        # Uncompressed answers only: the bounds count what is decoded.
        "headers": {**(dict(headers) if headers else {}), "accept-encoding": "identity"},
        "transport": _GuardedTransport(exchange),
        "event_hooks": {"response": [exchange.trace.on_response]},
    }
    if timeout is not None:
        kwargs["timeout"] = timeout
    if auth is not None:
        kwargs["auth"] = auth
    return httpx2.AsyncClient(**kwargs)


async def _open_client(
    stack: AsyncExitStack,
    endpoint: str,
    transport: str,
    timeout: float,
    headers: Mapping[str, str] | None,
    mode: ProtocolMode,
    exchange: _Exchange,
) -> Client:
    """Connect and negotiate; everything entered is unwound by ``stack``."""
    # HTTP-level timeouts are only a backstop: the caller's overall deadline is authoritative.
    http_timeout = httpx2.Timeout(timeout)
    # Credentials in the URL travel as Basic auth; the SDK and httpx never see them in a URL.
    url, credentials = split_userinfo(endpoint)
    auth = httpx2.BasicAuth(*credentials) if credentials is not None else None
    if transport == "streamable-http":
        http_client = await stack.enter_async_context(_new_http_client(exchange, headers, http_timeout, auth))
        mcp_transport = streamable_http_client(
            url, http_client=http_client, max_sse_event_size=exchange.budget.per_response
        )
    else:

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return _new_http_client(exchange, headers, timeout, auth)

        # The SDK's SSE transport bounds each event at its own 1 MiB (not configurable).
        mcp_transport = sse_client(
            url,
            headers=dict(headers) if headers else None,
            timeout=timeout,
            sse_read_timeout=timeout,
            httpx_client_factory=factory,
            auth=auth,
        )
    # cache=None: every call must see the server's current tool list.
    client = Client(mcp_transport, mode=mode, cache=None)
    return await stack.enter_async_context(client)


def wire_transport(transport: str, endpoint: str) -> str:
    """The transport spoken to ``endpoint`` for a server that declares ``transport``.

    ``streamable-http`` and ``sse`` are spoken as declared. A ``stdio`` server cannot be
    reached over the network itself: it runs behind an HTTP bridge (ToolHive's proxy runner,
    mcp-proxy, supergateway), and the endpoint is that bridge's. Bridges serve SSE under a path
    ending in ``/sse`` and streamable HTTP elsewhere (``/mcp``), so the path decides. Anything
    else is returned unchanged (and refused by the caller).
    """
    if transport != "stdio":
        return transport
    path = urlsplit(endpoint).path if isinstance(endpoint, str) else ""
    return "sse" if path.rstrip("/").endswith("/sse") else "streamable-http"


def _validate_request(
    endpoint: str, transport: str, timeout: float, policy: ClientPolicy, namespace: str | None
) -> None:
    """Reject calls that cannot possibly work (or may not be made), before touching the network."""
    shown = redact_url(endpoint) if isinstance(endpoint, str) else repr(endpoint)

    def fail(cause: str) -> McpClientError:
        return McpClientError(
            f"cannot contact MCP server at {shown} ({transport}): {redact_urls(cause)}",
            endpoint=shown,
            transport=transport,
            reason="config",
        )

    if transport not in SUPPORTED_TRANSPORTS:
        raise fail(f"unsupported transport {transport!r}; expected one of {', '.join(TRANSPORTS)}")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail("the endpoint must be an absolute http:// or https:// URL")
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise fail(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        # The name rules need no DNS; the address rules run at every connect.
        policy.destinations.check_name(parts.hostname, namespace)
    except DestinationRefused as exc:
        raise McpClientError(
            f"cannot contact MCP server at {shown} ({transport}): {exc}",
            endpoint=shown,
            transport=transport,
            reason="destination",
        ) from None


def _leaves(exc: BaseException) -> list[BaseException]:
    """Flatten (nested) exception groups, as raised by anyio task groups, into their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            leaves.extend(_leaves(inner))
        return leaves
    return [exc]


def _is_refused(exc: BaseException) -> bool:
    """Whether a connect failure was an outright refusal (nothing listening)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ECONNREFUSED:
            return True
        if "refused" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _rank(exc: BaseException) -> int:
    """Lower is more informative; used to pick one cause out of an exception group."""
    if isinstance(exc, LimitExceeded | DestinationRefused):
        return -1
    if isinstance(exc, httpx2.HTTPStatusError):
        return 0
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | ConnectionError):
        return 1
    if isinstance(exc, httpx2.TimeoutException):
        return 2
    if isinstance(exc, MCPError | _ProtocolViolation | httpx2.SSEError):
        return 3
    if isinstance(exc, httpx2.TransportError):
        return 4
    if isinstance(exc, ValidationError):
        return 5
    return 6


def _one_line(text: str) -> str:
    text = redact_urls(_PYDANTIC_URL_RE.sub("", text))
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[: _MAX_CAUSE_CHARS - 3] + "..."
    return text


def _describe(exc: BaseException, trace: _HttpTrace) -> tuple[ErrorReason, str]:
    """Map one (leaf) exception onto a failure category and a human-readable cause."""
    http_failure = trace.http_failure()
    if isinstance(exc, LimitExceeded):
        return "limit", str(exc)
    if isinstance(exc, DestinationRefused):
        return "destination", str(exc)
    described = _describe_transport(exc) or _describe_answer(exc, http_failure)
    if described is not None:
        return described
    if http_failure is not None:
        return "http", f"{http_failure} ({type(exc).__name__}: {exc})"
    return "protocol", f"{type(exc).__name__}: {exc}"


def _describe_transport(exc: BaseException) -> tuple[ErrorReason, str] | None:
    """What went wrong on the way: HTTP status, connection, timeout, the event stream."""
    if isinstance(exc, httpx2.HTTPStatusError):
        response = exc.response
        return "http", f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if isinstance(exc, httpx2.ConnectTimeout):
        return "timeout", "timed out while connecting"
    if isinstance(exc, httpx2.ConnectError | ConnectionError):
        if _is_refused(exc):
            return "connect", "connection refused"
        return "connect", f"cannot connect: {exc or type(exc).__name__}"
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout", f"HTTP {type(exc).__name__}"
    if isinstance(exc, httpx2.SSEError):
        if "byte limit" in str(exc):
            return "limit", f"the server sent an event larger than the MCP SDK's bound for one event: {exc}"
        return "protocol", f"invalid event stream: {exc}"
    if isinstance(exc, httpx2.RemoteProtocolError):
        return "protocol", f"malformed HTTP response or connection dropped: {exc or type(exc).__name__}"
    if isinstance(exc, httpx2.TransportError):
        return "connect", f"network error: {type(exc).__name__}: {exc}"
    return None


def _describe_answer(exc: BaseException, http_failure: str | None) -> tuple[ErrorReason, str] | None:
    """What was wrong with what the server said: an MCP error, a protocol violation, a response
    that does not validate."""
    if isinstance(exc, MCPError):
        cause = f"MCP error {exc.code}: {exc.message}"
        if http_failure is not None:
            # The transport synthesised this error from an HTTP failure (or the server sent it with one).
            return "http", f"{http_failure} ({cause})"
        return "protocol", cause
    if isinstance(exc, _ProtocolViolation):
        return "protocol", str(exc)
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        detail = exc.title
        if errors:
            location = ".".join(str(part) for part in errors[0]["loc"])
            detail = f"{location}: {errors[0]['msg']}" if location else errors[0]["msg"]
        return "protocol", f"invalid response from server ({len(errors)} validation error(s); first: {detail})"
    return None


def _to_client_error(
    exc: BaseException, *, operation: str, endpoint: str, transport: str, trace: _HttpTrace
) -> McpClientError:
    leaves: list[BaseException] = [leaf for leaf in _leaves(exc) if isinstance(leaf, Exception)] or [exc]
    best = min(leaves, key=_rank)
    reason, cause = _describe(best, trace)
    return McpClientError(
        f"MCP {operation} failed for {endpoint} ({transport}): {_one_line(cause)}",
        endpoint=endpoint,
        transport=transport,
        reason=reason,
    )


async def _run_bounded(
    operation: str,
    endpoint: str,
    transport: str,
    timeout: float,
    headers: Mapping[str, str] | None,
    mode: ProtocolMode,
    action: Callable[[Client], Awaitable[_T]],
    *,
    budget: _Budget,
    policy: ClientPolicy,
    namespace: str | None,
) -> _T:
    """Connect, run ``action`` and disconnect, all within ``timeout`` seconds and ``budget`` bytes.

    Every failure becomes :class:`McpClientError`; only the caller's own
    cancellation is re-raised untouched. ``transport`` is what the server declares; what is
    spoken is :func:`wire_transport`.
    """
    transport = wire_transport(transport, endpoint)
    _validate_request(endpoint, transport, timeout, policy, namespace)
    exchange = _Exchange(budget, policy, namespace)
    trace = exchange.trace
    shown = redact_url(endpoint)
    results: list[_T] = []
    scope = anyio.CancelScope()
    era_key = (endpoint, transport)
    if mode == "auto" and _ERA_MEMO.is_legacy(era_key):
        mode = "legacy"
        trace.probe_skipped = True
    try:
        # One deadline for connect + negotiate + action + teardown: HTTP timeouts alone
        # would not bound a server that trickles bytes or never answers the handshake.
        with anyio.move_on_after(timeout) as scope:
            exchange.scope = scope
            try:
                async with AsyncExitStack() as stack:
                    client = await _open_client(stack, endpoint, transport, timeout, headers, mode, exchange)
                    legacy = client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
                    if legacy and not trace.probe_skipped:
                        logger.debug(
                            "%s speaks MCP %s: it answered the 2026 server/discover probe with HTTP %s, as "
                            "pre-2026 servers do, and was connected with initialize; later connections skip "
                            "the probe", shown, client.protocol_version, trace.first_post_status,
                        )
                    _ERA_MEMO.remember(era_key, legacy=legacy)
                    results.append(await action(client))
            finally:
                exchange.release_turn()
    except BaseException as exc:
        if not results:
            # A server that changed (an upgrade to a 2026-era server) is probed afresh next time.
            _ERA_MEMO.forget(era_key)
        leaves = _leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt | SystemExit) for leaf in leaves):
            raise
        cancelled = anyio.get_cancelled_exc_class()
        if any(isinstance(leaf, cancelled) for leaf in leaves) and _caller_is_cancelling():
            # anyio has already stripped our own deadline's cancellation out of whatever escaped
            # the scope, so this one is the caller's and must propagate (kopf, asyncio.timeout, ...).
            raise
        if results:
            # The answer is in hand; a failure while hanging up must not throw it away.
            logger.debug("Ignoring error while closing MCP connection to %s: %r", shown, exc)
            return results[0]
        if exchange.violation is not None:
            raise _violation_error(operation, shown, transport, exchange.violation) from None
        if scope.cancel_called:
            # Whatever surfaced while our own deadline tore the connection down is just noise.
            raise _timeout_error(operation, shown, transport, timeout, trace) from exc
        raise _to_client_error(exc, operation=operation, endpoint=shown, transport=transport, trace=trace) from exc
    if results:
        return results[0]
    if exchange.violation is not None:
        raise _violation_error(operation, shown, transport, exchange.violation)
    raise _timeout_error(operation, shown, transport, timeout, trace)


def _violation_error(
    operation: str, endpoint: str, transport: str, violation: LimitExceeded | DestinationRefused
) -> McpClientError:
    reason: ErrorReason = "limit" if isinstance(violation, LimitExceeded) else "destination"
    return McpClientError(
        f"MCP {operation} failed for {endpoint} ({transport}): {_one_line(str(violation))}",
        endpoint=endpoint,
        transport=transport,
        reason=reason,
    )


def _caller_is_cancelling() -> bool:
    """Whether cancellation of the current task has really been requested.

    A stray ``CancelledError`` (e.g. from awaiting a future some library cancelled) is
    not a cancellation of the caller and must not make the caller think it was cancelled.
    Only asyncio can tell; on other backends the exception is trusted.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return True
    return task is None or task.cancelling() > 0


def _timeout_error(operation: str, endpoint: str, transport: str, timeout: float, trace: _HttpTrace) -> McpClientError:
    detail = f"no complete answer within {timeout:g}s"
    if (http_failure := trace.http_failure()) is not None:
        detail += f" (last HTTP error: {http_failure})"
    return McpClientError(
        f"MCP {operation} failed for {endpoint} ({transport}): timed out, {detail}",
        endpoint=endpoint,
        transport=transport,
        reason="timeout",
    )


def _tool_to_dict(tool: types.Tool) -> dict[str, Any]:
    """Plain, JSON-serialisable MCP tool object (wire field names)."""
    wire = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
    out: dict[str, Any] = {
        "name": wire["name"],
        "description": wire.get("description") or "",
        "inputSchema": wire["inputSchema"],
    }
    # ``execution`` says whether the tool can be called without MCP tasks (taskSupport).
    for key in ("title", "annotations", "outputSchema", "execution"):
        if key in wire:
            out[key] = wire[key]
    return out


def _call_result_to_dict(result: types.CallToolResult) -> dict[str, Any]:
    """Plain, JSON-serialisable ``CallToolResult`` (wire field names)."""
    out: dict[str, Any] = {
        "content": [block.model_dump(by_alias=True, mode="json", exclude_none=True) for block in result.content],
        "isError": bool(result.is_error),
    }
    if result.structured_content is not None:
        out["structuredContent"] = result.structured_content
    return out


async def _list_all_tools(client: Client, limits: ClientLimits) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    seen_cursors: set[str] = set()
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        if len(tools) + len(page.tools) > limits.tools:
            raise LimitExceeded(
                f"the server offers more than {limits.tools:,} tools, the bound of tools per server "
                "(MCP_OPTIMIZER_MAX_TOOLS)"
            )
        # Clipped page by page, so only the bounded form of earlier pages stays in memory.
        tools.extend(clip_tool(_tool_to_dict(tool), limits) for tool in page.tools)
        cursor = page.next_cursor
        del page
        if not cursor:
            return tools
        if cursor in seen_cursors:
            raise _ProtocolViolation(f"server repeated tools/list cursor {cursor!r} (pagination loop)")
        seen_cursors.add(cursor)
    raise _ProtocolViolation(f"tools/list did not finish within {_MAX_TOOL_PAGES} pages")


async def list_tools(
    endpoint: str,
    transport: str = "streamable-http",
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    *,
    mode: ProtocolMode = "auto",
    policy: ClientPolicy = DEFAULT_POLICY,
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    """List every tool an MCP server offers, following ``nextCursor`` pagination.

    Args:
        endpoint: MCP endpoint URL (e.g. ``http://svc.ns:8080/mcp``, or the ``/sse`` URL for SSE).
        transport: ``"streamable-http"``, ``"sse"``, or ``"stdio"`` for a server behind an HTTP
            bridge (see :func:`wire_transport`). Credentials in ``endpoint`` (``user:password@``)
            are sent as HTTP Basic auth.
        timeout: Deadline in seconds for the whole operation (connect, handshake, all pages, close).
        headers: Extra HTTP headers sent with every request (e.g. ``Authorization``).
        mode: Protocol negotiation, see :data:`ProtocolMode`.
        policy: Bounds and destination rules (default: the safe defaults, loopback refused).
        namespace: The namespace of the MCPServer the endpoint belongs to, for the rule that
            keeps it within its namespace (None: no namespace rule).

    Returns:
        Tools as plain dicts with ``name``, ``description`` (``""`` when absent) and
        ``inputSchema``, plus ``title``, ``annotations``, ``outputSchema`` and ``execution``
        when the server provides them, clipped to ``policy.limits`` (see
        :func:`~mcp_optimizer.mcp.limits.clip_tool`). Order is the server's.

    Raises:
        McpClientError: For any failure, including timeouts, broken bounds (``reason="limit"``),
            refused destinations (``reason="destination"``) and invalid arguments.
    """
    limits = policy.limits
    budget = _Budget(
        per_response=limits.page_bytes,
        total=limits.list_bytes,
        response_bound=("one tools/list page", "MCP_OPTIMIZER_MAX_PAGE_BYTES"),
        total_bound=("one whole tools/list", "MCP_OPTIMIZER_MAX_LIST_BYTES"),
        large_turns=limits.concurrent_large_lists,
    )
    return await _run_bounded(
        "tools/list",
        endpoint,
        transport,
        timeout,
        headers,
        mode,
        functools.partial(_list_all_tools, limits=limits),
        budget=budget,
        policy=policy,
        namespace=namespace,
    )


async def call_tool(
    endpoint: str,
    transport: str,
    tool_name: str,
    arguments: Mapping[str, Any] | None,
    timeout: float,
    headers: dict[str, str] | None = None,
    *,
    mode: ProtocolMode = "auto",
    policy: ClientPolicy = DEFAULT_POLICY,
    namespace: str | None = None,
) -> dict[str, Any]:
    """Call one tool on an MCP server and return its result.

    A tool that fails but answers (``isError: true``) is a normal result, not an
    exception; only transport and protocol failures raise.

    Args:
        endpoint: MCP endpoint URL.
        transport: As for :func:`list_tools`.
        tool_name: Name of the tool on that server.
        arguments: Tool arguments (``None`` sends none).
        timeout: Deadline in seconds for the whole operation (connect, handshake, call, close).
        headers: Extra HTTP headers sent with every request.
        mode: Protocol negotiation, see :data:`ProtocolMode`.
        policy: Bounds (a result over ``limits.call_result_bytes`` fails with ``reason="limit"``)
            and destination rules, the same as for :func:`list_tools`.
        namespace: The namespace of the MCPServer, as for :func:`list_tools`.

    Returns:
        ``{"content": [...], "isError": bool}`` plus ``"structuredContent"`` when the
        server returned structured output; content blocks use MCP wire field names.

    Raises:
        McpClientError: For any failure, including timeouts and invalid arguments.
    """
    try:
        args = dict(arguments) if arguments is not None else None
    except (TypeError, ValueError) as exc:
        shown = redact_url(endpoint) if isinstance(endpoint, str) else repr(endpoint)
        raise McpClientError(
            f"cannot call tool {tool_name!r} on {shown} ({transport}): arguments must be a mapping",
            endpoint=shown,
            transport=transport,
            reason="config",
        ) from exc

    async def action(client: Client) -> dict[str, Any]:
        return _call_result_to_dict(await client.call_tool(tool_name, args))

    limits = policy.limits
    budget = _Budget(
        per_response=limits.call_result_bytes,
        # The handshake's answers besides the result; each of them is bounded like the result.
        total=limits.call_result_bytes + limits.page_bytes,
        response_bound=("one call result", "MCP_OPTIMIZER_MAX_CALL_RESULT_BYTES"),
        total_bound=("one call with its handshake", "MCP_OPTIMIZER_MAX_CALL_RESULT_BYTES"),
    )
    return await _run_bounded(
        f"tools/call {tool_name!r}",
        endpoint,
        transport,
        timeout,
        headers,
        mode,
        action,
        budget=budget,
        policy=policy,
        namespace=namespace,
    )
