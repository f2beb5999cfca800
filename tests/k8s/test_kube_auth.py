"""Kubernetes-native auth on the real control plane: ServiceAccount tokens, TokenReview, RBAC scopes.

The endpoint reviews tokens as the operator's ServiceAccount (the control plane's operator user),
with a ClusterRole that grants exactly what the chart's auth ClusterRole grants. Callers are real
ServiceAccounts with real tokens (TokenRequest), scoped by real RoleBindings:

* ``reader`` may get MCPServers in namespace A only: it sees and calls A's servers, nothing of B;
* ``nobody`` has no RBAC at all: it is authenticated but sees nothing;
* ``admin`` may get MCPServers cluster-wide: one review answers for every namespace;
* forged tokens, tokens for another audience and static tokens get 401, a missing token 401;
* an API server that cannot be asked (down, hanging, refusing the operator) gives 503, never data.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx2
import pytest
from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.kubeapi import KubeApi, load_client_config
from mcp_optimizer.mcp.auth import Unauthorized
from mcp_optimizer.mcp.kube_auth import TOKEN_REVIEWS, AccessResource, KubernetesAuth
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.testing.mcp_servers import LOOPBACK, McpTestServerFarm
from tests.mcp.server_env import (
    GITHUB,
    HEADERS,
    INIT,
    LISTING,
    POSTGRES,
    SLACK,
    connect,
    error_text,
    farm,
    hits,
    payload,
)

__all__ = ["farm"]

pytestmark = pytest.mark.kube

OPERATOR_USER = "system:serviceaccount:mcp-optimizer-system:mcp-optimizer"
AUDIENCE = "mcp-optimizer"
#: What the chart's auth ClusterRole grants the operator.
AUTH_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]
READ_MCPSERVERS = [{"apiGroups": ["mcp-optimizer.dev"], "resources": ["mcpservers"], "verbs": ["get"]}]
QUERY = {"tool_description": "send a chat message or create an issue or run a sql query", "limit": 50}


# ------------------------------------------------------------------------------------------ cluster


def rbac(kube_api: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(kube_api)


def can(kube_api: client.ApiClient, user: str, verb: str, resource: str, group: str, namespace: str = "") -> bool:
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace},
            }
        }
    )
    return bool(review.status.allowed)


def wait_authorized(kube_api: client.ApiClient, allowed: bool, user: str, *attrs: str) -> None:
    """RBAC reaches the authorizer through an informer: wait until the decision flips."""
    deadline = time.monotonic() + 15
    while can(kube_api, user, *attrs) != allowed:
        assert time.monotonic() < deadline, f"RBAC did not become {allowed} for {user} {attrs}"
        time.sleep(0.05)


def bind(kube_api: client.ApiClient, name: str, rules: list[dict[str, Any]], sa: tuple[str, str], ns: str = "") -> None:
    """A (Cluster)Role with ``rules`` bound to ServiceAccount ``sa`` = (namespace, name)."""
    kind = "Role" if ns else "ClusterRole"
    subject = [{"kind": "ServiceAccount", "namespace": sa[0], "name": sa[1]}]
    role = {"metadata": {"name": name}, "rules": rules}
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": subject,
    }
    if ns:
        rbac(kube_api).create_namespaced_role(ns, role)
        rbac(kube_api).create_namespaced_role_binding(ns, binding)
    else:
        rbac(kube_api).create_cluster_role(role)
        rbac(kube_api).create_cluster_role_binding(binding)


def unbind(kube_api: client.ApiClient, name: str, ns: str = "") -> None:
    try:
        if ns:
            rbac(kube_api).delete_namespaced_role_binding(name, ns)
            rbac(kube_api).delete_namespaced_role(name, ns)
        else:
            rbac(kube_api).delete_cluster_role_binding(name)
            rbac(kube_api).delete_cluster_role(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


def sa_token(
    kube_api: client.ApiClient, ns: str, name: str, audiences: list[str] | None = None, expires: int = 3600
) -> str:
    """A bound ServiceAccount token (TokenRequest), as a projected volume would hold."""
    spec: dict[str, Any] = {"expirationSeconds": expires}
    if audiences is not None:
        spec["audiences"] = audiences
    request = client.CoreV1Api(kube_api).create_namespaced_service_account_token(name, ns, {"spec": spec})
    return str(request.status.token)


@pytest.fixture
def review_rights(kube_api: client.ApiClient) -> Iterator[None]:
    """The operator may create TokenReviews and SubjectAccessReviews (as the chart grants)."""
    name = f"test-auth-{uuid.uuid4().hex[:6]}"
    bind(kube_api, name, AUTH_RULES, ("mcp-optimizer-system", "mcp-optimizer"))
    wait_authorized(kube_api, True, OPERATOR_USER, "create", "tokenreviews", "authentication.k8s.io")
    wait_authorized(kube_api, True, OPERATOR_USER, "create", "subjectaccessreviews", "authorization.k8s.io")
    yield
    unbind(kube_api, name)
    wait_authorized(kube_api, False, OPERATOR_USER, "create", "tokenreviews", "authentication.k8s.io")


class Tenants:
    """Two team namespaces with servers, three ServiceAccounts and their tokens."""

    def __init__(self, kube_api: client.ApiClient) -> None:
        self.kube_api = kube_api
        core = client.CoreV1Api(kube_api)
        suffix = uuid.uuid4().hex[:6]
        self.a, self.b, self.home = f"team-a-{suffix}", f"team-b-{suffix}", f"agents-{suffix}"
        for ns in (self.a, self.b, self.home):
            core.create_namespace({"metadata": {"name": ns}})
        for sa in ("reader", "nobody", "admin"):
            core.create_namespaced_service_account(self.home, {"metadata": {"name": sa}})
        self.admin_binding = f"test-admin-{suffix}"
        bind(kube_api, "read-mcpservers", READ_MCPSERVERS, (self.home, "reader"), ns=self.a)
        bind(kube_api, self.admin_binding, READ_MCPSERVERS, (self.home, "admin"))
        wait_authorized(kube_api, True, self.user("reader"), "get", "mcpservers", "mcp-optimizer.dev", self.a)
        wait_authorized(kube_api, True, self.user("admin"), "get", "mcpservers", "mcp-optimizer.dev")

    def user(self, sa: str) -> str:
        return f"system:serviceaccount:{self.home}:{sa}"

    def token(self, sa: str, audiences: list[str] | None = None, expires: int = 3600) -> str:
        return sa_token(self.kube_api, self.home, sa, [AUDIENCE] if audiences is None else audiences, expires)

    def servers(self) -> tuple[set[str], set[str]]:
        return {f"{self.a}/github", f"{self.a}/postgres"}, {f"{self.b}/slack"}

    def close(self) -> None:
        unbind(self.kube_api, self.admin_binding)
        core = client.CoreV1Api(self.kube_api)
        for ns in (self.a, self.b, self.home):
            core.delete_namespace(ns)


@pytest.fixture
def tenants(kube_api: client.ApiClient) -> Iterator[Tenants]:
    world = Tenants(kube_api)
    yield world
    world.close()


async def populate(indexer: Indexer, farm: McpTestServerFarm, tenants: Tenants) -> None:
    running = WorkloadStatus.RUNNING
    specs = [
        (tenants.a, "github", GITHUB, "team-a"),
        (tenants.a, "postgres", POSTGRES, "team-a"),
        (tenants.b, "slack", SLACK, "team-b"),
    ]
    for ns, name, tools, group in specs:
        await indexer.apply_workload(
            WorkloadSpec(
                f"{ns}/{name}",
                name,
                package=f"ghcr.io/example/{name}:1",
                endpoint=farm.url(name),
                status=running,
                group=group,
                namespace=ns,
                tools=tools,
            )
        )


def auth_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(
        settings, auth_mode="kubernetes", mcp_host="127.0.0.1", mcp_port=0, call_timeout=10.0,
        # The backends run on loopback, which call_tool refuses unless it is admitted.
        allowed_destinations=LOOPBACK, **changes
    )


@pytest.fixture
async def endpoint(
    indexer: Indexer, farm: McpTestServerFarm, tenants: Tenants, settings: Settings, operator_kubeconfig: str,
    review_rights: None,
) -> AsyncIterator[McpEndpoint]:
    await populate(indexer, farm, tenants)
    search = ToolSearch(indexer.engine, indexer.embedder)
    async with McpEndpoint(
        auth_settings(settings), search, kube_config=load_client_config(operator_kubeconfig)
    ) as ep:
        yield ep


async def servers_seen(url: str, token: str) -> set[str]:
    """The servers list_tools shows in a new session with ``token``."""
    async with connect(url, token=token, mode="legacy") as session:
        return {entry["server"] for entry in payload(await session.call_tool("list_tools", {}))["servers"]}


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_each_service_account_sees_only_what_rbac_lets_it_get(
    endpoint: McpEndpoint, tenants: Tenants, farm: McpTestServerFarm, transport: str
) -> None:
    team_a, team_b = tenants.servers()
    url = endpoint.sse_url if transport == "sse" else endpoint.url
    farm.registry("slack").clear_calls()

    async with connect(url, token=tenants.token("reader"), transport=transport, mode="legacy") as reader:
        listed = {e["server"] for e in payload(await reader.call_tool("list_tools", {}))["servers"]}
        found = {server for server, _ in hits(await reader.call_tool("find_tool", QUERY))}
        own = await reader.call_tool(
            "call_tool",
            {"server_name": f"{tenants.a}/github", "tool_name": "create_issue",
             "parameters": {"repo": "r", "title": "t"}},
        )
        other = await reader.call_tool(
            "call_tool",
            {"server_name": f"{tenants.b}/slack", "tool_name": "send_message",
             "parameters": {"channel": "c", "text": "hi"}},
        )
    assert listed == team_a and found and found <= team_a
    assert payload(own)["arguments"] == {"repo": "r", "title": "t"}
    assert error_text(other).startswith(f"Unknown server '{tenants.b}/slack'")
    assert farm.registry("slack").calls == []

    async with connect(url, token=tenants.token("nobody"), transport=transport, mode="legacy") as nobody:
        listed = payload(await nobody.call_tool("list_tools", {}))["servers"]
        found_nothing = payload(await nobody.call_tool("find_tool", QUERY))
    assert listed == [] and found_nothing["tools"] == []
    assert found_nothing["token_estimate"]["all_running_tools_tokens"] == 0

    auth = endpoint.authenticator
    assert isinstance(auth, KubernetesAuth)
    before = dict(auth.review_counts)
    async with connect(url, token=tenants.token("admin"), transport=transport, mode="legacy") as admin:
        listed = {e["server"] for e in payload(await admin.call_tool("list_tools", {}))["servers"]}
    assert listed == team_a | team_b
    # The cluster-wide allow short-circuits: one access review for the admin, not one per namespace.
    assert auth.review_counts["access"] - before["access"] == 1


async def test_forged_foreign_and_missing_tokens_get_401(
    endpoint: McpEndpoint, tenants: Tenants, control_plane_dir: Any
) -> None:
    api_server_token = tenants.token("reader", audiences=[])  # the API server's own audience
    static_token = (control_plane_dir / "operator.kubeconfig").read_text().split("token: ")[1].split()[0].strip('"')
    forged = tenants.token("reader")[:-10] + "AAAAAAAAAA"  # a real token with its signature broken
    async with httpx2.AsyncClient(timeout=10) as http:
        answers = {
            name: await http.post(endpoint.url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"})
            for name, token in (
                ("forged", forged),
                ("garbage", "not-a-token"),
                ("api-server audience", api_server_token),
                ("static token", static_token),
            )
        }
        missing = await http.post(endpoint.url, json=INIT, headers=HEADERS)
        sse = await http.get(endpoint.sse_url, headers={"Authorization": f"Bearer {forged}"})
    for name, response in {**answers, "sse": sse}.items():
        assert response.status_code == 401, name
        assert 'error="invalid_token"' in response.headers["www-authenticate"], name
        description = response.json()["error_description"]
        assert "Kubernetes did not accept the bearer token" in description, (name, description)
        assert f"audience '{AUDIENCE}'" in description
        assert forged not in response.text and api_server_token not in response.text
    assert missing.status_code == 401
    assert missing.json()["error_description"].startswith("a bearer token is required: send a ServiceAccount token")


async def test_a_rotated_token_keeps_the_session_another_identity_cannot_use_it(
    endpoint: McpEndpoint, tenants: Tenants
) -> None:
    # The kubelet rotates a projected token before it expires: same identity, another token.
    first, rotated = tenants.token("reader"), tenants.token("reader", expires=7200)
    intruder = tenants.token("admin")
    assert first != rotated
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(endpoint.url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {first}"})
        assert opened.status_code == 200
        session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        as_rotated, as_intruder = ({**session, "Authorization": f"Bearer {t}"} for t in (rotated, intruder))
        same_sa = await http.post(endpoint.url, json=LISTING, headers=as_rotated)
        other_sa = await http.post(endpoint.url, json=LISTING, headers=as_intruder)
    assert same_sa.status_code == 200 and "find_tool" in same_sa.text
    assert other_sa.status_code == 404


async def test_reviews_are_cached_briefly_and_rbac_changes_follow(
    indexer: Indexer, farm: McpTestServerFarm, tenants: Tenants, settings: Settings, operator_kubeconfig: str,
    review_rights: None, kube_api: client.ApiClient,
) -> None:
    await populate(indexer, farm, tenants)
    team_a, team_b = tenants.servers()
    search = ToolSearch(indexer.engine, indexer.embedder)
    token = tenants.token("reader")
    kube_config = load_client_config(operator_kubeconfig)
    async with McpEndpoint(auth_settings(settings, auth_cache_ttl=600), search, kube_config=kube_config) as ep:
        auth = ep.authenticator
        assert isinstance(auth, KubernetesAuth)
        for _ in range(5):
            assert await servers_seen(ep.url, token) == team_a
        # Five sessions, many requests: one TokenReview; one cluster-wide and one per namespace SAR.
        assert auth.review_counts == {"token": 1, "access": 3}

    ttl = 2.0
    async with McpEndpoint(auth_settings(settings, auth_cache_ttl=ttl), search, kube_config=kube_config) as ep:
        assert await servers_seen(ep.url, token) == team_a
        # Granted team B too: visible once the cached decision has expired (the TTL).
        bind(kube_api, "read-mcpservers", READ_MCPSERVERS, (tenants.home, "reader"), ns=tenants.b)
        wait_authorized(kube_api, True, tenants.user("reader"), "get", "mcpservers", "mcp-optimizer.dev", tenants.b)
        granted = time.monotonic()
        while await servers_seen(ep.url, token) != team_a | team_b:
            assert time.monotonic() - granted < ttl + 30, "the new RoleBinding was never noticed"
            await asyncio.sleep(0.2)

        # Revoked in A: gone after the TTL.
        unbind(kube_api, "read-mcpservers", ns=tenants.a)
        wait_authorized(kube_api, False, tenants.user("reader"), "get", "mcpservers", "mcp-optimizer.dev", tenants.a)
        revoked = time.monotonic()
        while await servers_seen(ep.url, token) != team_b:
            assert time.monotonic() - revoked < ttl + 30, "the revoked RoleBinding still counts"
            await asyncio.sleep(0.2)


async def test_the_access_resource_is_a_setting(
    indexer: Indexer, farm: McpTestServerFarm, tenants: Tenants, settings: Settings, operator_kubeconfig: str,
    review_rights: None, kube_api: client.ApiClient,
) -> None:
    """Scoping by ToolHive's MCPServer kind instead: the reader's grant on ours no longer counts."""
    await populate(indexer, farm, tenants)
    search = ToolSearch(indexer.engine, indexer.embedder)
    configured = auth_settings(settings, auth_access_resource="mcpservers.toolhive.stacklok.dev")
    bind(kube_api, "read-toolhive", [{"apiGroups": ["toolhive.stacklok.dev"], "resources": ["mcpservers"],
                                     "verbs": ["get"]}], (tenants.home, "nobody"), ns=tenants.b)
    wait_authorized(kube_api, True, tenants.user("nobody"), "get", "mcpservers", "toolhive.stacklok.dev", tenants.b)
    async with McpEndpoint(configured, search, kube_config=load_client_config(operator_kubeconfig)) as ep:
        reader = await servers_seen(ep.url, tenants.token("reader"))
        toolhive_reader = await servers_seen(ep.url, tenants.token("nobody"))
    assert reader == set()
    assert toolhive_reader == tenants.servers()[1]


class _HangingServer:
    """Accepts TCP connections and never answers: an API server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("failure", ["refused", "hanging", "no RBAC for reviews"])
