"""Who is calling the MCP endpoint, and what they may see: the auth middleware and its modes.

Every HTTP request (except ``/healthz``) passes :class:`BearerAuthMiddleware`, which asks the
configured :class:`Authenticator` for a :class:`Caller`: an identity (sessions are bound to it
and counted per it) and an :class:`AccessScope`. Three modes (``MCP_OPTIMIZER_AUTH_MODE``,
chosen by :func:`~mcp_optimizer.config.resolve_auth_mode` when unset):

* ``kubernetes``: the caller's ServiceAccount token, checked with TokenReview, scoped with
  SubjectAccessReview (:mod:`mcp_optimizer.mcp.kube_auth`); the default of ``mcp-optimizer run``;
* ``tokens``: static bearer tokens from a document (below); the default when one is configured;
* ``none``: everyone sees everything; the default of ``mcp-optimizer serve`` without tokens,
  which then listens on loopback only (:func:`~mcp_optimizer.config.endpoint_host`).

A missing or rejected credential is answered 401 and an API server that cannot be asked 503,
both before the request reaches MCP: nothing is ever served on a credential that was not checked.

The tokens document (a file, typically a mounted Secret, and/or the ``MCP_OPTIMIZER_AUTH_TOKENS``
variable) is YAML or JSON::

    tokens:
      - name: team-a              # shown in logs; never the token itself
        token: "..."              # or token_sha256: "<hex digest of the token>"
        groups: [team-a]          # omitted or "*" = every group
        namespaces: [team-a-ns]   # omitted or "*" = every namespace

A workload without a namespace (local runs) is visible only to tokens whose namespaces
are unrestricted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_optimizer.config import AUTH_KUBERNETES, AUTH_NONE, AUTH_TOKENS, Settings, resolve_auth_mode
from mcp_optimizer.errors import McpOptimizerError
from mcp_optimizer.mcp.scope import UNRESTRICTED, AccessScope, current_scope

if TYPE_CHECKING:
    from kubernetes import client

logger = logging.getLogger(__name__)

_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class AuthConfigError(McpOptimizerError, ValueError):
    """The tokens document is unreadable or invalid; the endpoint refuses to start."""


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    token: str | None = Field(default=None, min_length=1, repr=False)
    token_sha256: str | None = None
    groups: list[str] | None = None
    namespaces: list[str] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> _TokenEntry:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of 'token' and 'token_sha256'")
        if self.token_sha256 is not None and not _HEX_SHA256.match(self.token_sha256):
            raise ValueError("'token_sha256' must be 64 hexadecimal characters")
        return self

    def digest(self) -> str:
        return self.token_sha256.lower() if self.token_sha256 else _sha256(self.token or "")


class _TokensDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[_TokenEntry]


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenTable:
    """Token digests to scopes. Only digests are kept, so a heap dump shows no tokens."""

    scopes: Mapping[str, AccessScope]

    def lookup(self, token: str) -> AccessScope | None:
        # Hashing first makes the dictionary probe independent of how much of a guess matches.
        return self.scopes.get(_sha256(token))

    def __len__(self) -> int:
        return len(self.scopes)


def parse_tokens(text: str, *, source: str) -> list[tuple[str, AccessScope]]:
    """(digest, scope) pairs from a tokens document; raises :class:`AuthConfigError`."""
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AuthConfigError(f"{source}: not valid YAML or JSON: {exc}") from None
    if isinstance(raw, list):
        raw = {"tokens": raw}
    try:
        document = _TokensDocument.model_validate(raw)
    except ValidationError as exc:
        # include_input=False: the rejected input may be a token.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'document'}: {err['msg']}"
            # YAML reads unquoted digits as a number: say how to keep a token a string.
            + (" (quote the value)" if err["type"] == "string_type" else "")
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise AuthConfigError(f"{source}: invalid tokens document: {problems}") from None
    return [(entry.digest(), AccessScope.of(entry.name, entry.groups, entry.namespaces)) for entry in document.tokens]


def load_token_table(settings: Settings) -> TokenTable | None:
    """The configured tokens, or ``None`` when auth is off (no file and no inline document)."""
    entries: list[tuple[str, AccessScope]] = []
    configured = False
    if settings.auth_tokens_file is not None:
        configured = True
        try:
            text = settings.auth_tokens_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"cannot read auth tokens file {settings.auth_tokens_file}: {exc}") from None
        entries += parse_tokens(text, source=str(settings.auth_tokens_file))
    if settings.auth_tokens:
        configured = True
        entries += parse_tokens(settings.auth_tokens, source="MCP_OPTIMIZER_AUTH_TOKENS")
    if not configured:
        return None
    if not entries:
        # Configured but empty is almost certainly a broken Secret: refuse rather than lock everyone out.
        raise AuthConfigError("auth tokens are configured but the document lists no tokens")
    return build_token_table(entries)


def build_token_table(entries: Iterable[tuple[str, AccessScope]]) -> TokenTable:
    """A table from (digest, scope) pairs, rejecting duplicate tokens and names."""
    scopes: dict[str, AccessScope] = {}
    names: set[str] = set()
    for digest, scope in entries:
        if digest in scopes:
            raise AuthConfigError(f"tokens {scopes[digest].name!r} and {scope.name!r} are the same token")
        if scope.name in names:
            raise AuthConfigError(f"two tokens are named {scope.name!r}")
        names.add(scope.name)
        scopes[digest] = scope
        logger.info(
            "MCP token %r: groups %s, namespaces %s",
            scope.name,
            "all" if scope.groups is None else sorted(scope.groups),
            "all" if scope.namespaces is None else sorted(scope.namespaces),
        )
    return TokenTable(scopes)




# ------------------------------------------------------------------------------ callers


@dataclass(frozen=True)
class Caller:
    """One authenticated caller: who (``identity``, which sessions are bound to and counted by)
    and what it may see. ``subject`` distinguishes principals that share a name (a Kubernetes
    uid); tokens are never part of either."""

    identity: str
    scope: AccessScope
    subject: str | None = None


class Unauthorized(Exception):
    """No credential, or one that was rejected: HTTP 401. ``invalid_token`` says which."""

    def __init__(self, message: str, *, invalid_token: bool) -> None:
        super().__init__(message)
        self.invalid_token = invalid_token


class AuthUnavailable(Exception):
    """The credential could not be checked (the API server is unreachable, slow or refuses the
    review): HTTP 503. The endpoint never falls back to serving the request."""


class Authenticator(Protocol):
    """Turns a request's bearer token (``None`` when it sent none) into a :class:`Caller`."""

    mode: str

    async def authenticate(self, token: str | None, *, peer: str) -> Caller:
        """``peer`` is the caller's address. Raises :class:`Unauthorized` or :class:`AuthUnavailable`."""
        ...

    async def aclose(self) -> None: ...


