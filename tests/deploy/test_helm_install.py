"""A real `helm install` (helm-sdkpy, the Helm Go library) of the chart into the control plane,
with several value sets; the objects that land are read back from the API server.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from mcp_optimizer.config import Settings, endpoint_host, resolve_auth_mode
from mcp_optimizer.mcp.auth import parse_tokens
from tests.deploy.support import Helm, HelmError, env_of, kubectl, objects

pytestmark = pytest.mark.kube

#: MCP_OPTIMIZER_* variables the chart sets that mcp_optimizer/config.py does not read yet
#: (the lead wires them; remove them from here when Settings reads them).
#: Variables the chart may set before config.py reads them (none now).
PENDING_SETTINGS: set[str] = set()


def _release() -> str:
    return f"r{uuid.uuid4().hex[:6]}"


def _labels(release: str) -> str:
    return f"app.kubernetes.io/instance={release}"


def _rbac(kube_api: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(kube_api)


def _deployment(kube_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    apps = client.AppsV1Api(kube_api)
    deployment = apps.read_namespaced_deployment(name, namespace)
    return cast(dict[str, Any], kube_api.sanitize_for_serialization(deployment))  # type: ignore[no-untyped-call]


def _settings_from(deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings.from_env() with the Deployment's environment: the chart and config.py agree."""
    env = env_of(deployment)
    ours = {k: v for k, v in env.items() if k.startswith("MCP_OPTIMIZER_")}
    source = Path(__import__("mcp_optimizer.config").config.__file__).read_text()
    unknown = {k for k in ours if f'"{k.removeprefix("MCP_OPTIMIZER_")}"' not in source}
    assert unknown <= PENDING_SETTINGS, (
        f"the chart sets variables config.py does not read: {unknown - PENDING_SETTINGS}"
    )
    for name in list(__import__("os").environ):
        if name.startswith("MCP_OPTIMIZER_"):
            monkeypatch.delenv(name)
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_install_all_namespaces(
    helm: Helm, kube_api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(release, namespace, {"exampleCatalog": {"enabled": True}}) as result:
        assert result["status"] == "deployed"
        assert "all namespaces" in result["notes"]
        assert helm.status(release, namespace)["status"] == "deployed"

        # CRD from the chart's crds/ folder, served.
        ext = client.ApiextensionsV1Api(kube_api)
        crd = ext.read_custom_resource_definition("mcpservers.mcp-optimizer.dev")
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
        assert crd.spec.names.short_names == ["mcps"]

        # Cluster scope: a ClusterRole bound to the release's ServiceAccount; ConfigMaps only
        # through a Role in the release namespace; the auth ClusterRole (reviews only).
        rbac = _rbac(kube_api)
        role = rbac.read_cluster_role(fullname)
        assert {tuple(r.resources) for r in role.rules} >= {("mcpservers",), ("mcpservers/status",), ("pods",)}
        assert all("configmaps" not in r.resources for r in role.rules)
        binding = rbac.read_cluster_role_binding(fullname)
        assert binding.role_ref.name == fullname
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", fullname, namespace)]
        roles = rbac.list_namespaced_role(namespace, label_selector=_labels(release)).items
        assert [(r.metadata.name, [tuple(rule.resources) for rule in r.rules]) for r in roles] == [
            (f"{fullname}-catalogs", [("configmaps",)]),
            (f"{fullname}-leader-election", [("leases",), ("leases",)]),
        ]
        auth_role = rbac.read_cluster_role(f"{fullname}-auth")
        assert {(r.resources[0], tuple(r.verbs)) for r in auth_role.rules} == {
            ("tokenreviews", ("create",)),
            ("subjectaccessreviews", ("create",)),
        }
        assert rbac.read_cluster_role_binding(f"{fullname}-auth").subjects[0].name == fullname
        core = client.CoreV1Api(kube_api)
        core.read_namespaced_service_account(fullname, namespace)

        # Deployment: probes, volumes (emptyDir without persistence), env understood by Settings.
        deployment = _deployment(kube_api, namespace, fullname)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == fullname
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["index"] and "emptyDir" in volumes["tmp"]
        settings = _settings_from(deployment, monkeypatch)
        assert settings.namespaces == ()
        assert str(settings.db_path) == "/var/lib/mcp-optimizer/index.db"
        assert str(settings.embedding_model_path) == "/opt/mcp-optimizer/model"
        assert settings.embedding_model_spec().name == Settings().embedding_model_name  # the image's model
        assert settings.search_mode == "hybrid"
        assert settings.liveness_endpoint == "http://0.0.0.0:8081/healthz"
        assert settings.resync_interval == 300
        assert settings.auth_tokens_file is None
        assert settings.peering_name is None
        assert (settings.mcp_port, settings.mcp_path) == (8080, "/mcp")
        # Secure by default: Kubernetes auth, so the endpoint may listen on every interface.
        assert resolve_auth_mode(settings, cluster=True) == "kubernetes"
        assert (settings.auth_audiences, settings.auth_access_resource) == (
            ("mcp-optimizer",),
            "mcpservers.mcp-optimizer.dev",
        )
        assert endpoint_host(settings, "kubernetes") == "0.0.0.0"
        assert settings.trusted_catalog_namespaces == (namespace,)
        assert (settings.session_idle_timeout, settings.sessions_per_identity, settings.max_sessions) == (
            300,
            64,
            1000,
        )
        policy = client.NetworkingV1Api(kube_api).read_namespaced_network_policy(fullname, namespace)
        assert [p.port for rule in policy.spec.ingress for p in rule.ports] == ["mcp", "metrics"]

        # Service: the MCP endpoint and metrics.
        service = core.read_namespaced_service(fullname, namespace)
        assert {(p.name, p.port, p.target_port) for p in service.spec.ports} == {
            ("mcp", 8080, "mcp"),
            ("metrics", 9090, "metrics"),
        }
        assert service.metadata.annotations["prometheus.io/port"] == "9090"

        # The example catalog: labelled, and a catalog the project's parser accepts.
        cm = core.read_namespaced_config_map("example-registry-catalog", namespace)
        assert cm.metadata.labels["mcp-optimizer.dev/registry-catalog"] == "true"
        from mcp_optimizer.catalog import parse_catalog

        parsed = parse_catalog(cm.data["registry.json"])
        assert {e.name for e in parsed.entries} == {"fetch", "osv", "aws-knowledge"}
        assert core.list_namespaced_persistent_volume_claim(namespace).items == []
        assert core.list_namespaced_secret(namespace, label_selector=_labels(release)).items == []

    # Uninstalled: the release's objects are gone; the CRD stays (Helm never deletes crds/).
    with pytest.raises(client.ApiException) as exc:
        _rbac(kube_api).read_cluster_role(fullname)
    assert exc.value.status == 404
    client.ApiextensionsV1Api(kube_api).read_custom_resource_definition("mcpservers.mcp-optimizer.dev")


def test_install_listed_namespaces(
    helm: Helm, kube_api: client.ApiClient, namespace: str, namespaces: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    values = {"watchNamespaces": namespaces, "exampleCatalog": {"enabled": True}}
    with helm.installed(release, namespace, values):
        rbac = _rbac(kube_api)
        # No cluster-wide access to any object: the one ClusterRole grants reviews only.
        cluster_roles = rbac.list_cluster_role(label_selector=_labels(release)).items
        assert [r.metadata.name for r in cluster_roles] == [f"{fullname}-auth"]
        assert {r.resources[0] for r in cluster_roles[0].rules} == {"tokenreviews", "subjectaccessreviews"}
        for ns in namespaces:
            role = rbac.read_namespaced_role(fullname, ns)
            assert {tuple(r.resources) for r in role.rules} >= {("mcpservers",), ("pods",), ("events",)}
            assert all("configmaps" not in r.resources for r in role.rules)
            binding = rbac.read_namespaced_role_binding(fullname, ns)
            assert binding.role_ref.kind == "Role"
            assert [(s.name, s.namespace) for s in binding.subjects] == [(fullname, namespace)]
        # The release namespace, not watched, is the catalog namespace: ConfigMaps, and Events on them.
        catalogs, election = rbac.list_namespaced_role(namespace, label_selector=_labels(release)).items
        assert election.metadata.name == f"{fullname}-leader-election"
        assert catalogs.metadata.name == f"{fullname}-catalogs"
        assert [(tuple(r.resources), tuple(r.verbs)) for r in catalogs.rules] == [
            (("configmaps",), ("list", "watch")),
            (("events",), ("create",)),
        ]

        settings = _settings_from(_deployment(kube_api, namespace, fullname), monkeypatch)
        assert settings.namespaces == tuple(namespaces)
        assert settings.trusted_catalog_namespaces == (namespace,)
        # The example catalog goes where the operator reads catalogs: the release namespace.
        core = client.CoreV1Api(kube_api)
        core.read_namespaced_config_map("example-registry-catalog", namespace)


def test_install_with_catalog_namespaces(
    helm: Helm, kube_api: client.ApiClient, namespace: str, namespaces: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """catalogNamespaces: a Role for ConfigMaps in each listed namespace (Events too where no
    watched-namespace Role grants them), never a ClusterRole; the example catalog may go there."""
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    watched, platform = namespaces
    values = {
        "watchNamespaces": [watched],
        "catalogNamespaces": [watched, platform],
        "exampleCatalog": {"enabled": True, "namespace": platform},
    }
    with helm.installed(release, namespace, values):
        rbac = _rbac(kube_api)
        for ns, events in ((namespace, True), (watched, False), (platform, True)):
            role = rbac.read_namespaced_role(f"{fullname}-catalogs", ns)
            resources = [r.resources[0] for r in role.rules]
            assert resources == (["configmaps", "events"] if events else ["configmaps"]), ns
        settings = _settings_from(_deployment(kube_api, namespace, fullname), monkeypatch)
        assert settings.trusted_catalog_namespaces == (namespace, watched, platform)
        client.CoreV1Api(kube_api).read_namespaced_config_map("example-registry-catalog", platform)

    with pytest.raises(HelmError, match=r"exampleCatalog\.namespace elsewhere is not a catalog namespace"):
        helm.install(_release(), namespace, {"exampleCatalog": {"enabled": True, "namespace": "elsewhere"}})


def test_install_with_persistence(helm: Helm, kube_api: client.ApiClient, namespace: str) -> None:
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    values = {"persistence": {"enabled": True, "size": "2Gi", "storageClass": "standard"}}
    with helm.installed(release, namespace, values):
        core = client.CoreV1Api(kube_api)
        pvc = core.read_namespaced_persistent_volume_claim(f"{fullname}-index", namespace)
        assert pvc.spec.resources.requests["storage"] == "2Gi"
        assert pvc.spec.access_modes == ["ReadWriteOnce"]
        assert pvc.spec.storage_class_name == "standard"
        pod = _deployment(kube_api, namespace, fullname)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["index"] == {"name": "index", "persistentVolumeClaim": {"claimName": f"{fullname}-index"}}

    # An existing claim: none created, the Deployment uses it.
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(release, namespace, {"persistence": {"enabled": True, "existingClaim": "my-index"}}):
        pvcs = client.CoreV1Api(kube_api).list_namespaced_persistent_volume_claim(
            namespace, label_selector=_labels(release)
        )
        assert pvcs.items == []
        pod = _deployment(kube_api, namespace, fullname)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["index"]["persistentVolumeClaim"] == {"claimName": "my-index"}


def test_install_with_auth_tokens(
    helm: Helm, kube_api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    tokens = [
        {"name": "team-a", "token": "a-very-secret-token", "groups": ["team-a"], "namespaces": ["team-a"]},
        {"name": "ops", "token_sha256": "ab" * 32},
    ]
    with helm.installed(release, namespace, {"auth": {"mode": "tokens", "tokens": tokens}}):
        core = client.CoreV1Api(kube_api)
        secret = core.read_namespaced_secret(f"{fullname}-auth", namespace)
        document = base64.b64decode(secret.data["tokens.yaml"]).decode()
        assert yaml.safe_load(document) == {"tokens": tokens}

        deployment = _deployment(kube_api, namespace, fullname)
        settings = _settings_from(deployment, monkeypatch)
        assert str(settings.auth_tokens_file) == "/etc/mcp-optimizer/auth/tokens.yaml"
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["auth"]["secret"]["secretName"] == f"{fullname}-auth"
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["auth"]["mountPath"] == "/etc/mcp-optimizer/auth"
        assert mounts["auth"]["readOnly"] is True
        assert "checksum/auth" in deployment["spec"]["template"]["metadata"]["annotations"]

        # The mounted file is one the MCP endpoint accepts.
        assert len(parse_tokens(document, source="secret")) == 2
        assert resolve_auth_mode(settings, cluster=True) == "tokens"
        # No review rights in tokens mode.
        assert [r.metadata.name for r in _rbac(kube_api).list_cluster_role(label_selector=_labels(release)).items] == [
            fullname
        ]

    # An existing Secret: none created, the Deployment mounts it.
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(
        release, namespace, {"auth": {"mode": "tokens", "existingSecret": "my-tokens", "key": "t.yaml"}}
    ):
        core = client.CoreV1Api(kube_api)
        assert core.list_namespaced_secret(namespace, label_selector=_labels(release)).items == []
        deployment = _deployment(kube_api, namespace, fullname)
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["auth"]["secret"] == {
            "secretName": "my-tokens",
            "items": [{"key": "t.yaml", "path": "t.yaml"}],
            "defaultMode": 420,
        }
        assert env_of(deployment)["MCP_OPTIMIZER_AUTH_TOKENS_FILE"] == "/etc/mcp-optimizer/auth/t.yaml"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"mode": "tokens"}, r"auth\.mode=tokens needs auth\.existingSecret or at least one entry in auth\.tokens"),
        ({"enabled": True}, r"auth\.enabled was replaced by auth\.mode: kubernetes"),
        ({"enabled": False}, r"auth\.enabled was replaced by auth\.mode"),
        ({"mode": "open"}, r'auth\.mode must be kubernetes, tokens or none, not "open"'),
    ],
)
def test_auth_values_that_cannot_work_are_refused(
    helm: Helm, namespace: str, auth: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError, match=message):
        helm.install(_release(), namespace, {"auth": auth})


