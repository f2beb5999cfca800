"""Credentials in URLs (``http://user:password@host/mcp``) are never shown.

A user may put credentials into an MCPServer's URL (or a catalog's); the operator still uses
them to connect (:func:`split_userinfo` turns them into HTTP Basic auth), but every place that
renders a URL renders :func:`redact_url` of it, and every log line goes through
:func:`redact_urls` (see :mod:`mcp_optimizer.logs`), which also catches URLs inside messages
of other libraries (the MCP SDK, httpx, kopf).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_url", "redact_urls", "split_userinfo"]

REDACTED = "***"

#: ``scheme://userinfo@`` anywhere in a text. Userinfo stops at the first ``/``, ``?``, ``#``,
#: whitespace or quote; the last ``@`` before those ends it (a password may contain ``@``).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"<>]*@)")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``; other URLs are returned as they are."""
    return redact_urls(url)


def redact_urls(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    if "@" not in text:
        return text  # the common case, without a regex scan
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """(``url`` without userinfo, (user, password) or None), for HTTP Basic auth.

    The credentials then travel in an ``Authorization`` header and the URL the MCP SDK and
    httpx see (and may log or put into an exception) holds no secret at all.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))
