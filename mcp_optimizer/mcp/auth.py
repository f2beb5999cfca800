"""Bearer tokens for the MCP endpoint, each bound to the groups and namespaces it may see.

Off unless tokens are configured. The tokens document (a file, typically a mounted Secret,
and/or the ``MCP_OPTIMIZER_AUTH_TOKENS`` variable) is YAML or JSON::

    tokens:
      - name: team-a              # shown in logs; never the token itself
        token: "..."              # or token_sha256: "<hex digest of the token>"
        groups: [team-a]          # omitted or "*" = every group
        namespaces: [team-a-ns]   # omitted or "*" = every namespace

A workload without a namespace (local runs) is visible only to tokens whose namespaces
are unrestricted. Once any token is configured every request needs one: a missing or
unknown token is answered 401 before it reaches MCP.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_optimizer.config import Settings
from mcp_optimizer.mcp.scope import UNRESTRICTED, AccessScope, current_scope

logger = logging.getLogger(__name__)

_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class AuthConfigError(ValueError):
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


def _bearer_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


class BearerAuthMiddleware:
    """Resolves the caller's scope for every HTTP request and publishes it in :data:`current_scope`.

    With ``tokens=None`` (auth off) every request gets :data:`UNRESTRICTED`. Paths in
    ``public_paths`` (health checks) pass without a token and without a scope, so they
    could never reach a tool with one.
    """

    def __init__(self, app: ASGIApp, tokens: TokenTable | None, *, public_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.tokens = tokens
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        if self.tokens is None:
            access = UNRESTRICTED
        else:
            token = _bearer_token(scope)
            found = self.tokens.lookup(token) if token is not None else None
            if found is None:
                await _unauthorized(send, presented=token is not None)
                return
            access = found
            # The SDK binds each MCP session to the principal that opened it (streamable HTTP
            # and SSE alike), so another token cannot drive a session it learned the id of.
            scope["user"] = AuthenticatedUser(
                AccessToken(token=_sha256(token or ""), client_id=f"token:{access.name}", scopes=[])
            )
        reset = current_scope.set(access)
        try:
            await self.app(scope, receive, send)
        finally:
            current_scope.reset(reset)


async def _unauthorized(send: Send, *, presented: bool) -> None:
    if presented:
        challenge = 'Bearer realm="mcp-optimizer", error="invalid_token"'
        body = b'{"error":"invalid_token","error_description":"unknown bearer token"}'
    else:
        challenge = 'Bearer realm="mcp-optimizer"'
        body = b'{"error":"invalid_request","error_description":"a bearer token is required"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
