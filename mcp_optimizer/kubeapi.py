"""An asyncio client for the few API-server calls made beside kopf.

kopf owns the watches of MCPServers and pods. Two things need the API server outside them:

* the MCP endpoint's Kubernetes auth: one TokenReview and a few SubjectAccessReviews per new
  caller (:mod:`mcp_optimizer.mcp.kube_auth`);
* the catalog watches: a namespaced list + watch of ConfigMaps in each trusted namespace
  (:mod:`mcp_optimizer.operator.catalogs`), which kopf's one operator-wide namespace scope
  cannot express when MCPServers are watched cluster-wide.

Both use aiohttp (kopf's own HTTP client) rather than the kubernetes client, which blocks: a
slow review or a long watch must not hold one of the few default executor threads that the
embedding model and SQLite also need. Credentials come from the same kubernetes
``Configuration`` as the rest of the operator (in-cluster or a kubeconfig); a rotating
in-cluster token is re-read through the configuration's refresh hook on every request.
:func:`load_client_config` makes that configuration for every part of the process.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from kubernetes import client, config

from mcp_optimizer.errors import McpOptimizerError

logger = logging.getLogger(__name__)

#: One line of a watch stream (an object) may be at most this big. ConfigMaps are at most 1 MiB
#: (etcd's request limit); JSON escaping can roughly double that.
MAX_WATCH_LINE = 4 * 1024 * 1024
#: Concurrent connections to the API server; reviews and watches are small and short or few.
_CONNECTIONS = 64
_STATUS_MESSAGE_LIMIT = 300


def load_client_config(kubeconfig: str | None) -> client.Configuration:
    """The kubernetes client configuration: ``kubeconfig`` if given, else in-cluster, else default."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


class KubeApiError(McpOptimizerError):
    """A call to the API server failed. ``status`` is the HTTP status, ``None`` when unreachable."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unreachable(self) -> bool:
        return self.status is None


class KubeApi:
    """JSON calls to the API server with the credentials of a kubernetes client configuration.

    The aiohttp session is created on first use in the running event loop and closed by
    :meth:`close`. ``timeout`` bounds every request except watches (which give their own).
    """

    def __init__(self, configuration: client.Configuration, *, timeout: float) -> None:
        self.configuration = configuration
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def server(self) -> str:
        return str(self.configuration.host).rstrip("/")

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self.configuration
        if not self.server.startswith("https:"):
            return False
        if not cfg.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        return context

    def _headers(self) -> dict[str, str]:
        cfg = self.configuration
        headers = {"Accept": "application/json"}
        # get_api_key_with_prefix runs the refresh hook: in a pod it re-reads the rotated token.
        credential = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        if credential:
            scheme, _, token = credential.partition(" ")
            headers["Authorization"] = f"Bearer {token}" if token and scheme.lower() == "bearer" else credential
        elif basic := cfg.get_basic_auth_token() if (cfg.username or cfg.password) else None:
            headers["Authorization"] = basic
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=_CONNECTIONS)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("POST", path, body=body)

    async def put(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("PUT", path, body=body)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self._json("GET", path, params=params)

    async def _json(
        self, method: str, path: str, *, body: Mapping[str, Any] | None = None, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            async with self._client().request(
                method,
                self.server + path,
                json=body,
                params=params,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if response.status >= 400:
                    raise KubeApiError(response.status, await _status_message(response))
                try:
                    data: dict[str, Any] = await response.json(content_type=None)
                except ValueError:
                    raise KubeApiError(response.status, f"{method} {path} answered with something not JSON") from None
                return data
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise KubeApiError(None, f"cannot reach the API server at {self.server}: {_describe(exc)}") from None

    async def watch(
        self, path: str, params: Mapping[str, str], *, timeout_seconds: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (``{"type": ..., "object": ...}``) until the server ends it."""
        query = {**params, "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        # The server closes the stream after timeoutSeconds; the client allows a little more.
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 30, sock_connect=self.timeout)
        try:
            async with self._client().get(
                self.server + path, params=query, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise KubeApiError(response.status, await _status_message(response))
                async for line in _json_lines(response.content):
                    yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise KubeApiError(None, f"watch of {path} at {self.server} failed: {_describe(exc)}") from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


async def _json_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    # aiohttp's own line iteration fails on lines over 128 KiB (kopf's iter_jsonlines says why);
    # this one reads chunks and refuses lines over MAX_WATCH_LINE instead of buffering forever.
    buffer = b""
    async for chunk in content.iter_chunked(256 * 1024):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if len(buffer) > MAX_WATCH_LINE:
            raise KubeApiError(None, f"a watch event is larger than {MAX_WATCH_LINE} bytes")
    if buffer.strip():
        yield buffer


async def _status_message(response: aiohttp.ClientResponse) -> str:
    """The message of a Kubernetes ``Status`` answer, clipped; the HTTP reason otherwise."""
    try:
        body = await response.json(content_type=None)
        message = str(body.get("message") or response.reason or "")
    except (TimeoutError, ValueError, aiohttp.ClientError):
        message = str(response.reason or "")
    return f"HTTP {response.status}: {message[:_STATUS_MESSAGE_LIMIT]}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
