"""Kubernetes-native auth for the MCP endpoint: ServiceAccount tokens, reviewed by the API server.

A caller sends its ServiceAccount token as a bearer token. The endpoint asks the API server who
that is (TokenReview, with the configured audiences) and in which namespaces that identity may
``get`` MCPServers (SubjectAccessReview, one per namespace that holds servers; a cluster-wide
allow short-circuits them all), and answers with those namespaces' servers only. Scoping is by
namespace, so the resource asked about is a setting: with ToolHive's servers indexed too,
``MCP_OPTIMIZER_AUTH_ACCESS_RESOURCE=mcpservers.toolhive.stacklok.dev`` follows ToolHive's RBAC.

Answers are reused for ``auth_cache_ttl`` seconds (a revoked token or RoleBinding takes effect
within that time) from LRU tables of at most ``auth_cache_size`` tokens and identities. No lock
is shared between callers: concurrent requests with one token share one TokenReview, an
identity's namespace reviews run under that identity's own lock, and nothing one caller waits
for holds up another. A review that cannot be made (API server unreachable or slow, 5xx, the
operator not allowed to create reviews) is a 503 and is not remembered; a token the API server
rejects is a 401 and is remembered, so a client retrying a bad token costs one review, not one
per request. Tokens are kept only as SHA-256 digests, and never logged.

RBAC: the operator's ServiceAccount needs ``create`` on ``tokenreviews.authentication.k8s.io``
and ``subjectaccessreviews.authorization.k8s.io`` (the chart's ``<release>-auth`` ClusterRole).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubernetes import client

from mcp_optimizer.config import AUTH_KUBERNETES, Settings
from mcp_optimizer.kubeapi import KubeApi, KubeApiError
from mcp_optimizer.mcp.auth import AuthUnavailable, Caller, NamespaceSource, Unauthorized
from mcp_optimizer.mcp.scope import AccessScope

logger = logging.getLogger(__name__)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
#: Seconds the list of namespaces holding servers is reused: a namespace's first server becomes
#: visible to the callers allowed there at most this long after it is indexed.
NAMESPACES_TTL = 2.0
#: SubjectAccessReviews one caller has in flight at once (a first call may need one per namespace).
REVIEWS_PER_CALLER = 8
#: Seconds between two log lines about the same review failure (an outage is logged, not a flood).
_LOG_EVERY = 30.0

K = TypeVar("K")
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """A dictionary whose entries expire after a time to live and which forgets its least
    recently used entry beyond ``max_entries``."""

    def __init__(self, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class KubeUser:
    """The identity a TokenReview returned, as a SubjectAccessReview wants it back."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_status(cls, user: Mapping[str, Any]) -> KubeUser:
        extra = user.get("extra") or {}
        return cls(
            username=str(user.get("username") or ""),
            uid=str(user.get("uid") or ""),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(v) for v in vs or ())) for k, vs in extra.items())),
        )

    def subject(self) -> dict[str, Any]:
        subject: dict[str, Any] = {"user": self.username, "groups": list(self.groups)}
        if self.uid:
            subject["uid"] = self.uid
        if self.extra:
            subject["extra"] = {k: list(v) for k, v in self.extra}
        return subject


