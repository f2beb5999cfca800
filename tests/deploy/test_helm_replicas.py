"""The chart's replica story (issue 13): SQLite keeps one pod; a shared database from a Secret
brings replicas, RollingUpdate with maxUnavailable 0, a PodDisruptionBudget and session affinity;
leader election on a Lease the operator may touch in its own namespace only. Real `helm install`
on the test control plane, objects read back from the API server."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from kubernetes import client

from mcp_optimizer.config import Settings
from tests.deploy.support import Helm, HelmError, env_of, objects

pytestmark = pytest.mark.kube

#: A URL with a password: it must never appear in values, the manifest or the Deployment.
SECRET_URL = "postgresql+psycopg://optimizer:s3cret-pw@db.example:5432/index"


def _release() -> str:
    return f"r{uuid.uuid4().hex[:6]}"


def _deployment(kube_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found = client.AppsV1Api(kube_api).read_namespaced_deployment(name, namespace)
    body: dict[str, Any] = kube_api.sanitize_for_serialization(found)  # type: ignore[no-untyped-call]
    return body


def _settings_from(deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("MCP_OPTIMIZER_"):
            monkeypatch.delenv(name)
    for name, value in env_of(deployment).items():
        if name.startswith("MCP_OPTIMIZER_") and value != "<from>":
            monkeypatch.setenv(name, value)
    return Settings.from_env()


def _allowed(kube_api: client.ApiClient, user: str, namespace: str, verb: str, name: str | None = None) -> bool:
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user,
        resource_attributes=client.V1ResourceAttributes(
            group="coordination.k8s.io", resource="leases", namespace=namespace, verb=verb, name=name),
    ))
    answer = client.AuthorizationV1Api(kube_api).create_subject_access_review(review)
    return bool(answer.status is not None and answer.status.allowed)


@pytest.mark.parametrize("values", [{"replicaCount": 2}, {"replicaCount": 3, "persistence": {"enabled": True}}])
def test_sqlite_keeps_one_replica(helm: Helm, namespace: str, values: dict[str, Any]) -> None:
    with pytest.raises(HelmError, match=r"replicaCount \d needs a shared database: the embedded SQLite index is one "
                                        r"pod's file\. Set database\.existingSecret"):
        helm.install(_release(), namespace, values)


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": 2, "database": {"existingSecret": "db"}, "leaderElection": {"enabled": False}},
     r"replicaCount above 1 needs leaderElection\.enabled"),
    ({"peering": {"enabled": True}}, r"peering\.enabled and leaderElection\.enabled are two ways"),
])
def test_values_with_two_writers_are_refused(helm: Helm, namespace: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        helm.install(_release(), namespace, values)


def test_default_install_is_one_pod_with_leader_election(
    helm: Helm, kube_api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    with helm.installed(release, namespace) as result:
        deployment = _deployment(kube_api, namespace, fullname)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 30
        assert {v["name"] for v in pod["volumes"]} >= {"index"}
        settings = _settings_from(deployment, monkeypatch)
        assert settings.leader_election and settings.lease_name == f"{fullname}-writer"
        assert settings.lease_namespace == namespace
        assert (settings.lease_duration, settings.lease_renew_deadline, settings.lease_retry_period) == (15, 10, 2)
        assert settings.shutdown_delay == 5 and str(settings.db_path) == "/var/lib/mcp-optimizer/index.db"
        kinds = {d["kind"] for d in objects(result["manifest"])}
        assert "PodDisruptionBudget" not in kinds
        service = client.CoreV1Api(kube_api).read_namespaced_service(fullname, namespace)
        assert service.spec is not None and service.spec.session_affinity == "None"
        # The Lease rights: create in the release namespace, get/update of its own Lease only.
        user = f"system:serviceaccount:{namespace}:{fullname}"
        assert _allowed(kube_api, user, namespace, "create")
        assert _allowed(kube_api, user, namespace, "get", f"{fullname}-writer")
        assert _allowed(kube_api, user, namespace, "update", f"{fullname}-writer")
        assert not _allowed(kube_api, user, namespace, "update", "kube-controller-manager")
        assert not _allowed(kube_api, user, namespace, "delete", f"{fullname}-writer")
        assert not _allowed(kube_api, user, "kube-system", "create")
        assert not _allowed(kube_api, user, "kube-system", "get", f"{fullname}-writer")

    release = _release()
    with helm.installed(release, namespace, {"leaderElection": {"enabled": False}}) as result:
        deployment = _deployment(kube_api, namespace, f"{release}-mcp-optimizer")
        assert not _settings_from(deployment, monkeypatch).leader_election
        assert not [d for d in objects(result["manifest"]) if d["metadata"]["name"].endswith("-leader-election")]


def test_shared_database_brings_replicas_and_no_downtime_rollouts(
    helm: Helm, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="index-db"), string_data={"dsn": SECRET_URL}))
    release = _release()
    fullname = f"{release}-mcp-optimizer"
    values = {"replicaCount": 3, "database": {"existingSecret": "index-db", "key": "dsn"},
              "persistence": {"enabled": True}}
    with helm.installed(release, namespace, values) as result:
        assert "s3cret" not in json.dumps(result)
        deployment = _deployment(kube_api, namespace, fullname)
        assert "s3cret" not in json.dumps(deployment)
        assert deployment["spec"]["replicas"] == 3
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        (db,) = [e for e in container["env"] if e["name"] == "MCP_OPTIMIZER_DB"]
        assert db == {"name": "MCP_OPTIMIZER_DB", "valueFrom": {"secretKeyRef": {"name": "index-db", "key": "dsn"}}}
        # No index file, so no index volume and no claim, whatever persistence says.
        assert "index" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert not core.list_namespaced_persistent_volume_claim(namespace).items
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        (budget,) = [d for d in objects(result["manifest"]) if d["kind"] == "PodDisruptionBudget"]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        service = core.read_namespaced_service(fullname, namespace)
        assert service.spec is not None and service.spec.session_affinity == "ClientIP"
