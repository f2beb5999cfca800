"""The chart's ToolHive interop: ``toolhive.enabled: auto|true|false`` and its read-only RBAC.

The first tests run before ToolHive's CRDs exist on this control plane (``auto`` grants nothing);
the module's ``toolhive_installed`` fixture then installs them (transformed for kube-apiserver
1.20, as in tests/k8s) and removes them again at the end, so that no later install meets them.
With them, the operator runs as the chart's ServiceAccount and indexes ToolHive's objects with
list/watch alone, and a table of SubjectAccessReviews shows it may not write them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.deploy.support import OPERATOR_NAMESPACE, OPERATOR_RELEASE, Helm, env_of
from tests.deploy.test_rbac import (  # the same helpers and fixtures as the main RBAC tests
    AsServiceAccount,
    Job,
    as_service_account,  # noqa: F401
    can,
    chart_values,
    job,  # noqa: F401
    op_settings,  # noqa: F401
    servers,  # noqa: F401
    wait_for,
    wait_until_authorized,
)
from tests.support import toolhive as th

pytestmark = pytest.mark.kube

TOOLHIVE_ROLE = f"{OPERATOR_RELEASE}-toolhive"
READ = {"list", "watch"}
RESOURCES = {"mcpservers", "mcpremoteproxies", "mcpserverentries", "mcptoolconfigs"}


def _rules(role: Any) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role.rules for g in rule.api_groups for r in rule.resources for v in rule.verbs}


def _toolhive_role(kube_api: client.ApiClient) -> Any | None:
    try:
        return client.RbacAuthorizationV1Api(kube_api).read_cluster_role(TOOLHIVE_ROLE)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _deployment_env(kube_api: client.ApiClient) -> dict[str, str]:
    apps = client.AppsV1Api(kube_api)
    deployment = apps.read_namespaced_deployment(OPERATOR_RELEASE, OPERATOR_NAMESPACE)
    return env_of(kube_api.sanitize_for_serialization(deployment))  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------------ before ToolHive


def test_auto_without_toolhive_grants_nothing(helm: Helm, operator_namespace: str, kube_api: client.ApiClient) -> None:
    assert not th.served_plurals(kube_api), "ToolHive's CRDs must not be on this control plane yet"
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE) as release:
        assert _toolhive_role(kube_api) is None
        assert "rbac-toolhive" not in release["manifest"]
        # The operator still looks (and picks ToolHive up once it is installed and the chart upgraded).
        assert _deployment_env(kube_api)["MCP_OPTIMIZER_TOOLHIVE"] == "auto"
        assert "helm upgrade to grant read access" in release["notes"]


def test_true_grants_read_access_before_toolhive_is_installed(
    helm: Helm, operator_namespace: str, kube_api: client.ApiClient
) -> None:
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, {"toolhive": {"enabled": True}}):
        role = _toolhive_role(kube_api)
        assert role is not None
        assert _rules(role) == {("toolhive.stacklok.dev", r, v) for r in RESOURCES for v in READ}
        binding = client.RbacAuthorizationV1Api(kube_api).read_cluster_role_binding(TOOLHIVE_ROLE)
        assert [(s.kind, s.name) for s in binding.subjects] == [("ServiceAccount", OPERATOR_RELEASE)]


def test_an_unknown_mode_is_refused(helm: Helm, operator_namespace: str) -> None:
    from tests.deploy.support import HelmError

    with pytest.raises(HelmError, match=r"toolhive\.enabled must be auto, true or false"):
        helm.install(OPERATOR_RELEASE, OPERATOR_NAMESPACE, {"toolhive": {"enabled": "sometimes"}})


# ------------------------------------------------------------------------------ with ToolHive


@pytest.fixture(scope="module")
def toolhive_installed(kube_api: client.ApiClient) -> Iterator[None]:
    th.install_crds(kube_api)
    yield
    th.remove_crds(kube_api)


def test_auto_with_toolhive_grants_read_access_only(
    helm: Helm, operator_namespace: str, kube_api: client.ApiClient, toolhive_installed: None
) -> None:
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE) as release:
        role = _toolhive_role(kube_api)
        assert role is not None, "auto did not see ToolHive's API"
        assert _rules(role) == {("toolhive.stacklok.dev", r, v) for r in RESOURCES for v in READ}
        assert "ToolHive: its MCPServers" in release["notes"]
        # The main role is untouched: the ToolHive rule is an object of its own.
        main = client.RbacAuthorizationV1Api(kube_api).read_cluster_role(OPERATOR_RELEASE)
        assert not any("toolhive.stacklok.dev" in rule.api_groups for rule in main.rules)


def test_false_grants_nothing_and_turns_the_operator_off(
    helm: Helm, operator_namespace: str, kube_api: client.ApiClient, toolhive_installed: None
) -> None:
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, {"toolhive": {"enabled": False}}) as release:
        assert _toolhive_role(kube_api) is None
        assert _deployment_env(kube_api)["MCP_OPTIMIZER_TOOLHIVE"] == "false"
        assert "ToolHive: off" in release["notes"]


def test_vmcp_groups_add_virtualmcpservers(
    helm: Helm, operator_namespace: str, kube_api: client.ApiClient, toolhive_installed: None
) -> None:
    values = {"toolhive": {"vmcpGroups": ["team-a/eng", "team-b/ops"]}}
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, values):
        role = _toolhive_role(kube_api)
        assert role is not None
        with_vmcp = RESOURCES | {"virtualmcpservers"}
        assert _rules(role) == {("toolhive.stacklok.dev", r, v) for r in with_vmcp for v in READ}
        assert _deployment_env(kube_api)["MCP_OPTIMIZER_TOOLHIVE_VMCP_GROUPS"] == "team-a/eng,team-b/ops"


def test_listed_namespaces_get_roles(
    helm: Helm, operator_namespace: str, kube_api: client.ApiClient, namespaces: list[str], toolhive_installed: None
) -> None:
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, {"watchNamespaces": namespaces}):
        rbac = client.RbacAuthorizationV1Api(kube_api)
        assert _toolhive_role(kube_api) is None  # no cluster-wide access
        for ns in namespaces:
            assert _rules(rbac.read_namespaced_role(TOOLHIVE_ROLE, ns)) == {
                ("toolhive.stacklok.dev", r, v) for r in RESOURCES for v in READ}
            assert rbac.read_namespaced_role_binding(TOOLHIVE_ROLE, ns).role_ref.name == TOOLHIVE_ROLE


#: (verb, resource): what the ToolHive role allows, and what it must not.
TOOLHIVE_ALLOWED = [(v, r) for r in sorted(RESOURCES) for v in sorted(READ)]
TOOLHIVE_DENIED = [
    ("get", "mcpservers"),
    ("create", "mcpservers"),
    ("update", "mcpservers"),
    ("patch", "mcpservers"),
    ("delete", "mcpservers"),
    ("patch", "mcpservers/status"),
    ("update", "mcpservers/status"),
    ("patch", "mcpremoteproxies"),
    ("patch", "mcpserverentries/status"),
    ("patch", "mcptoolconfigs"),
    ("list", "virtualmcpservers"),
    ("list", "mcpgroups"),
    ("list", "mcpexternalauthconfigs"),
]


def test_access_review_table(
    helm: Helm, operator_namespace: str, kube_api: client.ApiClient, namespace: str, toolhive_installed: None
) -> None:
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE):
        wait_until_authorized(kube_api, True, verb="watch", resource="mcpserverentries", group="toolhive.stacklok.dev")
        decisions = {}
        for verb, resource in TOOLHIVE_ALLOWED + TOOLHIVE_DENIED:
            res, _, sub = resource.partition("/")
            decisions[(verb, resource)] = can(kube_api, verb, res, group="toolhive.stacklok.dev",
                                              namespace=namespace, subresource=sub)
        assert {k for k, v in decisions.items() if v} == set(TOOLHIVE_ALLOWED), decisions


async def test_operator_indexes_toolhive_with_the_shipped_roles(
    helm: Helm,
    operator_namespace: str,
    kube_api: client.ApiClient,
    as_service_account: AsServiceAccount,  # noqa: F811
    job: Job,  # noqa: F811
    toolhive_installed: None,
) -> None:
    """The chart installed next to ToolHive (auto): the operator, as its ServiceAccount, does its
    own job and indexes ToolHive's MCPServer, whose object it leaves exactly as it was."""
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, chart_values(job.ns)), McpTestServer(
        [make_tool("fetch", "Fetch a web page and return it as markdown")]
    ) as proxy:
        wait_until_authorized(kube_api, True, verb="watch", resource="mcpservers", group="toolhive.stacklok.dev")
        job.create()
        (doc,) = th.example("mcpserver_fetch")
        th.apply(kube_api, job.ns, doc)
        th.set_status(kube_api, "MCPServer", job.ns, "fetch", phase="Ready", url=proxy.url)
        before = th.get(kube_api, "MCPServer", job.ns, "fetch")
        assert before is not None
        wl = workload_name(job.ns, "fetch", "MCPServer")
        try:
            with as_service_account():
                await job.assert_done("beside ToolHive")

                async def indexed() -> bool:
                    return await job.probe.found("fetch a web page", wl, "fetch")

                assert await wait_for(indexed, 30), "ToolHive's MCPServer was not indexed"
            after = th.get(kube_api, "MCPServer", job.ns, "fetch")
            assert after is not None
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
            assert not after["metadata"].get("finalizers") and not after["metadata"].get("annotations")
        finally:
            th.empty_namespace(kube_api, job.ns)
