"""Fixtures for tests against a real Kubernetes API server.

By default a private control plane (etcd + kube-apiserver, envtest style) is
started once per test session with ``scripts/control-plane`` and stopped at
the end. With ``USE_EXISTING_CLUSTER=1`` the cluster of ``$KUBECONFIG`` (or
``~/.kube/config``) is used instead.

See docs/control-plane.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE = REPO / "scripts" / "control-plane"
K8S_VERSION = "1.20.2"


def use_existing_cluster() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true", "yes")


def kube_apiserver_path() -> Path:
    env = os.environ.get("KUBE_APISERVER_BIN")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mcp-optimizer" / f"kube-apiserver-{K8S_VERSION}" / "kube-apiserver"


def _control_plane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CONTROL_PLANE), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="session")
def control_plane_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """State dir of the local control plane, or None with USE_EXISTING_CLUSTER=1."""
    if use_existing_cluster():
        yield None
        return
    binary = kube_apiserver_path()
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"kube-apiserver not found at {binary}. Run scripts/install-control-plane "
            "to build it (about 4 minutes, once), or set USE_EXISTING_CLUSTER=1 to use "
            "the cluster of $KUBECONFIG.",
            pytrace=False,
        )
    state = tmp_path_factory.mktemp("control-plane")
    t0 = time.monotonic()
    res = _control_plane("start", str(state))
    if res.returncode != 0:
        pytest.fail(
            f"scripts/control-plane start failed (exit {res.returncode}):\n{res.stderr}",
            pytrace=False,
        )
    sys.stderr.write(f"\n[control plane started in {time.monotonic() - t0:.1f}s, state {state}]\n")
    try:
        yield state
    finally:
        res = _control_plane("stop", str(state))
        if res.returncode != 0:
            sys.stderr.write(f"scripts/control-plane stop failed:\n{res.stderr}\n")


@pytest.fixture(scope="session")
def kubeconfig(control_plane_dir: Path | None) -> str:
    """Path of an admin (system:masters) kubeconfig."""
    if control_plane_dir is None:
        path = os.environ.get("KUBECONFIG") or os.path.join(os.path.expanduser("~"), ".kube", "config")
        path = path.split(os.pathsep)[0]
        if not os.path.isfile(path):
            pytest.fail(f"USE_EXISTING_CLUSTER=1 but kubeconfig {path} does not exist", pytrace=False)
        return path
    return str(control_plane_dir / "kubeconfig")


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane_dir: Path | None) -> str:
    """Kubeconfig authenticating as system:serviceaccount:mcp-optimizer-system:mcp-optimizer.

    Only available with the local control plane (a static token there).
    """
    if control_plane_dir is None:
        pytest.skip("operator_kubeconfig needs the local control plane (USE_EXISTING_CLUSTER is set)")
    return str(control_plane_dir / "operator.kubeconfig")


@pytest.fixture(scope="session")
def kube_api(kubeconfig: str) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient with admin rights."""
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    yield api
    api.close()


@pytest.fixture(scope="session")
def operator_api(operator_kubeconfig: str) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient acting as the operator's ServiceAccount."""
    api = config.new_client_from_config(config_file=operator_kubeconfig)  # type: ignore[no-untyped-call]
    yield api
    api.close()


def _namespace_name(nodename: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", nodename.lower()).strip("-")
    base = re.sub(r"^test-", "", base)[:50].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace with a unique name, deleted (not awaited) at teardown.

    A bare kube-apiserver has no namespace controller, so the namespace stays
    Terminating after deletion; nothing waits for it.
    """
    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.name)
    core.create_namespace(cast(Any, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as e:
        if e.status != 404:
            raise
