"""kopf peering: two replicas, the higher priority one works, the other takes over when it stops."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.k8s.conftest import REPO
from tests.k8s.harness import IndexProbe, Kube, OperatorThread, eventually

pytestmark = pytest.mark.kube

PEERING_CRDS = REPO / "deploy" / "manifests" / "optional" / "kopf-peering-crds.yaml"
PEERING = "mcp-optimizer"


@pytest.fixture(scope="module")
def peering_crds(kube_api: client.ApiClient) -> None:
    # Shipped with the manifests: its absence is a packaging bug, not a reason to skip.
    assert PEERING_CRDS.is_file(), f"{PEERING_CRDS} is missing"
    ext = client.ApiextensionsV1Api(kube_api)
    for body in yaml.safe_load_all(PEERING_CRDS.read_text()):
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise


async def test_the_standby_replica_takes_over(
    ns: str,
    kube: Kube,
    kube_api: client.ApiClient,
    op_settings: Settings,
    kubeconfig: str,
    embedder: Embedder,
    tmp_path: Path,
    peering_crds: None,
) -> None:
    objects = client.CustomObjectsApi(kube_api)

    def create_peering() -> bool:
        try:
            objects.create_namespaced_custom_object(
                "kopf.dev", "v1", ns, "kopfpeerings",
                {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}})
            return True
        except client.ApiException as exc:
            if exc.status == 404:  # the CRD is not served yet
                return False
            raise

    await eventually(create_peering, what="KopfPeering created")

    def peers() -> dict[str, Any]:
        body = cast(dict[str, Any], objects.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", PEERING))
        return dict(body.get("status") or {})

    base = replace(op_settings, namespaces=(ns,), peering_name=PEERING)
    active = OperatorThread(replace(base, db_path=tmp_path / "active.db", peering_priority=100),
                            kubeconfig=kubeconfig, embedder=embedder)
    standby = OperatorThread(replace(base, db_path=tmp_path / "standby.db", peering_priority=10),
                             kubeconfig=kubeconfig, embedder=embedder)
    active_index = IndexProbe(tmp_path / "active.db", embedder)
    standby_index = IndexProbe(tmp_path / "standby.db", embedder)
    try:
        active.start()
        standby.start()
        await eventually(lambda: len(peers()) == 2, what="both replicas in the peering object")

        with McpTestServer([make_tool("get_time", "Get the current time in a timezone")]) as server:
            kube.create_server(ns, "clock", {"url": server.url})
            wl = workload_name(ns, "clock")
            await eventually(lambda: active_index.found("what time is it", wl))
            assert await standby_index.workload(wl) is None

            # The active replica goes away: the standby one resumes and catches up.
            active.stop()
            await eventually(lambda: standby_index.found("what time is it", wl), timeout=30)
    finally:
        standby.stop()
        active.stop()
        await active_index.close()
        await standby_index.close()