async def test_an_api_server_that_cannot_answer_gives_503_never_data(
    indexer: Indexer, farm: McpTestServerFarm, tenants: Tenants, settings: Settings, operator_kubeconfig: str,
    failure: str, caplog: pytest.LogCaptureFixture,
) -> None:
    await populate(indexer, farm, tenants)
    kube_config = copy.copy(load_client_config(operator_kubeconfig))
    hanging = _HangingServer() if failure == "hanging" else None
    if failure == "refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        kube_config.host = f"https://127.0.0.1:{port}"
    elif hanging is not None:
        kube_config.host = f"https://127.0.0.1:{hanging.port}"
    # "no RBAC for reviews": the real API server, but no review_rights fixture.
    token = tenants.token("reader")
    search = ToolSearch(indexer.engine, indexer.embedder)
    try:
        with caplog.at_level(logging.WARNING, logger="mcp_optimizer.mcp.kube_auth"):
            async with McpEndpoint(
                auth_settings(settings, auth_review_timeout=1.0), search, kube_config=kube_config
            ) as ep, httpx2.AsyncClient(timeout=20) as http:
                started = time.monotonic()
                answer = await http.post(ep.url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"})
                took = time.monotonic() - started
    finally:
        if hanging is not None:
            hanging.close()
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert "cannot be checked right now" in answer.json()["error_description"]
    assert token not in answer.text and "mcp-session-id" not in answer.headers
    assert took < 10
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert token not in logged
    if failure == "no RBAC for reviews":
        assert "grant it create on tokenreviews.authentication.k8s.io" in logged
    else:
        assert "cannot reach the API server" in logged


class _GatedApi(KubeApi):
    """The real API server, except that TokenReviews of one token wait for a gate: one caller
    whose review is slow (a fault the real API server does not produce on demand)."""

    def __init__(self, inner: KubeApi, slow_token: str) -> None:
        super().__init__(inner.configuration, timeout=inner.timeout)
        self.slow_token = slow_token
        self.gate = asyncio.Event()

    async def post(self, path: str, body: Any) -> dict[str, Any]:
        if path == TOKEN_REVIEWS and body["spec"]["token"] == self.slow_token:
            await self.gate.wait()
        return await super().post(path, body)


async def test_one_callers_slow_review_never_blocks_another(
    indexer: Indexer, farm: McpTestServerFarm, tenants: Tenants, operator_kubeconfig: str, review_rights: None
) -> None:
    await populate(indexer, farm, tenants)
    search = ToolSearch(indexer.engine, indexer.embedder)
    slow, fast = tenants.token("admin"), tenants.token("reader")
    api = _GatedApi(KubeApi(load_client_config(operator_kubeconfig), timeout=5), slow)
    auth = KubernetesAuth(
        api, search.workload_namespaces, audiences=[AUDIENCE],
        resource=AccessResource.parse("mcpservers.mcp-optimizer.dev"), ttl=30, cache_size=100,
    )
    try:
        waiting = [asyncio.create_task(auth.authenticate(slow, peer="p")) for _ in range(20)]
        await asyncio.sleep(0.2)
        caller = await asyncio.wait_for(auth.authenticate(fast, peer="p"), 10)
        assert caller.identity == f"kubernetes:{tenants.user('reader')}"
        assert caller.scope.namespaces == frozenset({tenants.a})
        assert not any(task.done() for task in waiting)
        api.gate.set()
        callers = await asyncio.gather(*waiting)
        assert {c.identity for c in callers} == {f"kubernetes:{tenants.user('admin')}"}
        # Twenty requests with one token while its review was pending: one TokenReview.
        assert auth.review_counts["token"] == 2
        with pytest.raises(Unauthorized):
            await auth.authenticate("forged", peer="p")
        with pytest.raises(Unauthorized):
            await auth.authenticate("forged", peer="p")
        assert auth.review_counts["token"] == 3  # the rejection is remembered too
    finally:
        await auth.aclose()
