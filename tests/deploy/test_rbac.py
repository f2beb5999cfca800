"""Least-privilege RBAC, proven with the operator itself.

The chart is installed with Helm as release ``mcp-optimizer`` in ``mcp-optimizer-system``, so its
ServiceAccount is the control plane's operator token user. The operator then runs in-process as
that user (token auth, ``operator_kubeconfig``) and must do its whole job with the shipped role:
load a catalog, index a remote and a container server, follow a pod, link to the registry, write
status, post Events, and release its finalizer on deletion.

Then each rule is removed from the role in turn, and the part of the job that rule exists for is
shown to fail: every rule is needed, not just sufficient. Catalog ConfigMaps are read through a
Role in the catalog namespace only, and the MCP endpoint reviews callers' tokens with the auth
ClusterRole (TokenReview, SubjectAccessReview), each rule of which is needed too. Finally, a table
of SubjectAccessReviews shows what the operator may *not* do (no reads of Secrets, no ConfigMaps
outside catalog namespaces, no writes to ConfigMaps or pods, no deletes, no cluster-scoped access
beyond its resources and the reviews).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import httpx2
import pytest
from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.kubeapi import load_client_config
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.deploy.support import OPERATOR_NAMESPACE, OPERATOR_RELEASE, OPERATOR_SA, Helm
from tests.k8s.harness import IndexProbe, Kube, ListToolsCounter, OperatorThread, legacy_catalog
from tests.k8s.kubelet import set_pod_status
from tests.mcp.server_env import HEADERS, INIT, connect, payload

pytestmark = pytest.mark.kube

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
FINALIZER = "mcp-optimizer.dev/finalizer"
IMAGE = "ghcr.io/acme/pg-mcp:2"
WEATHER_TOOLS = [
    make_tool("get_forecast", "Get the weather forecast for a city for the next days"),
    make_tool("get_alerts", "Severe weather alerts for a US state"),
]
PG_TOOLS = [make_tool("query_database", "Run a read-only SQL query against the analytics Postgres database")]

#: How long a check that must fail is watched (after the operator started) before it counts as failed.
NEGATIVE_WINDOW = 8.0


# ------------------------------------------------------------------------------------------ scenario


@dataclass
class Job:
    """The operator's whole job in one namespace, and one named check per part of it."""

    ns: str
    kube: Kube
    kube_api: client.ApiClient
    probe: IndexProbe
    weather: McpTestServer
    pg: McpTestServer

    @property
    def remote(self) -> str:
        return workload_name(self.ns, "weather")

    @property
    def container(self) -> str:
        return workload_name(self.ns, "analytics")

    def create(self) -> None:
        """What users create: a catalog, a remote and a container server, its running pod."""
        self.kube.put_catalog(
            self.ns,
            "catalog",
            legacy_catalog(
                servers={
                    "pg-registry": {"image": IMAGE, "description": "Postgres analytics", "tools": ["query_database"]}
                },
                remote_servers={
                    "weather-registry": {"url": self.weather.url, "description": "Weather", "tools": ["get_forecast"]}
                },
            ),
        )
        self.kube.create_server(self.ns, "weather", {"url": self.weather.url})
        self.kube.create_server(self.ns, "analytics", {"image": IMAGE, "endpoint": self.pg.url})
        self.kube.create_pod(self.ns, "analytics-0", instance="analytics")
        set_pod_status(self.kube_api, self.ns, "analytics-0", "Running")

    # One check per capability (rule) --------------------------------------------------

    async def sees_servers(self) -> bool:
        """mcpservers list/watch: the MCPServers reach the index."""
        return await self.probe.workload(self.remote) is not None

    async def finalizer(self) -> bool:
        """mcpservers patch: kopf adds its finalizer (and progress annotations)."""
        server = self.kube.server(self.ns, "weather") or {}
        return FINALIZER in (server.get("metadata", {}).get("finalizers") or ())

    async def status(self) -> bool:
        """mcpservers/status patch: phase, tool count, registry link written back."""
        status = self.kube.server_status(self.ns, "weather")
        return status.get("phase") == "Running" and status.get("toolCount") == 2

    async def catalog(self) -> bool:
        """configmaps list/watch: the catalog is loaded and the remote server linked to it."""
        row = await self.probe.workload(self.remote)
        return row is not None and bool(row["registry_server_name"] == "weather-registry")

    async def pods(self) -> bool:
        """pods list/watch: the container server is RUNNING because its pod is."""
        return await self.probe.status(self.container) == "RUNNING"

    async def events(self) -> bool:
        """events create: the operator reports (e.g. CatalogLoaded, RegistryLinked)."""
        return bool(client.CoreV1Api(self.kube_api).list_namespaced_event(self.ns).items)

    CHECKS = ("sees_servers", "finalizer", "status", "catalog", "pods", "events")

    async def results(self) -> dict[str, bool]:
        return {name: bool(await getattr(self, name)()) for name in self.CHECKS}

    async def assert_done(self, how: str) -> None:
        """Every part of the job gets done (each check passes within 30 s); ``how`` names the setup."""
        for name in self.CHECKS:
            assert await wait_for(getattr(self, name), 30), f"{name} failed {how}"

    async def deleted(self) -> bool:
        """After deletion: the finalizer was released (object gone) and the rows removed."""
        return self.kube.server(self.ns, "weather") is None and await self.probe.workload(self.remote) is None


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return bool(await check())


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def op_settings(op_settings: Settings, namespace: str) -> Settings:
    """The harness's operator settings (loopback admitted, short timeouts), with the job's namespace
    as its catalog namespace too (the chart: catalogNamespaces)."""
    return replace(op_settings, catalog_namespaces=(namespace,))