class NoAuth:
    """``none``: every caller sees everything. Callers are told apart by address only, for the
    per-identity session cap (on loopback, where this mode listens by default, that is one)."""

    mode = AUTH_NONE

    async def authenticate(self, token: str | None, *, peer: str) -> Caller:
        return Caller(f"anonymous:{peer}", UNRESTRICTED)

    async def aclose(self) -> None:
        return None


class StaticTokens:
    """``tokens``: a bearer token from the tokens document, with the scope written beside it."""

    mode = AUTH_TOKENS

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    async def authenticate(self, token: str | None, *, peer: str) -> Caller:
        if token is None:
            raise Unauthorized("a bearer token is required", invalid_token=False)
        scope = self.table.lookup(token)
        if scope is None:
            raise Unauthorized("unknown bearer token", invalid_token=True)
        return Caller(f"token:{scope.name}", scope)

    async def aclose(self) -> None:
        return None


#: Where Kubernetes auth learns which namespaces hold servers (the index's workload namespaces).
NamespaceSource = Callable[[], Awaitable[Collection[str]]]


def build_authenticator(
    settings: Settings,
    *,
    kube_config: client.Configuration | None = None,
    namespaces: NamespaceSource | None = None,
) -> Authenticator:
    """The authenticator for ``settings``; ``kube_config`` is the cluster, when there is one.

    Raises :class:`AuthConfigError` when the chosen mode cannot work (tokens without a document,
    Kubernetes auth without a cluster): the endpoint refuses to start rather than run open.
    """
    mode = resolve_auth_mode(settings, cluster=kube_config is not None)
    if mode == AUTH_NONE:
        return NoAuth()
    if mode == AUTH_TOKENS:
        table = load_token_table(settings)
        if table is None:
            raise AuthConfigError(
                "auth mode 'tokens' needs MCP_OPTIMIZER_AUTH_TOKENS_FILE or MCP_OPTIMIZER_AUTH_TOKENS"
            )
        return StaticTokens(table)
    assert mode == AUTH_KUBERNETES
    if kube_config is None or namespaces is None:
        raise AuthConfigError(
            "auth mode 'kubernetes' needs a cluster (in-cluster config or a kubeconfig) to review tokens"
        )
    from mcp_optimizer.mcp.kube_auth import KubernetesAuth

    return KubernetesAuth.from_settings(settings, kube_config, namespaces)


# ----------------------------------------------------------------------------- middleware


def _bearer_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def _peer(scope: Scope) -> str:
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"


class BearerAuthMiddleware:
    """Resolves the caller of every HTTP request and publishes its scope in :data:`current_scope`.

    Paths in ``public_paths`` (health checks) pass without a credential and without a scope, so
    they could never reach a tool with one.
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator, *, public_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        try:
            caller = await self.authenticator.authenticate(_bearer_token(scope), peer=_peer(scope))
        except Unauthorized as exc:
            await _unauthorized(send, exc)
            return
        except AuthUnavailable as exc:
            await _unavailable(send, str(exc))
            return
        # The SDK binds each MCP session to the principal that opened it (streamable HTTP and
        # SSE alike), so another caller cannot drive a session it learned the id of. The
        # identity, not the token, is the principal: a rotated ServiceAccount token keeps its session.
        scope["user"] = AuthenticatedUser(
            AccessToken(token=caller.identity, client_id=caller.identity, scopes=[], subject=caller.subject)
        )
        reset = current_scope.set(caller.scope)
        try:
            await self.app(scope, receive, send)
        finally:
            current_scope.reset(reset)


async def _unauthorized(send: Send, exc: Unauthorized) -> None:
    challenge = 'Bearer realm="mcp-optimizer"' + (', error="invalid_token"' if exc.invalid_token else "")
    error = "invalid_token" if exc.invalid_token else "invalid_request"
    await _json_error(send, 401, error, str(exc), [(b"www-authenticate", challenge.encode())])


async def _unavailable(send: Send, message: str) -> None:
    await _json_error(send, 503, "temporarily_unavailable", message, [(b"retry-after", b"5")])


async def _json_error(
    send: Send, status: int, error: str, description: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
