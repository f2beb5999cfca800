"""Bounded MCP sessions: a short idle timeout, a cap per caller identity, a cap in all.

The SDK keeps a streamable HTTP session (a server task, memory streams, the transport: about
41 KiB, measured by ``bench/sessions.py``) until the client deletes it or it has been idle for
its timeout (30 minutes by default), and once ``max_sessions`` are open it refuses every new one with 503, whoever holds
them: one client that opens sessions and walks away locks everybody out (10,000 abandoned
sessions did). SSE sessions last as long as their GET stream, with no cap at all.

:class:`SessionLimits` counts the sessions of both transports per caller identity (the auth
middleware's :class:`~mcp_optimizer.mcp.auth.Caller`):

* a caller holding ``sessions_per_identity`` sessions gets 429 and a message saying so when it
  opens another; nobody else notices;
* with ``max_sessions`` open in all, the identity holding the most sessions loses the one it
  left idle longest (sessions in use are closed only when none at all is idle), so that a new
  caller can always initialize and memory stays bounded by ``max_sessions`` sessions;
* idle streamable HTTP sessions end after ``session_idle_timeout`` (the SDK's own timer).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, AuthorizationContext
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import INTERNAL_ERROR
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

#: The identity of a request that passed no auth middleware (in-process use only).
UNKNOWN_IDENTITY = "unknown"
#: Seconds between two log lines about sessions closed to make room.
_LOG_EVERY = 30.0


class SessionLimitReached(Exception):
    """A caller already holds as many sessions as it may: HTTP 429, for that caller only."""

    def __init__(self, identity: str, limit: int, idle_timeout: float) -> None:
        super().__init__(
            f"Too many open MCP sessions for {identity}: {limit} is the limit per caller. Reuse a session, close "
            f"the ones you no longer need (HTTP DELETE with their Mcp-Session-Id), or wait: idle sessions end after "
            f"{idle_timeout:g} seconds."
        )

    async def respond(self, send: Send) -> None:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": None, "error": {"code": INTERNAL_ERROR, "message": str(self)}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"30"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class _Session:
    identity: str
    #: When the session was last in use (smaller: idle longer); ``inf`` while in use; ``None``
    #: when it cannot be closed from outside yet (its opening request is still being served).
    idle_since: Callable[[], float | None]
    close: Callable[[], None]


class SessionLimits:
    """Open sessions per identity, for both transports (see the module docstring)."""

    def __init__(self, *, per_identity: int, total: int, idle_timeout: float) -> None:
        if per_identity <= 0 or total <= 0:
            raise ValueError("session limits must be positive")
        if not (math.isfinite(idle_timeout) and idle_timeout > 0):
            raise ValueError("the session idle timeout must be a positive number of seconds")
        self.per_identity = per_identity
        self.total = total
        self.idle_timeout = idle_timeout
        self._sessions: dict[Hashable, _Session] = {}
        self._by_identity: dict[str, dict[Hashable, None]] = {}
        #: Sessions closed to make room (the largest holder's).
        self.evicted = 0
        self._logged_evictions = 0
        self._next_log = 0.0

    def count(self, identity: str | None = None) -> int:
        if identity is None:
            return len(self._sessions)
        return len(self._by_identity.get(identity, ()))

    def make_room(self, identity: str) -> None:
        """Raise :class:`SessionLimitReached` if ``identity`` is at its cap; else free a slot if
        the endpoint is full. Synchronous, so that with :meth:`add` right after it is atomic."""
        if self.count(identity) >= self.per_identity:
            raise SessionLimitReached(identity, self.per_identity, self.idle_timeout)
        while len(self._sessions) >= self.total:
            if not self._evict_one():
                # Every session is still opening; they are bounded by the requests in flight.
                logger.warning("MCP sessions: %d open and none can be closed yet", len(self._sessions))
                return

    def add(
        self, identity: str, key: Hashable, *, idle_since: Callable[[], float | None], close: Callable[[], None]
    ) -> None:
        self._sessions[key] = _Session(identity, idle_since, close)
        self._by_identity.setdefault(identity, {})[key] = None

    def release(self, key: Hashable) -> None:
        """Forget a session (it ended, or was evicted). Idempotent."""
        session = self._sessions.pop(key, None)
        if session is None:
            return
        keys = self._by_identity.get(session.identity)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_identity[session.identity]

    def _evict_one(self) -> bool:
        """Close one session: the longest idle one of the identity holding the most; if that
        identity has none idle, of the next largest holder. Only when no session at all is idle
        (every one serving a request or an SSE stream) does the largest holder lose its oldest
        session in use, so that an opening request (the newest) is the last thing ever broken."""
        ranked = sorted(self._by_identity, key=lambda i: len(self._by_identity[i]), reverse=True)
        in_use: tuple[str, Hashable] | None = None
        for identity in ranked:
            idle: list[tuple[float, Hashable]] = []
            for key in self._by_identity[identity]:
                since = self._sessions[key].idle_since()
                if since is None:
                    continue
                if math.isfinite(since):
                    idle.append((since, key))
                elif in_use is None:
                    in_use = (identity, key)  # the largest holder's oldest session in use
            if idle:
                self._evict(identity, min(idle, key=lambda item: item[0])[1])
                return True
        if in_use is not None:
            self._evict(*in_use)
            return True
        return False

    def _evict(self, identity: str, key: Hashable) -> None:
        session = self._sessions[key]
        self.release(key)
        session.close()
        self.evicted += 1
        # Under a flood of new sessions this happens per request: one line per interval, not per session.
        now = time.monotonic()
        if now >= self._next_log:
            logger.warning(
                "MCP sessions: %d open (the limit); closed %d sessions since the last report, now one of %s "
                "(the caller holding the most)",
                self.total,
                self.evicted - self._logged_evictions,
                identity,
            )
            self._logged_evictions = self.evicted
            self._next_log = now + _LOG_EVERY


def identity_of(scope: Scope) -> str:
    """The caller identity the auth middleware put on the request."""
    user = scope.get("user")
    return user.access_token.client_id if isinstance(user, AuthenticatedUser) else UNKNOWN_IDENTITY


def _idle_since(transport: StreamableHTTPServerTransport) -> float | None:
    # The SDK keeps the idle deadline on the transport's idle scope: last activity + timeout,
    # infinite while a request (or the GET stream) is in flight. Created once the session runs.
    scope = transport.idle_scope
    return None if scope is None else scope.deadline


def _close(transport: StreamableHTTPServerTransport) -> None:
    # What the idle timeout does: the session's loop ends and the SDK discards the session.
    if transport.idle_scope is not None:
        transport.idle_scope.cancel()


class BoundedSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager with :class:`SessionLimits` deciding admission.

    The SDK admits a session synchronously under its creation lock (``_admit_session``) and
    discards it in one place (``_discard_session``); these two hooks are all that is overridden.
    """

    def __init__(self, app: Server[Any], *, limits: SessionLimits, **kwargs: Any) -> None:
        # The SDK's own cap would answer 503 to everyone; ours decides before it is reached.
        super().__init__(app, session_idle_timeout=limits.idle_timeout, max_sessions=None, **kwargs)
        self.limits = limits

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        identity = requestor["client_id"] if requestor is not None else UNKNOWN_IDENTITY
        self.limits.make_room(identity)
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self.limits.add(
                identity,
                ("streamable-http", transport.mcp_session_id),
                idle_since=lambda: _idle_since(transport),
                close=lambda: _close(transport),
            )
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        self.limits.release(("streamable-http", session_id))
        await super()._discard_session(session_id, transport)


class SessionLimitResponses:
    """Answers :class:`SessionLimitReached` from the wrapped app with its 429 (raised before any response)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except SessionLimitReached as exc:
            await exc.respond(send)


class SseEndpoint:
    """ASGI app for the SSE stream: one MCP session per open GET, counted in :class:`SessionLimits`."""

    def __init__(self, server: Server[Any], transport: SseServerTransport, limits: SessionLimits) -> None:
        self.server = server
        self.transport = transport
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = identity_of(scope)
        try:
            self.limits.make_room(identity)
        except SessionLimitReached as exc:
            await exc.respond(send)
            return
        key = ("sse", object())
        with anyio.CancelScope() as cancel:
            # An open SSE stream is a session in use: evicted only after idle ones, oldest first.
            self.limits.add(identity, key, idle_since=lambda: math.inf, close=cancel.cancel)
            try:
                async with self.transport.connect_sse(scope, receive, send) as (read_stream, write_stream):
                    await self.server.run(read_stream, write_stream, self.server.create_initialization_options())
            except ValueError:
                # connect_sse has already answered a request that failed its security checks.
                logger.debug("SSE connection refused", exc_info=True)
            finally:
                self.limits.release(key)