def chart_values(job_namespace: str, **values: Any) -> dict[str, Any]:
    return {"catalogNamespaces": [job_namespace], **values}


@pytest.fixture
def servers() -> Iterator[tuple[McpTestServer, McpTestServer]]:
    with McpTestServer(WEATHER_TOOLS, name="weather") as weather, McpTestServer(PG_TOOLS, name="pg") as pg:
        yield weather, pg


@pytest.fixture
def job(
    namespace: str,
    kube: Kube,
    kube_api: client.ApiClient,
    probe: IndexProbe,
    servers: tuple[McpTestServer, McpTestServer],
) -> Iterator[Job]:
    weather, pg = servers
    yield Job(namespace, kube, kube_api, probe, weather, pg)
    kube.empty_namespace(namespace)


@contextlib.contextmanager
def operator_as_service_account(
    settings: Settings, operator_kubeconfig: str, embedder: Embedder, *, expect_ready: bool = True
) -> Iterator[OperatorThread]:
    """The operator in-process, authenticated as the ServiceAccount's token."""
    operator = OperatorThread(
        settings, kubeconfig=operator_kubeconfig, embedder=embedder, list_tools=ListToolsCounter()
    )
    try:
        try:
            operator.start(timeout=30 if expect_ready else 5)
        except (TimeoutError, RuntimeError):
            if expect_ready:
                raise
        yield operator
    finally:
        with contextlib.suppress(TimeoutError):
            operator.stop(timeout=30)


class AsServiceAccount(Protocol):
    """The ``as_service_account`` fixture: :func:`operator_as_service_account` with the harness's
    settings (``op_settings``) changed by ``changes``."""

    def __call__(self, *, expect_ready: bool = True, **changes: Any) -> AbstractContextManager[OperatorThread]:
        ...


@pytest.fixture
def as_service_account(op_settings: Settings, operator_kubeconfig: str, embedder: Embedder) -> AsServiceAccount:
    def run(*, expect_ready: bool = True, **changes: Any) -> AbstractContextManager[OperatorThread]:
        settings = replace(op_settings, **changes)
        return operator_as_service_account(settings, operator_kubeconfig, embedder, expect_ready=expect_ready)

    return run


def rbac(kube_api: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(kube_api)


def wait_until_authorized(kube_api: client.ApiClient, allowed: bool, **attrs: str) -> None:
    """RBAC changes reach the authorizer through an informer: wait until one decision flips."""
    deadline = time.monotonic() + 10
    while can(kube_api, **attrs) != allowed:
        if time.monotonic() > deadline:
            raise TimeoutError(f"authorizer did not reflect the role change for {attrs}")
        time.sleep(0.05)


def can(
    kube_api: client.ApiClient,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str = "",
    subresource: str = "",
    name: str = "",
) -> bool:
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": OPERATOR_USER,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{OPERATOR_NAMESPACE}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "group": group,
                    "namespace": namespace,
                    "subresource": subresource,
                    "name": name,
                },
            },
        }
    )
    return bool(review.status.allowed)


