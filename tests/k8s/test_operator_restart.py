"""Level-triggered: restarts, changes made while the operator was down, order, scope, RBAC."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, cast

import pytest
from kubernetes import client

from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION, workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.k8s.harness import (
    MERGE_PATCH,
    IndexProbe,
    Kube,
    OperatorFactory,
    OperatorThread,
    column_is,
    equals,
    eventually,
    legacy_catalog,
)
from tests.k8s.kubelet import set_pod_status

pytestmark = pytest.mark.kube

TOOLS = [
    make_tool("translate_text", "Translate text between languages"),
    make_tool("detect_language", "Detect the language of a text"),
]
OTHER_TOOLS = [make_tool("convert_currency", "Convert an amount between currencies")]


def entry(url: str, description: str = "Translation service") -> dict[str, Any]:
    return {"url": url, "description": description, "tools": ["translate_text"]}


async def test_restart_sees_every_change_made_while_down(
    ns: str, kube: Kube, kube_api: client.ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with (
        McpTestServer(TOOLS) as a_server,
        McpTestServer(OTHER_TOOLS) as other,
        McpTestServer(TOOLS) as d_server,
        McpTestServer(TOOLS) as e_server,
    ):
        kube.put_catalog(ns, "c1", legacy_catalog(remote_servers={"translator": entry(a_server.url)}))
        kube.put_catalog(ns, "c2", legacy_catalog(remote_servers={"other": entry(other.url, "Currency")}))
        kube.create_server(ns, "a", {"url": a_server.url})
        kube.create_server(ns, "b", {"url": other.url})
        kube.create_server(ns, "d", {"image": "ghcr.io/acme/translator:1", "endpoint": d_server.url})
        kube.create_server(ns, "f", {"url": other.url, "group": "f"})
        kube.create_pod(ns, "d-0", instance="d")
        set_pod_status(kube_api, ns, "d-0", "Running")
        first = start_operator([ns], catalog_namespaces=(ns,))
        a, b, d, e, f = (workload_name(ns, n) for n in "abdef")

        await eventually(lambda: equals(probe.workload_names(), {a, b, d, f}))
        await eventually(lambda: probe.found("translate text", d))
        await eventually(lambda: kube.server_status(ns, "a").get("registryServer", {}).get("name") == "translator")
        await eventually(lambda: kube.server_status(ns, "b").get("registryServer", {}).get("name") == "other")
        first.stop()

        # While the operator is down:
        kube.delete_server(ns, "b")  # the finalizer holds it until the operator is back
        assert kube.server(ns, "b") is not None
        kube.patch_server(ns, "a", {"group": "translation"})  # a spec change
        kube.delete_configmap(ns, "c1")  # a's registry entry goes
        kube.core.patch_namespaced_config_map("c2", ns, {"metadata": {"labels": None}})  # no longer a catalog
        kube.put_catalog(ns, "c3", legacy_catalog(remote_servers={"translator-e": entry(e_server.url)}))
        kube.create_server(ns, "e", {"url": e_server.url})
        set_pod_status(kube_api, ns, "d-0", "Running", ready=False, waiting_reason="CrashLoopBackOff")
        # f is removed by force (finalizer stripped): only the garbage collector can notice.
        kube.objects.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "f", {"metadata": {"finalizers": None}}, _content_type=MERGE_PATCH)
        kube.delete_server(ns, "f")
        await eventually(lambda: kube.server(ns, "f") is None)

        start_operator([ns], catalog_namespaces=(ns,))
        await eventually(lambda: kube.server(ns, "b") is None, what="b's finalizer released")
        await eventually(lambda: equals(probe.workload_names(), {a, d, e}))
        await eventually(lambda: equals(probe.catalogs(), {f"{ns}/c3"}))
        await eventually(lambda: column_is(probe.workload(a), "group", "translation"))
        await eventually(lambda: column_is(probe.workload(a), "registry_server_name", None))
        await eventually(lambda: "registryServer" not in kube.server_status(ns, "a"))
        await eventually(lambda: column_is(probe.workload(e), "registry_server_name", "translator-e"))
        await eventually(lambda: column_is(probe.workload(d), "status", "ERROR"))
        assert not await probe.found("translate text", d)
        await eventually(lambda: kube.server_status(ns, "e").get("phase") == "Running")


async def test_final_state_does_not_depend_on_order(
    kube: Kube, start_operator: OperatorFactory, probe: IndexProbe, mcpserver_crd: str
) -> None:
    """The same cluster reached in three orders gives the same rows (S3.4 as a level, not an edge)."""
    spaces = [kube.fresh_namespace(f"order-{label}") for label in ("catalog-first", "server-first", "before-start")]
    servers = [McpTestServer(TOOLS).start() for _ in spaces]
    try:
        catalog_first, server_first, before_start = spaces
        def catalog(i: int) -> dict[str, Any]:
            return legacy_catalog(remote_servers={"translator": entry(servers[i].url)})

        kube.put_catalog(before_start, "registry", catalog(2))
        kube.create_server(before_start, "translator", {"url": servers[2].url})
        start_operator(spaces, catalog_namespaces=tuple(spaces))

        kube.put_catalog(catalog_first, "registry", catalog(0))
        await eventually(lambda: equals(probe.registry_servers(f"{catalog_first}/registry"), ["translator"]))
        kube.create_server(catalog_first, "translator", {"url": servers[0].url})

        kube.create_server(server_first, "translator", {"url": servers[1].url})
        await eventually(lambda: probe.found("translate text", workload_name(server_first, "translator")))
        kube.put_catalog(server_first, "registry", catalog(1))

        rows = []
        for space in spaces:
            wl = workload_name(space, "translator")
            await eventually(lambda wl=wl: column_is(probe.workload(wl), "registry_server_name", "translator"))
            await eventually(lambda wl=wl: column_is(probe.workload(wl), "status", "RUNNING"))
            row = await probe.workload(wl)
            assert row is not None
            tools = await probe.tool_updates(wl)
            rows.append((
                row["registry_server_name"], row["description"], row["embedding_context"], row["status"],
                row["server_embedding"], sorted(v.split("|")[1] for v in tools.values()),
            ))
        assert rows[0] == rows[1] == rows[2]
    finally:
        # Stopped first: kopf orphans the timers of objects whose finalizer is stripped (below).
        start_operator.stop_all()
        for server in servers:
            server.stop()
        for space in spaces:
            kube.empty_namespace(space)
            kube.core.delete_namespace(space)


async def test_watched_namespaces_only(
    kube: Kube, start_operator: OperatorFactory, probe: IndexProbe, mcpserver_crd: str
) -> None:
    spaces = [kube.fresh_namespace(f"scope-{i}") for i in range(7)]
    watched, ignored = spaces[:6], spaces[6]
    try:
        with McpTestServer(TOOLS) as server:
            for space in spaces:
                kube.create_server(space, "translator", {"url": server.url})
                kube.put_catalog(space, "registry", legacy_catalog(
                    remote_servers={f"translator-{space[-8:]}": entry(f"https://{space}.example.com/mcp")}))
            start_operator(watched, catalog_namespaces=tuple(watched))
            expected = {workload_name(space, "translator") for space in watched}
            await eventually(lambda: equals(probe.workload_names(), expected))
            await eventually(lambda: equals(probe.catalogs(), {f"{space}/registry" for space in watched}))
            for space in watched:
                await eventually(lambda space=space: kube.server_status(space, "translator").get("phase") == "Running")
            # Nothing from the unwatched namespace: no row, no status, no finalizer.
            assert kube.server_status(ignored, "translator") == {}
            assert not (kube.server(ignored, "translator") or {})["metadata"].get("finalizers")
            # Search can be restricted to namespaces.
            hits = await probe.search("translate text", namespaces=[watched[0]])
            assert {h.server for h in hits} == {workload_name(watched[0], "translator")}
    finally:
        start_operator.stop_all()
        for space in spaces:
            kube.empty_namespace(space)
            kube.core.delete_namespace(space)


#: The least the operator needs (the Helm chart grants these). Without list/watch on CRDs and
#: namespaces kopf logs that it cannot notice them change, and works with what exists at start.
OPERATOR_RULES = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
#: ConfigMaps only where catalogs are trusted: a Role there, never cluster-wide.
CATALOG_RULES = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
async def test_least_privilege_as_the_operators_service_account(
    ns: str,
    kube: Kube,
    kube_api: client.ApiClient,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    operator_kubeconfig: str,
    scope: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The operator works with exactly OPERATOR_RULES, cluster-wide and namespaced, and ConfigMap
    access only in its catalog namespace. A listed catalog namespace it has no Role in is
    reported and skipped; nothing else suffers."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    role = f"mcp-optimizer-test-{ns[-8:]}"
    rbac.create_cluster_role(cast(Any, {"metadata": {"name": role}, "rules": OPERATOR_RULES}))
    rbac.create_cluster_role_binding(cast(Any, {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "mcp-optimizer", "namespace": "mcp-optimizer-system"}],
    }))
    rbac.create_namespaced_role(ns, cast(Any, {"metadata": {"name": role}, "rules": CATALOG_RULES}))
    rbac.create_namespaced_role_binding(ns, cast(Any, {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "mcp-optimizer", "namespace": "mcp-optimizer-system"}],
    }))
    forbidden = kube.fresh_namespace("no-role")
    try:
        with McpTestServer(TOOLS) as server, caplog.at_level(logging.WARNING, logger="mcp_optimizer"):
            kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={"translator": entry(server.url)}))
            kube.put_catalog(forbidden, "registry", legacy_catalog(remote_servers={"other": entry(server.url)}))
            kube.create_server(ns, "translator", {"url": server.url})
            kube.create_server(ns, "broken", {"image": "ghcr.io/acme/x:1"})
            settings = replace(
                start_operator.base,
                namespaces=(ns,) if scope == "namespaced" else (),
                catalog_namespaces=(ns, forbidden),
            )
            operator = OperatorThread(settings, kubeconfig=operator_kubeconfig, embedder=start_operator.embedder)
            start_operator.started.append(operator)
            operator.start()
            await eventually(lambda: any(
                f"Catalog watch in namespace {forbidden} failed" in r.getMessage()
                and "has the operator a Role" in r.getMessage() for r in caplog.records))
            assert await probe.catalogs() == {f"{ns}/registry"}
            wl = workload_name(ns, "translator")
            await eventually(lambda: probe.found("translate text", wl))
            await eventually(lambda: kube.server_status(ns, "translator").get("registryServer", {}).get("name")
                             == "translator")
            await eventually(lambda: kube.has_event(ns, "broken", "InvalidSpec", "Warning"))
            kube.delete_server(ns, "translator")
            await eventually(lambda: kube.server(ns, "translator") is None)
            assert await probe.workload(wl) is None
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
        kube.empty_namespace(forbidden)
        kube.core.delete_namespace(forbidden)


