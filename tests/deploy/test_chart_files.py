"""The chart and manifests as files: CRD copies, Helm lint, least-privilege RBAC, the Dockerfile.

No cluster needed (Helm lint runs offline).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import CHART, MANIFESTS, REPO, Helm, by_kind, objects

ALLOWED_VERBS = {"list", "watch", "patch", "create", "get", "update"}


def test_chart_crds_are_the_top_level_crds() -> None:
    """deploy/helm/mcp-optimizer/crds/ is a byte-identical copy of crds/ (scripts/sync-crds)."""
    top = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top and chart == top, "run scripts/sync-crds"
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"{name} differs: run scripts/sync-crds"
        )
    res = subprocess.run([str(REPO / "scripts" / "sync-crds"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_manifest_crds_are_the_top_level_crds() -> None:
    rendered = objects((MANIFESTS / "10-crds.yaml").read_text())
    top = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    assert rendered == top, "run scripts/render-manifests"


def test_helm_lint_passes() -> None:
    Helm.require()
    result = Helm(None).lint()
    assert result["TotalChartsLinted"] == 1
    assert not result.get("Errors"), result
    # Severity: 1 info (e.g. "icon is recommended"), 2 warning, 3+ error.
    serious = [m for m in result.get("Messages") or () if m.get("Severity", 0) >= 2]
    assert not serious, serious


def _rules(path: Path) -> list[dict[str, Any]]:
    docs = objects(path.read_text())
    return [r for kind in ("ClusterRole", "Role") for role in by_kind(docs, kind) for r in role["rules"]]


def test_rbac_has_no_wildcards_and_only_the_verbs_used() -> None:
    rules = _rules(MANIFESTS / "20-mcp-optimizer.yaml")
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in (rule.get(field) or ()), rule
        assert set(rule["verbs"]) <= ALLOWED_VERBS, rule
        assert "nonResourceURLs" not in rule
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("mcp-optimizer.dev", "mcpservers", "list"),
        ("mcp-optimizer.dev", "mcpservers", "watch"),
        ("mcp-optimizer.dev", "mcpservers", "patch"),
        ("mcp-optimizer.dev", "mcpservers/status", "patch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
        ("", "events", "create"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
        # Leader election: the one Lease (get and update by name only, see test_leader_election_rbac).
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"),
    }
    for rule in rules:
        if {"get", "update"} & set(rule["verbs"]):
            assert rule["resources"] == ["leases"] and rule["resourceNames"] == ["mcp-optimizer-writer"], rule


def test_configmaps_are_readable_only_in_the_catalog_namespace() -> None:
    """Catalog trust: no ClusterRole touches ConfigMaps; one Role does, in the release namespace."""
    docs = objects((MANIFESTS / "20-mcp-optimizer.yaml").read_text())
    for role in by_kind(docs, "ClusterRole"):
        assert all("configmaps" not in rule["resources"] for rule in role["rules"]), role["metadata"]["name"]
    readers = [r for r in by_kind(docs, "Role") if any("configmaps" in rule["resources"] for rule in r["rules"])]
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in readers] == [
        ("mcp-optimizer-catalogs", "mcp-optimizer-system")
    ]


def test_default_install_is_secure() -> None:
    """Kubernetes auth on, the endpoint on the network only behind it, a NetworkPolicy in front."""
    docs = objects((MANIFESTS / "20-mcp-optimizer.yaml").read_text())
    (deployment,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MCP_OPTIMIZER_AUTH_MODE"] == "kubernetes"
    assert env["MCP_OPTIMIZER_AUTH_AUDIENCES"] == "mcp-optimizer"
    assert "MCP_OPTIMIZER_MCP_HOST" not in env  # chosen by the auth mode: every interface, behind auth
    assert "MCP_OPTIMIZER_AUTH_TOKENS_FILE" not in env
    (auth_role,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "mcp-optimizer-auth"]
    assert [(rule["resources"], rule["verbs"]) for rule in auth_role["rules"]] == [
        (["tokenreviews"], ["create"]),
        (["subjectaccessreviews"], ["create"]),
    ]

    (policy,) = by_kind(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in spec["ingress"]}
    assert set(by_port) == {"mcp", "metrics"}
    assert by_port["mcp"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"mcp-optimizer.dev/client": "true"}}}
    ]
    assert by_port["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert set(by_port) <= container_ports


def test_toolhive_rbac_is_read_only() -> None:
    """The optional ToolHive role: list and watch on ToolHive's server resources, nothing else."""
    rules = _rules(MANIFESTS / "optional" / "toolhive-rbac.yaml")
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("toolhive.stacklok.dev", resource, verb)
        for resource in ("mcpservers", "mcpremoteproxies", "mcpserverentries", "mcptoolconfigs")
        for verb in ("list", "watch")
    }


def test_deployment_is_hardened() -> None:
    docs = objects((MANIFESTS / "20-mcp-optimizer.yaml").read_text())
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/var/lib/mcp-optimizer"} <= mounts
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "limits" in c["resources"] and "requests" in c["resources"]


def test_dockerfile_runs_the_operator_as_non_root_with_the_model_baked_in() -> None:
    text = (REPO / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert re.search(r'^ENTRYPOINT \["mcp-optimizer", "run"\]$', final, re.M)
    user = re.findall(r"^USER (\S+)$", final, re.M)
    assert user and user[-1] not in ("root", "0", "0:0")
    assert "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH=/opt/mcp-optimizer/model" in final
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["embedding"]["modelPath"] == "/opt/mcp-optimizer/model"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.parametrize("doc", ["docs/kind.md", ".github/workflows/e2e.yaml"])
def test_docs_and_ci_workflow_exist(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert "USE_EXISTING_CLUSTER" in text
    if doc.endswith(".yaml"):
        workflow = yaml.safe_load(text)
        assert workflow["jobs"]
