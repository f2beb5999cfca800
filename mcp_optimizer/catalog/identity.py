"""Canonical forms of the identifiers that link workloads to registry entries.

A remote server is identified by its URL and a container server by its OCI image. Catalogs,
MCPServer resources and humans spell the same identifier in many ways (``HTTPS://Host:443/mcp/``,
``nginx`` vs ``docker.io/library/nginx:latest``), and matching must treat those spellings as one
(SPEC SC-5). The two functions here map every spelling to one canonical string; matching is then
plain string equality on their results.

Both functions are idempotent (``f(f(x)) == f(x)``), so a canonical value can be stored and
normalised again without drifting, and both raise :class:`ValueError` for input that is not an
identifier of their kind, so a malformed identifier is reported instead of silently never matching.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, quote, urlsplit

from mcp_optimizer.redaction import redact_url

__all__ = ["normalize_image", "normalize_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Any whitespace or control character. urlsplit() silently deletes tabs and newlines (bpo-43882),
# which would make a corrupted catalog value look like a valid, different URL.
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\s]")

# RFC 3986 reg-name characters (after IDNA encoding), so garbage such as "exa<mple" is rejected.
_HOST_CHARS = re.compile(r"[a-z0-9\-._~!$&'()*+,;=%]+")

_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Characters left raw when re-quoting: RFC 3986 sub-delims, ":" and "@", plus "%" so existing
# escapes survive; quote() adds the unreserved set itself.
_PATH_SAFE = "!$&'()*+,;=:@/%"
_QUERY_SAFE = _PATH_SAFE + "?"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_url(url: str) -> str:
    """Return the canonical form of a remote MCP server's URL.

    The canonical form is ``scheme://host[:port][path][?query]`` where:

    * surrounding whitespace is stripped;
    * the scheme and host are lowercased; an internationalised host is IDNA-encoded to its ASCII
      (``xn--``) form and a trailing dot on the host is dropped;
    * the port is dropped when it is the scheme's default (80 for http, 443 for https);
    * userinfo (``user:password@``) is dropped: credentials do not change which server a URL
      names, and keeping them would copy secrets into the index;
    * trailing slashes are dropped from the path, so ``https://h/`` and ``https://h`` are equal
      and ``/mcp/`` equals ``/mcp``;
    * in path and query, non-ASCII characters are percent-encoded as UTF-8, percent-escapes use
      upper-case hex, and escapes of unreserved characters are decoded (RFC 3986 section 6.2.2),
      since all of those spell the same URL;
    * the fragment is dropped (it never reaches the server); the query is kept, because it may
      select a different endpoint.

    Args:
        url: An absolute ``http`` or ``https`` URL.

    Returns:
        The canonical URL string.

    Raises:
        ValueError: If ``url`` is not a string holding an absolute http(s) URL with a host, or
            contains whitespace or control characters, or has an invalid port or host.

    Examples:
        >>> normalize_url(" HTTPS://Mcp.Example.COM:443/v1/sse/#x ")
        'https://mcp.example.com/v1/sse'
        >>> normalize_url("http://localhost:8080/?a=1")
        'http://localhost:8080?a=1'
    """
    if not isinstance(url, str):
        raise ValueError(f"URL must be a string, got {type(url).__name__}")
    text = url.strip()
    if not text:
        raise ValueError("URL is empty")
    if _BAD_URL_CHARS.search(text):
        raise ValueError(f"URL {redact_url(text)!r} contains whitespace or control characters")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unbalanced "[" in an IPv6 host
        raise ValueError(f"URL {redact_url(text)!r} is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"URL {redact_url(text)!r} is not an absolute http(s) URL")
    host = _canonical_host(parts, text)
    port = _port(parts, text)
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _normalize_escapes(parts.path, _PATH_SAFE).rstrip("/")
    query = _normalize_escapes(parts.query, _QUERY_SAFE)
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def _canonical_host(parts: SplitResult, original: str) -> str:
    """Return the lowercased, ASCII (IDNA) host of ``parts``, bracketed when it is IPv6."""
    # .hostname already strips userinfo, port and IPv6 brackets, and lowercases.
    host = parts.hostname
    if not host:
        raise ValueError(f"URL {redact_url(original)!r} has no host")
    if ":" in host:
        if not re.fullmatch(r"[0-9a-f:.]+(%[0-9a-z._~-]+)?", host):
            raise ValueError(f"URL {redact_url(original)!r} has an invalid IPv6 host")
        return f"[{host}]"
    if host.endswith("."):
        host = host[:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"URL {redact_url(original)!r} has an invalid internationalised host: {exc}") from exc
    if not host or not _HOST_CHARS.fullmatch(host):
        raise ValueError(f"URL {redact_url(original)!r} has an invalid host")
    return host


def _port(parts: SplitResult, original: str) -> int | None:
    """Return the explicit port of ``parts``, turning urllib's errors into one clear message."""
    try:
        return parts.port
    except ValueError as exc:
        raise ValueError(f"URL {redact_url(original)!r} has an invalid port") from exc