# ------------------------------------------------------------------------------------------ tests


async def test_operator_does_its_whole_job_with_the_shipped_cluster_role(
    helm: Helm,
    operator_namespace: str,
    kube_api: client.ApiClient,
    as_service_account: AsServiceAccount,
    job: Job,
) -> None:
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, chart_values(job.ns)):
        wait_until_authorized(kube_api, True, verb="watch", resource="mcpservers", group="mcp-optimizer.dev")
        wait_until_authorized(kube_api, True, verb="watch", resource="configmaps", namespace=job.ns)
        job.create()
        with as_service_account():
            await job.assert_done("with the full role")
            # Deletion goes through the finalizer (a patch) and removes the rows.
            job.kube.delete_server(job.ns, "weather")
            assert await wait_for(job.deleted, 30)


#: (role, rule index) in the shipped RBAC -> the check that must fail without it. "" is the
#: ClusterRole; "catalogs" the Role in the catalog namespace (here the job's).
RULE_CHECKS = {
    ("", 0): ("mcpservers list/watch", "sees_servers"),
    ("", 1): ("mcpservers patch", "finalizer"),
    ("", 2): ("mcpservers/status patch", "status"),
    ("", 3): ("pods list/watch", "pods"),
    ("", 4): ("events create", "events"),
    ("catalogs", 0): ("configmaps list/watch", "catalog"),
}


def _read_role(kube_api: client.ApiClient, which: str, namespace: str) -> Any:
    if which == "":
        return rbac(kube_api).read_cluster_role(OPERATOR_RELEASE)
    return rbac(kube_api).read_namespaced_role(f"{OPERATOR_RELEASE}-{which}", namespace)


def _replace_role(kube_api: client.ApiClient, which: str, namespace: str, role: Any) -> None:
    if which == "":
        rbac(kube_api).replace_cluster_role(OPERATOR_RELEASE, role)
    else:
        rbac(kube_api).replace_namespaced_role(f"{OPERATOR_RELEASE}-{which}", namespace, role)


@pytest.mark.parametrize(
    "rule", sorted(RULE_CHECKS), ids=[v[0].replace(" ", "-") for _, v in sorted(RULE_CHECKS.items())]
)
async def test_each_rule_is_needed(
    rule: tuple[str, int],
    helm: Helm,
    operator_namespace: str,
    kube_api: client.ApiClient,
    as_service_account: AsServiceAccount,
    job: Job,
) -> None:
    what, check = RULE_CHECKS[rule]
    which, index = rule
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, chart_values(job.ns)):
        role = _read_role(kube_api, which, job.ns)
        assert len(role.rules) == sum(1 for w, _ in RULE_CHECKS if w == which), "a rule was added: give it a check"
        removed = role.rules[index]
        label = f"{'/'.join(removed.resources)} {'/'.join(removed.verbs)}"
        assert label.replace("/", " ") == what.replace("/", " "), f"rule {index} is {label}, expected {what}"
        role.rules = [r for i, r in enumerate(role.rules) if i != index]
        _replace_role(kube_api, which, job.ns, role)
        wait_until_authorized(
            kube_api,
            False,
            verb=removed.verbs[0],
            resource=removed.resources[0].split("/")[0],
            subresource=[*removed.resources[0].split("/"), ""][1],
            group=removed.api_groups[0],
            namespace=job.ns,
        )

        job.create()
        with as_service_account(expect_ready=False):
            started = time.monotonic()
            # Give the operator every chance: the check must stay false for the whole window.
            assert not await wait_for(getattr(job, check), NEGATIVE_WINDOW), (
                f"{check} passed without the rule '{what}': the rule is not needed"
            )
            assert time.monotonic() - started >= NEGATIVE_WINDOW


def test_kopf_scanning_is_disabled() -> None:
    """With scanning on, kopf lists CRDs and Namespaces, which the least-privilege role does not
    grant, and retries each 403 for about a minute before falling back to the exact names."""
    from mcp_optimizer.operator.runner import operator_settings

    assert operator_settings(Settings()).scanning.disabled is True
    assert operator_settings(Settings(namespaces=("a", "b"))).scanning.disabled is True


