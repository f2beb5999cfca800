"""One-shot MCP client calls from the operator to workload MCP servers.

Every public coroutine here opens a fresh connection, performs one logical
operation (list all tools, or call one tool) and closes the connection again.
The operator reconciles many independent workloads, so a broken, slow or
malicious MCP server must only ever cost it a bounded amount of time and a
single, well-defined exception type: :class:`McpClientError`. The only other
thing that can escape is the caller's own cancellation, which must propagate
for the operator's task management (kopf, asyncio timeouts) to keep working.

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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

__all__ = [
    "SUPPORTED_TRANSPORTS",
    "TRANSPORTS",
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

ErrorReason = Literal["config", "connect", "timeout", "http", "protocol"]
"""Coarse failure category carried by :class:`McpClientError`, for status reporting."""

_MAX_TOOL_PAGES: Final = 1000
"""Upper bound on ``tools/list`` pages: a server paginating forever is a protocol violation."""

_MAX_CAUSE_CHARS: Final = 400
"""Error causes are truncated so one bad server cannot flood logs or CR status fields."""

_PYDANTIC_URL_RE: Final = re.compile(r"For further information visit \S+")
"""Boilerplate pydantic appends to every validation error; it only wastes the message budget."""

_ERA_MEMO_SIZE: Final = 10_000
"""Endpoints remembered as handshake-only; a few hundred bytes each, least recently used go first."""

_T = TypeVar("_T")


class McpClientError(Exception):
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


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One shared client SSL context.

    httpx2 builds a fresh one (loading the CA bundle) for every client, which
    costs 15-40 ms; as every operation here creates a client, reuse it.
    """
    return httpx2.create_ssl_context()