def test_no_auth_must_be_chosen_and_then_listens_on_loopback(
    helm: Helm, kube_api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(release, namespace, {"auth": {"mode": "none"}}) as result:
        deployment = _deployment(kube_api, namespace, fullname)
        assert "MCP_OPTIMIZER_MCP_HOST" not in env_of(deployment)
        settings = _settings_from(deployment, monkeypatch)
        assert resolve_auth_mode(settings, cluster=True) == "none"
        assert endpoint_host(settings, "none") == "127.0.0.1"
        assert "Auth: NONE" in result["notes"] and "port-forward deploy/" in result["notes"]
        assert _rbac(kube_api).list_cluster_role(label_selector=_labels(release)).items[0].metadata.name == fullname
    # Told otherwise: the network, and the notes say what that means.
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(release, namespace, {"auth": {"mode": "none"}, "mcp": {"host": "0.0.0.0"}}) as result:
        settings = _settings_from(_deployment(kube_api, namespace, fullname), monkeypatch)
        assert endpoint_host(settings, "none") == "0.0.0.0"
        assert "Anyone who reaches 0.0.0.0:8080 sees and calls every server" in result["notes"]


def test_network_policy_values(helm: Helm, kube_api: client.ApiClient, namespace: str) -> None:
    networking = client.NetworkingV1Api(kube_api)
    release = _release()
    agents = {"namespaceSelector": {"matchLabels": {"team": "agents"}}}
    values = {"networkPolicy": {"mcpFrom": [agents], "metricsFrom": []}}
    with helm.installed(release, namespace, values):
        (policy,) = networking.list_namespaced_network_policy(namespace, label_selector=_labels(release)).items
        assert policy.spec is not None and policy.spec.ingress is not None
        (rule,) = policy.spec.ingress
        assert [p.port for p in rule.ports] == ["mcp"]
        assert rule._from[0].namespace_selector.match_labels == {"team": "agents"}

    # Nobody at all: an explicit empty ingress (deny), never a rule with an empty "from" (allow all).
    release = _release()
    with helm.installed(release, namespace, {"networkPolicy": {"mcpFrom": [], "metricsFrom": []}}):
        (policy,) = networking.list_namespaced_network_policy(namespace, label_selector=_labels(release)).items
        assert policy.spec.policy_types == ["Ingress"] and not policy.spec.ingress

    release = _release()
    with helm.installed(release, namespace, {"networkPolicy": {"enabled": False}}):
        assert networking.list_namespaced_network_policy(namespace, label_selector=_labels(release)).items == []


def test_install_with_peering(
    helm: Helm,
    kube_api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    namespaces: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Peering: kopf's CRDs come first (deploy/manifests/optional), then the chart's peering
    objects and the RBAC rules for them, cluster-wide and per namespace."""
    # That file only: optional/ also holds the ToolHive role, which would then not be Helm's.
    crds = Path(__file__).parents[2] / "deploy/manifests/optional/kopf-peering-crds.yaml"
    kubectl(kubeconfig, "apply", "-f", str(crds))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
        "--timeout=30s",
    )
    objects_api = client.CustomObjectsApi(kube_api)
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    peering = {"peering": {"enabled": True}, "leaderElection": {"enabled": False}}
    with helm.installed(release, namespace, peering):
        objects_api.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", fullname)
        role = _rbac(kube_api).read_cluster_role(fullname)
        peering_rules = [r for r in role.rules if r.api_groups == ["kopf.dev"]]
        assert {(tuple(r.verbs), tuple(r.resource_names or ())) for r in peering_rules} == {
            (("list", "watch"), ()),
            (("patch",), (fullname,)),
        }
        settings = _settings_from(_deployment(kube_api, namespace, fullname), monkeypatch)
        assert settings.peering_name == fullname

    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(release, namespace, {**peering, "watchNamespaces": namespaces}):
        for ns in namespaces:
            objects_api.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", fullname)
            ns_role = _rbac(kube_api).read_namespaced_role(fullname, ns)
            assert any(r.resources == ["kopfpeerings"] for r in ns_role.rules)
    assert objects(Path(__file__).parents[2].joinpath("deploy/manifests/optional/kopf-peering-crds.yaml").read_text())