async def test_operator_does_its_job_with_roles_in_listed_namespaces(
    helm: Helm,
    operator_namespace: str,
    kube_api: client.ApiClient,
    as_service_account: AsServiceAccount,
    job: Job,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """watchNamespaces: Roles in the listed namespaces only; the operator watches just those."""
    values = chart_values(job.ns, watchNamespaces=[job.ns])
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, values):
        # The only cluster-wide binding is the auth one: reviews, no objects.
        bindings = rbac(kube_api).list_cluster_role_binding(label_selector="app.kubernetes.io/instance=mcp-optimizer")
        assert [b.metadata.name for b in bindings.items] == [f"{OPERATOR_RELEASE}-auth"]
        wait_until_authorized(kube_api, True, verb="watch", resource="pods", namespace=job.ns)
        assert not can(kube_api, "list", "pods")  # not cluster-wide
        assert not can(kube_api, "list", "mcpservers", group="mcp-optimizer.dev", namespace="default")
        job.create()
        with as_service_account(namespaces=(job.ns,)):
            await job.assert_done("with the namespaced Roles")


ALLOWED = [
    ("list", "mcpservers", "mcp-optimizer.dev", ""),
    ("watch", "mcpservers", "mcp-optimizer.dev", ""),
    ("patch", "mcpservers", "mcp-optimizer.dev", ""),
    ("patch", "mcpservers/status", "mcp-optimizer.dev", ""),
    ("list", "pods", "", ""),
    ("watch", "pods", "", ""),
    ("create", "events", "", ""),
    ("create", "tokenreviews", "authentication.k8s.io", ""),
    ("create", "subjectaccessreviews", "authorization.k8s.io", ""),
]
DENIED = [
    # ConfigMaps only in catalog namespaces (the release namespace by default), not in any other.
    ("list", "configmaps", "", ""),
    ("watch", "configmaps", "", ""),
    ("get", "configmaps", "", ""),
    ("get", "secrets", "", ""),
    ("list", "secrets", "", ""),
    ("create", "mcpservers", "mcp-optimizer.dev", ""),
    ("delete", "mcpservers", "mcp-optimizer.dev", ""),
    ("update", "mcpservers", "mcp-optimizer.dev", ""),
    ("update", "mcpservers/status", "mcp-optimizer.dev", ""),
    ("patch", "configmaps", "", ""),
    ("create", "configmaps", "", ""),
    ("delete", "configmaps", "", ""),
    ("patch", "pods", "", ""),
    ("create", "pods", "", ""),
    ("delete", "pods", "", ""),
    ("create", "pods/exec", "", ""),
    ("patch", "events", "", ""),
    ("list", "namespaces", "", ""),
    ("list", "customresourcedefinitions", "apiextensions.k8s.io", ""),
    ("create", "clusterrolebindings", "rbac.authorization.k8s.io", ""),
    ("list", "clusterkopfpeerings", "kopf.dev", ""),
]


def test_access_review_table(helm: Helm, operator_namespace: str, kube_api: client.ApiClient, namespace: str) -> None:
    """What the shipped RBAC allows in a namespace that holds no catalogs, and a sample of what
    it must not; ConfigMaps are readable in the release namespace only."""
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE):
        wait_until_authorized(kube_api, True, verb="create", resource="events", namespace=namespace)
        wait_until_authorized(kube_api, True, verb="list", resource="configmaps", namespace=OPERATOR_NAMESPACE)
        decisions = {}
        for verb, resource, group, _ in ALLOWED + DENIED:
            res, _, sub = resource.partition("/")
            decisions[(verb, resource)] = can(kube_api, verb, res, group=group, namespace=namespace, subresource=sub)
        assert {k for k, v in decisions.items() if v} == {(v, r) for v, r, _, _ in ALLOWED}, json.dumps(
            {f"{v} {r}": ok for (v, r), ok in decisions.items()}, indent=1
        )
        assert can(kube_api, "watch", "configmaps", namespace=OPERATOR_NAMESPACE)
        assert not can(kube_api, "list", "configmaps")  # never cluster-wide
        assert not can(kube_api, "get", "configmaps", namespace=OPERATOR_NAMESPACE)