def _new_http_client(
    trace: _HttpTrace,
    headers: Mapping[str, str] | None,
    timeout: httpx2.Timeout | None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    kwargs: dict[str, Any] = {
        "headers": dict(headers) if headers else None,
        "verify": _ssl_context(),
        "event_hooks": {"response": [trace.on_response]},
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
    trace: _HttpTrace,
) -> Client:
    """Connect and negotiate; everything entered is unwound by ``stack``."""
    # HTTP-level timeouts are only a backstop: the caller's overall deadline is authoritative.
    http_timeout = httpx2.Timeout(timeout)
    if transport == "streamable-http":
        http_client = await stack.enter_async_context(_new_http_client(trace, headers, http_timeout))
        mcp_transport = streamable_http_client(endpoint, http_client=http_client)
    else:

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return _new_http_client(trace, headers, timeout, auth)

        mcp_transport = sse_client(
            endpoint,
            headers=dict(headers) if headers else None,
            timeout=timeout,
            sse_read_timeout=timeout,
            httpx_client_factory=factory,
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


def _validate_request(endpoint: str, transport: str, timeout: float) -> None:
    """Reject calls that cannot possibly work, before touching the network."""

    def fail(cause: str) -> McpClientError:
        return McpClientError(
            f"cannot contact MCP server at {endpoint} ({transport}): {cause}",
            endpoint=endpoint,
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
    text = _PYDANTIC_URL_RE.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[: _MAX_CAUSE_CHARS - 3] + "..."
    return text


def _describe(exc: BaseException, trace: _HttpTrace) -> tuple[ErrorReason, str]:
    """Map one (leaf) exception onto a failure category and a human-readable cause."""
    http_failure = trace.http_failure()
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
    if isinstance(exc, MCPError):
        cause = f"MCP error {exc.code}: {exc.message}"
        if http_failure is not None:
            # The transport synthesised this error from an HTTP failure (or the server sent it with one).
            return "http", f"{http_failure} ({cause})"
        return "protocol", cause
    if isinstance(exc, _ProtocolViolation):
        return "protocol", str(exc)
    if isinstance(exc, httpx2.SSEError):
        return "protocol", f"invalid event stream: {exc}"
    if isinstance(exc, httpx2.RemoteProtocolError):
        return "protocol", f"malformed HTTP response or connection dropped: {exc or type(exc).__name__}"
    if isinstance(exc, httpx2.TransportError):
        return "connect", f"network error: {type(exc).__name__}: {exc}"
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        detail = exc.title
        if errors:
            location = ".".join(str(part) for part in errors[0]["loc"])
            detail = f"{location}: {errors[0]['msg']}" if location else errors[0]["msg"]
        return "protocol", f"invalid response from server ({len(errors)} validation error(s); first: {detail})"
    if http_failure is not None:
        return "http", f"{http_failure} ({type(exc).__name__}: {exc})"
    return "protocol", f"{type(exc).__name__}: {exc}"


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
) -> _T:
    """Connect, run ``action`` and disconnect, all within ``timeout`` seconds.

    Every failure becomes :class:`McpClientError`; only the caller's own
    cancellation is re-raised untouched. ``transport`` is what the server declares; what is
    spoken is :func:`wire_transport`.
    """
    transport = wire_transport(transport, endpoint)
    _validate_request(endpoint, transport, timeout)
    trace = _HttpTrace()
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
            async with AsyncExitStack() as stack:
                client = await _open_client(stack, endpoint, transport, timeout, headers, mode, trace)
                legacy = client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
                if legacy and not trace.probe_skipped:
                    logger.debug(
                        "%s speaks MCP %s: it answered the 2026 server/discover probe with HTTP %s, as "
                        "pre-2026 servers do, and was connected with initialize; later connections skip "
                        "the probe", endpoint, client.protocol_version, trace.first_post_status,
                    )
                _ERA_MEMO.remember(era_key, legacy=legacy)
                results.append(await action(client))
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
            logger.debug("Ignoring error while closing MCP connection to %s: %r", endpoint, exc)
            return results[0]
        if scope.cancel_called:
            # Whatever surfaced while our own deadline tore the connection down is just noise.
            raise _timeout_error(operation, endpoint, transport, timeout, trace) from exc
        raise _to_client_error(exc, operation=operation, endpoint=endpoint, transport=transport, trace=trace) from exc
    if results:
        return results[0]
    raise _timeout_error(operation, endpoint, transport, timeout, trace)


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


async def _list_all_tools(client: Client) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    seen_cursors: set[str] = set()
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        tools.extend(_tool_to_dict(tool) for tool in page.tools)
        cursor = page.next_cursor
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
) -> list[dict[str, Any]]:
    """List every tool an MCP server offers, following ``nextCursor`` pagination.

    Args:
        endpoint: MCP endpoint URL (e.g. ``http://svc.ns:8080/mcp``, or the ``/sse`` URL for SSE).
        transport: ``"streamable-http"``, ``"sse"``, or ``"stdio"`` for a server behind an HTTP
            bridge (see :func:`wire_transport`).
        timeout: Deadline in seconds for the whole operation (connect, handshake, all pages, close).
        headers: Extra HTTP headers sent with every request (e.g. ``Authorization``).
        mode: Protocol negotiation, see :data:`ProtocolMode`.

    Returns:
        Tools as plain dicts with ``name``, ``description`` (``""`` when absent) and
        ``inputSchema``, plus ``title``, ``annotations``, ``outputSchema`` and ``execution``
        when the server provides them. Order is the server's.

    Raises:
        McpClientError: For any failure, including timeouts and invalid arguments.
    """
    return await _run_bounded("tools/list", endpoint, transport, timeout, headers, mode, _list_all_tools)


async def call_tool(
    endpoint: str,
    transport: str,
    tool_name: str,
    arguments: Mapping[str, Any] | None,
    timeout: float,
    headers: dict[str, str] | None = None,
    *,
    mode: ProtocolMode = "auto",
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

    Returns:
        ``{"content": [...], "isError": bool}`` plus ``"structuredContent"`` when the
        server returned structured output; content blocks use MCP wire field names.

    Raises:
        McpClientError: For any failure, including timeouts and invalid arguments.
    """
    try:
        args = dict(arguments) if arguments is not None else None
    except (TypeError, ValueError) as exc:
        raise McpClientError(
            f"cannot call tool {tool_name!r} on {endpoint} ({transport}): arguments must be a mapping",
            endpoint=endpoint,
            transport=transport,
            reason="config",
        ) from exc

    async def action(client: Client) -> dict[str, Any]:
        return _call_result_to_dict(await client.call_tool(tool_name, args))

    return await _run_bounded(f"tools/call {tool_name!r}", endpoint, transport, timeout, headers, mode, action)
