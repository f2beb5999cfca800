"""Fixtures for the deploy tests (Helm chart, manifests, RBAC).

They run against a control plane of their own: the control-plane fixtures of tests/k8s are
imported here, which makes pytest keep a separate session instance for this directory. The RBAC
tests bind and unbind roles for the operator's ServiceAccount user and must not meet the
bindings other suites create for the same user (nor leave theirs to others).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client

from tests.deploy.support import OPERATOR_NAMESPACE, Helm
from tests.k8s.conftest import (  # noqa: F401  (fixtures re-registered for this directory)
    control_plane_dir,
    kube_api,
    kubeconfig,
    namespace,
    operator_api,
    operator_kubeconfig,
)


@pytest.fixture(scope="session")
def helm(kubeconfig: str) -> Helm:  # noqa: F811
    Helm.require()
    return Helm(kubeconfig)


@pytest.fixture(scope="session")
def operator_namespace(kube_api: client.ApiClient) -> str:  # noqa: F811
    """The operator's namespace (mcp-optimizer-system), created once; namespaces never go away here."""
    core = client.CoreV1Api(kube_api)
    try:
        core.create_namespace(cast(Any, {"metadata": {"name": OPERATOR_NAMESPACE}}))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    return OPERATOR_NAMESPACE


@pytest.fixture
def namespaces(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[list[str]]:  # noqa: F811
    """Two more fresh namespaces (for listed-namespaces installs)."""
    import uuid

    core = client.CoreV1Api(kube_api)
    names = [f"watched-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    for name in names:
        core.create_namespace(cast(Any, {"metadata": {"name": name}}))
    yield names
    for name in names:
        try:
            core.delete_namespace(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