@dataclass(frozen=True)
class AccessResource:
    """The resource a caller must be allowed to ``get`` in a namespace to see its servers."""

    resource: str
    group: str
    verb: str = "get"

    @classmethod
    def parse(cls, text: str) -> AccessResource:
        """``mcpservers.mcp-optimizer.dev`` (``resource.group``, as kubectl writes it); ``pods`` is core."""
        resource, _, group = text.strip().partition(".")
        if not resource:
            raise ValueError(f"access resource must be 'resource.group', got {text!r}")
        return cls(resource, group)

    def __str__(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


@dataclass(frozen=True)
class _Rejected:
    """A token the API server did not accept (remembered like an accepted one)."""

    message: str


@dataclass
class _Access:
    """What one identity may see, filled in as namespaces appear, until the entry expires."""

    cluster_wide: bool | None = None
    namespaces: dict[str, bool] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KubernetesAuth:
    """The ``kubernetes`` auth mode (see the module docstring)."""

    mode = AUTH_KUBERNETES

    def __init__(
        self,
        api: KubeApi,
        namespaces: NamespaceSource,
        *,
        audiences: Sequence[str] = (),
        resource: AccessResource,
        ttl: float,
        cache_size: int,
    ) -> None:
        self.api = api
        self.namespace_source = namespaces
        self.audiences = tuple(audiences)
        self.resource = resource
        self.ttl = ttl
        self._tokens: TtlLru[str, KubeUser | _Rejected] = TtlLru(cache_size)
        self._access: TtlLru[KubeUser, _Access] = TtlLru(cache_size)
        self._reviews: dict[str, asyncio.Task[KubeUser | _Rejected]] = {}
        self._namespaces: tuple[float, frozenset[str]] | None = None
        self._logged: dict[str, float] = {}
        #: Reviews sent to the API server, by kind (for tests and metrics: what the cache saves).
        self.review_counts = {"token": 0, "access": 0}

    @classmethod
    def from_settings(
        cls, settings: Settings, kube_config: client.Configuration, namespaces: NamespaceSource
    ) -> KubernetesAuth:
        resource = AccessResource.parse(settings.auth_access_resource)
        auth = cls(
            KubeApi(kube_config, timeout=settings.auth_review_timeout),
            namespaces,
            audiences=settings.auth_audiences,
            resource=resource,
            ttl=settings.auth_cache_ttl,
            cache_size=settings.auth_cache_size,
        )
        logger.info(
            "MCP auth: Kubernetes ServiceAccount tokens (audiences %s), scoped to namespaces where the caller may "
            "get %s",
            ", ".join(auth.audiences) or "of the API server",
            resource,
        )
        return auth

    async def authenticate(self, token: str | None, *, peer: str) -> Caller:
        if token is None:
            raise Unauthorized(f"a bearer token is required: send a ServiceAccount token{self._for_audience()}",
                               invalid_token=False)
        user = await self._user(token)
        return Caller(f"kubernetes:{user.username}", await self.scope(user), subject=user.uid or None)

    async def aclose(self) -> None:
        for task in list(self._reviews.values()):
            task.cancel()
        await self.api.close()

    # ------------------------------------------------------------------------ who

    def _for_audience(self) -> str:
        return f" issued for audience {', '.join(repr(a) for a in self.audiences)}" if self.audiences else ""

    async def _user(self, token: str) -> KubeUser:
        digest = hashlib.sha256(token.encode()).hexdigest()
        known = self._tokens.get(digest)
        if known is None:
            task = self._reviews.get(digest)
            if task is None:
                # One review per token however many requests carry it at once; shielded so a
                # caller that hangs up does not cancel the review the others are waiting for.
                task = asyncio.create_task(self._review_token(token, digest), name="TokenReview")
                self._reviews[digest] = task
                task.add_done_callback(lambda done: self._review_done(digest, done))
            known = await asyncio.shield(task)
        if isinstance(known, _Rejected):
            raise Unauthorized(known.message, invalid_token=True)
        return known

    def _review_done(self, digest: str, task: asyncio.Task[KubeUser | _Rejected]) -> None:
        self._reviews.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _review_token(self, token: str, digest: str) -> KubeUser | _Rejected:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        self.review_counts["token"] += 1
        try:
            review = await self.api.post(
                TOKEN_REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
            )
        except KubeApiError as exc:
            raise self._unavailable("TokenReview", exc) from None
        status = review.get("status") or {}
        result: KubeUser | _Rejected
        if not status.get("authenticated"):
            # status.error names the authenticators that refused; useful to an operator, not to a caller.
            logger.debug("TokenReview rejected a token: %s", str(status.get("error") or "")[:300])
            result = _Rejected(
                "Kubernetes did not accept the bearer token (TokenReview): it is invalid, expired, or not a "
                f"ServiceAccount token{self._for_audience()}"
            )
        elif self.audiences and not set(status.get("audiences") or ()) & set(self.audiences):
            # The API server answers with the audiences it validated; none of ours means "not for us".
            result = _Rejected(f"the bearer token was not issued{self._for_audience()}")
        else:
            result = KubeUser.from_status(status.get("user") or {})
            if not result.username:
                result = _Rejected("TokenReview accepted the token but named no user")
        self._tokens.put(digest, result, self.ttl)
        return result

    # ----------------------------------------------------------------------- what

    async def scope(self, user: KubeUser) -> AccessScope:
        """The namespaces (among those holding servers) where ``user`` may get the access resource."""
        access = self._access.get(user)
        if access is None:
            access = _Access()
            self._access.put(user, access, self.ttl)
        known = await self._known_namespaces()
        async with access.lock:  # this identity's reviews only: other callers never wait here
            if access.cluster_wide is None:
                access.cluster_wide = await self._allowed(user, "")
            if access.cluster_wide:
                return AccessScope(user.username)
            missing = sorted(ns for ns in known if ns not in access.namespaces)
            if missing:
                await self._review_namespaces(user, access, missing)
        return AccessScope(user.username, None, frozenset(ns for ns in known if access.namespaces.get(ns)))

    async def _review_namespaces(self, user: KubeUser, access: _Access, namespaces: list[str]) -> None:
        slots = asyncio.Semaphore(REVIEWS_PER_CALLER)

        async def review(namespace: str) -> None:
            async with slots:
                access.namespaces[namespace] = await self._allowed(user, namespace)

        results = await asyncio.gather(*(review(ns) for ns in namespaces), return_exceptions=True)
        # The answers that came back are kept; one that did not fails the request (503).
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _allowed(self, user: KubeUser, namespace: str) -> bool:
        attributes = {"verb": self.resource.verb, "group": self.resource.group, "resource": self.resource.resource}
        if namespace:
            attributes["namespace"] = namespace
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {**user.subject(), "resourceAttributes": attributes},
        }
        self.review_counts["access"] += 1
        try:
            review = await self.api.post(ACCESS_REVIEWS, body)
        except KubeApiError as exc:
            raise self._unavailable("SubjectAccessReview", exc) from None
        return bool((review.get("status") or {}).get("allowed"))

    async def _known_namespaces(self) -> frozenset[str]:
        cached = self._namespaces
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            found: Collection[str] = await self.namespace_source()
        except Exception as exc:
            logger.exception("Reading the namespaces that hold servers failed")
            raise AuthUnavailable("the index cannot be read right now; retry shortly") from exc
        namespaces = frozenset(found)
        self._namespaces = (time.monotonic() + NAMESPACES_TTL, namespaces)
        return namespaces

    def _unavailable(self, review: str, exc: KubeApiError) -> AuthUnavailable:
        if exc.status in (401, 403):
            what = "tokenreviews.authentication.k8s.io" if review == "TokenReview" else (
                "subjectaccessreviews.authorization.k8s.io"
            )
            detail = f"the operator may not create {review}s ({exc}); grant it create on {what}"
        else:
            detail = str(exc)
        now = time.monotonic()
        if len(self._logged) > 100:
            self._logged.clear()
        if self._logged.get(detail, 0.0) <= now:
            self._logged[detail] = now + _LOG_EVERY
            logger.warning("MCP auth: %s failed, callers get 503: %s", review, detail)
        return AuthUnavailable(f"the caller's credentials cannot be checked right now ({review} failed); retry shortly")