def _normalize_escapes(component: str, safe: str) -> str:
    """Percent-encode characters a URL may not hold raw, then give every escape one spelling.

    Non-ASCII characters are encoded as UTF-8 escapes (so ``/ü`` equals ``/%C3%BC``), escapes use
    upper-case hex, and escapes of unreserved characters are decoded. ``%`` itself is left alone,
    so existing escapes are not double-encoded and the function is idempotent.
    """
    component = quote(component, safe=safe)

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_ESCAPE.sub(fix, component)


# --- OCI image references ----------------------------------------------------------------------
#
# Grammar from the distribution reference spec (github.com/distribution/reference), which is what
# Docker, containerd and Kubernetes parse image strings with.

_DOCKER_HUB = "docker.io"
# Spellings of Docker Hub that pull the same repositories as "docker.io".
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_MAX_NAME_LENGTH = 255


def normalize_image(image: str) -> str:
    """Return the repository identity of an OCI image reference, ignoring tag and digest.

    Two references name the same container server when they name the same repository: a tag
    bump or a pinned digest is a new version of the same server, not a different one. The
    canonical form is ``registry/path`` where:

    * surrounding whitespace is stripped, then ``@digest`` and ``:tag`` are removed (both are
      validated first, so a malformed reference is rejected rather than truncated);
    * a reference without a registry gets Docker Hub's implicit ``docker.io``, and a one-component
      Docker Hub name gets the implicit ``library/`` namespace (``nginx`` ->
      ``docker.io/library/nginx``);
    * ``index.docker.io`` and ``registry-1.docker.io`` are spelled ``docker.io``;
    * the registry host is lowercased and its port kept (a port selects a different registry).

    The first path component counts as a registry when it contains ``.`` or ``:`` or is
    ``localhost``, as in Docker. Docker's extra rule that an upper-case first component is a
    registry is not followed: the canonical form is lowercase, so that rule would make
    normalisation non-idempotent, and such names are vanishingly rare.

    Args:
        image: An image reference such as ``ghcr.io/org/server:1.2@sha256:...``.

    Returns:
        The canonical repository string.

    Raises:
        ValueError: If ``image`` is empty or not a valid reference (for example an upper-case
            repository path, an empty path component, or a malformed tag or digest).

    Examples:
        >>> normalize_image("nginx:1.25")
        'docker.io/library/nginx'
        >>> normalize_image("LocalHost:5000/foo:1.0")
        'localhost:5000/foo'
    """
    if not isinstance(image, str):
        raise ValueError(f"image reference must be a string, got {type(image).__name__}")
    text = image.strip()
    if not text:
        raise ValueError("image reference is empty")
    domain, path = _split_registry(text, _strip_version(text))
    for component in path.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            raise ValueError(
                f"image reference {text!r} has an invalid repository path component {component!r}"
                " (components are lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )
    return f"{domain}/{path}"


def _strip_version(text: str) -> str:
    """The reference without its ``@digest`` and ``:tag``, both checked first."""
    name, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ValueError(f"image reference {text!r} has an invalid digest")
    # A colon after the last slash separates the tag; one before it belongs to a registry port.
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        tag = name[colon + 1 :]
        name = name[:colon]
        if not _TAG.fullmatch(tag):
            raise ValueError(f"image reference {text!r} has an invalid tag {tag!r}")
    if not name:
        raise ValueError(f"image reference {text!r} has no repository name")
    if len(name) > _MAX_NAME_LENGTH:
        raise ValueError(f"image reference {text!r} is longer than {_MAX_NAME_LENGTH} characters")
    return name


def _split_registry(text: str, name: str) -> tuple[str, str]:
    """``(registry, path)`` of a reference without version, Docker Hub's implicit parts filled in."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first.lower() == "localhost"):
        domain, path = first.lower(), rest
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"image reference {text!r} has an invalid registry {first!r}")
    else:
        domain, path = _DOCKER_HUB, name

    if domain in _DOCKER_HUB_ALIASES:
        domain = _DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return domain, path
