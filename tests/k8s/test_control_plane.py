"""Smoke tests of the test control plane itself (see docs/control-plane.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
from kubernetes import client

from .kubelet import set_pod_status

GROUP = "smoke.test.dev"
PLURAL = "widgets"
CRD_NAME = f"{PLURAL}.{GROUP}"
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def widget_crd(kube_api: client.ApiClient) -> Iterator[str]:
    ext = client.ApiextensionsV1Api(kube_api)
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as e:
        if e.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        return crd.status is not None and any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, what=f"CRD {CRD_NAME} Established")
    yield CRD_NAME
    ext.delete_custom_resource_definition(CRD_NAME)


def test_custom_resource_roundtrip(kube_api: client.ApiClient, namespace: str, widget_crd: str) -> None:
    co = client.CustomObjectsApi(kube_api)
    obj = {"apiVersion": f"{GROUP}/v1", "kind": "Widget",
           "metadata": {"name": "w1"}, "spec": {"size": 3}}

    # The CRD is Established but the REST handler may need a moment.
    def create() -> object:
        try:
            return co.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, obj)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    wait_for(create, what="custom resource endpoint")
    got = cast(dict[str, Any], co.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "w1"))
    assert got["spec"] == {"size": 3}

    co.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, PLURAL, "w1", {"status": {"phase": "Ready"}},
        _content_type="application/merge-patch+json")
    got = cast(dict[str, Any], co.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "w1"))
    assert got["status"] == {"phase": "Ready"}
    assert got["spec"] == {"size": 3}


def _make_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    return core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "smoke"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"},
                                {"name": "sidecar", "image": "busybox"}]},
    })


def _ready(pod: client.V1Pod) -> str | None:
    assert pod.status is not None
    return {c.type: c.status for c in pod.status.conditions or []}.get("Ready")


def test_pod_status_is_written_by_the_test(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    _make_pod(core, namespace, "p1")
    assert core.read_namespaced_pod("p1", namespace).status.phase == "Pending"

    set_pod_status(kube_api, namespace, "p1", "Running", ready=True)
    pod = core.read_namespaced_pod("p1", namespace)
    assert pod.status.phase == "Running"
    assert _ready(pod) == "True"
    assert [c.name for c in pod.status.container_statuses] == ["app", "sidecar"]
    assert all(c.ready and c.state.running for c in pod.status.container_statuses)

    set_pod_status(core, namespace, "p1", "Running", ready=False,
                   waiting_reason="CrashLoopBackOff", restart_count=4)
    pod = core.read_namespaced_pod("p1", namespace)
    assert pod.status.phase == "Running"
    assert _ready(pod) == "False"
    statuses = pod.status.container_statuses
    assert [c.state.waiting.reason for c in statuses] == ["CrashLoopBackOff"] * 2
    assert all(c.restart_count == 4 and not c.ready for c in statuses)


def test_operator_service_account_is_subject_to_rbac(
    kube_api: client.ApiClient, operator_api: client.ApiClient, namespace: str
) -> None:
    op_core = client.CoreV1Api(operator_api)
    with pytest.raises(client.ApiException) as exc:
        op_core.list_namespaced_secret(namespace)
    assert exc.value.status == 403  # authenticated (not 401) but not authorized

    # Grant it, and the same call succeeds: the token maps to the SA user.
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "read-secrets"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "read-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "mcp-optimizer",
                      "namespace": "mcp-optimizer-system"}],
    })

    def allowed() -> bool:
        try:
            op_core.list_namespaced_secret(namespace)
            return True
        except client.ApiException as e:
            if e.status == 403:
                return False
            raise

    wait_for(allowed, what="RoleBinding to take effect")
    # Still nothing outside that namespace.
    with pytest.raises(client.ApiException) as exc:
        op_core.list_secret_for_all_namespaces()
    assert exc.value.status == 403