async def test_operator_runs_with_peering_rules(
    helm: Helm,
    operator_namespace: str,
    kube_api: client.ApiClient,
    kubeconfig: str,
    as_service_account: AsServiceAccount,
    job: Job,
) -> None:
    """peering.enabled: the extra kopf.dev rules are enough for kopf's peering (its heartbeat
    lands in the release's ClusterKopfPeering) and the job still gets done."""
    from tests.deploy.support import MANIFESTS, kubectl

    kubectl(kubeconfig, "apply", "-f", str(MANIFESTS / "optional" / "kopf-peering-crds.yaml"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=30s")
    objects = client.CustomObjectsApi(kube_api)
    values = chart_values(job.ns, peering={"enabled": True}, leaderElection={"enabled": False})
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, values):
        wait_until_authorized(kube_api, True, verb="watch", resource="clusterkopfpeerings", group="kopf.dev")
        job.create()
        with as_service_account(peering_name=OPERATOR_RELEASE, peering_priority=100):

            async def heartbeat() -> bool:
                peering = cast(dict[str, Any], objects.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", OPERATOR_RELEASE))
                return bool(peering.get("status"))

            assert await wait_for(heartbeat, 30), "kopf's keep-alive never reached the peering object"
            await job.assert_done("with peering on")


#: Rules of the shipped auth ClusterRole, in order.
AUTH_RULES = ["tokenreviews", "subjectaccessreviews"]


@pytest.mark.parametrize("removed", [None, *AUTH_RULES], ids=["full-role", *(f"without-{r}" for r in AUTH_RULES)])
async def test_the_endpoint_reviews_callers_with_the_shipped_auth_role(
    removed: str | None,
    helm: Helm,
    operator_namespace: str,
    kube_api: client.ApiClient,
    operator_kubeconfig: str,
    settings: Settings,
    indexer: Indexer,
    namespace: str,
) -> None:
    """As the operator's ServiceAccount, with the chart's auth ClusterRole, the MCP endpoint
    checks a caller's token and scopes it; without either rule every caller gets 503, never data."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent"}})
    rbac(kube_api).create_namespaced_role(
        namespace,
        {"metadata": {"name": "read"}, "rules": [
            {"apiGroups": ["mcp-optimizer.dev"], "resources": ["mcpservers"], "verbs": ["get"]}]},
    )
    rbac(kube_api).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}],
        },
    )
    await indexer.apply_workload(
        WorkloadSpec(
            f"{namespace}/weather", "weather", url="https://weather.example.com/mcp", status=WorkloadStatus.RUNNING,
            namespace=namespace, tools=WEATHER_TOOLS,
        )
    )
    token = core.create_namespaced_service_account_token(
        "agent", namespace, {"spec": {"audiences": ["mcp-optimizer"], "expirationSeconds": 3600}}
    ).status.token
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE):
        auth_role = f"{OPERATOR_RELEASE}-auth"
        group = {"tokenreviews": "authentication.k8s.io", "subjectaccessreviews": "authorization.k8s.io"}
        for resource in AUTH_RULES:
            wait_until_authorized(kube_api, True, verb="create", resource=resource, group=group[resource])
        role = rbac(kube_api).read_cluster_role(auth_role)
        assert [r.resources[0] for r in role.rules] == AUTH_RULES, "a rule was added: give it a case here"
        if removed is not None:
            role.rules = [r for r in role.rules if r.resources[0] != removed]
            rbac(kube_api).replace_cluster_role(auth_role, role)
            wait_until_authorized(kube_api, False, verb="create", resource=removed, group=group[removed])

        configured = replace(settings, auth_mode="kubernetes", mcp_host="127.0.0.1", mcp_port=0)
        search = ToolSearch(indexer.engine, indexer.embedder)
        async with McpEndpoint(configured, search, kube_config=load_client_config(operator_kubeconfig)) as endpoint:
            headers = {**HEADERS, "Authorization": f"Bearer {token}"}
            async with httpx2.AsyncClient(timeout=30) as http:
                answer = await http.post(endpoint.url, json=INIT, headers=headers)
            if removed is not None:
                assert answer.status_code == 503, answer.text
                return
            assert answer.status_code == 200, answer.text
            async with connect(endpoint.url, token=token) as session:
                listed = payload(await session.call_tool("list_tools", {}))
            assert [entry["server"] for entry in listed["servers"]] == [f"{namespace}/weather"]
