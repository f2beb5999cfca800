"""deploy/manifests/: every file passes `kubectl apply --dry-run=server`, and the plain manifests
describe the same objects as the chart rendered at its default values."""

from __future__ import annotations

import pytest

from tests.deploy.support import (
    MANIFESTS,
    OPERATOR_NAMESPACE,
    OPERATOR_RELEASE,
    Helm,
    key,
    kubectl,
    objects,
)

pytestmark = pytest.mark.kube

FILES = sorted(p.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.rglob("*.yaml"))


def test_manifest_files_are_there() -> None:
    assert FILES == [
        "00-namespace.yaml",
        "10-crds.yaml",
        "20-mcp-optimizer.yaml",
        "optional/kopf-peering-crds.yaml",
        "optional/toolhive-rbac.yaml",
    ]


@pytest.mark.parametrize("name", FILES)
def test_server_side_dry_run(name: str, kubeconfig: str, operator_namespace: str) -> None:
    """The API server (validation, admission, CRD schemas) accepts each file."""
    res = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", str(MANIFESTS / name))
    for doc in objects((MANIFESTS / name).read_text()):
        assert f"{doc['kind'].lower()}" in res.stdout.lower().replace(".", " ").replace("/", " "), res.stdout
    assert "(server dry run)" in res.stdout


def test_directory_applies_as_documented(kubeconfig: str, operator_namespace: str) -> None:
    """`kubectl apply -f deploy/manifests/` (the documented command) in one go."""
    res = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", str(MANIFESTS))
    assert res.stdout.count("(server dry run)") == sum(len(objects(p.read_text())) for p in MANIFESTS.glob("*.yaml"))


def test_manifests_agree_with_the_chart(helm: Helm, operator_namespace: str) -> None:
    """Object by object, the plain manifests are the chart's rendering at default values
    (release mcp-optimizer in mcp-optimizer-system); scripts/render-manifests regenerates them."""
    plain = objects((MANIFESTS / "20-mcp-optimizer.yaml").read_text())
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE) as release:
        rendered = objects(release["manifest"])
    assert [key(d) for d in plain] == [key(d) for d in rendered], "run scripts/render-manifests"
    for ours, theirs in zip(plain, rendered, strict=True):
        assert ours == theirs, f"{key(ours)} differs from the chart: run scripts/render-manifests"
    (namespace,) = objects((MANIFESTS / "00-namespace.yaml").read_text())
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == OPERATOR_NAMESPACE
    assert {d["metadata"].get("namespace") for d in plain} <= {OPERATOR_NAMESPACE, None}


def test_toolhive_rbac_manifest_agrees_with_the_chart(helm: Helm, operator_namespace: str) -> None:
    """optional/toolhive-rbac.yaml is the chart's ToolHive RBAC with toolhive.enabled=true."""
    plain = objects((MANIFESTS / "optional" / "toolhive-rbac.yaml").read_text())
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE, {"toolhive": {"enabled": True}}) as release:
        rendered = [d for d in objects(release["manifest"]) if d["metadata"]["name"].endswith("-toolhive")]
    assert [key(d) for d in plain] == [key(d) for d in rendered], "run scripts/render-manifests"
    assert plain == rendered, "run scripts/render-manifests"
    assert [d["kind"] for d in plain] == ["ClusterRole", "ClusterRoleBinding"]


EXAMPLES = MANIFESTS.parent / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_dry_run(name: str, kubeconfig: str, helm: Helm, operator_namespace: str) -> None:
    """The quickstart's example catalog and MCPServers validate against the installed CRD."""
    with helm.installed(OPERATOR_RELEASE, OPERATOR_NAMESPACE):  # the CRD comes with the chart
        res = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", str(EXAMPLES / name))
    assert res.stdout.count("(server dry run)") == len(objects((EXAMPLES / name).read_text()))
