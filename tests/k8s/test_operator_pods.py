"""Pod phase -> index status (the search filter), the operator's fast path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from kubernetes.client import ApiClient

from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.k8s.harness import IndexProbe, Kube, OperatorFactory, eventually, within
from tests.k8s.kubelet import set_pod_status

pytestmark = pytest.mark.kube

TOOLS = [
    make_tool("query_database", "Run a read-only SQL query against the analytics Postgres database"),
    make_tool("list_tables", "List the tables of the analytics Postgres database"),
]
QUERY = "run an SQL query on postgres"
#: SC-13: a pod change reaches search in under a second.
FAST = 1.0


async def test_pod_phases_drive_search(
    ns: str, kube: Kube, kube_api: ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(TOOLS) as server:
        kube.create_server(ns, "analytics", {"image": "ghcr.io/acme/pg-mcp:2", "endpoint": server.url})
        kube.create_pod(ns, "analytics-0", instance="analytics")
        operator = start_operator([ns])
        counter = operator.list_tools
        assert counter is not None
        wl = workload_name(ns, "analytics")

        async def status() -> str | None:
            return await probe.status(wl)

        async def searchable() -> bool:
            return await probe.found(QUERY, wl, "query_database")

        # Pending: indexed but STOPPED, nothing searchable, tools not read.
        await eventually(lambda: kube.condition(ns, "analytics", "Ready").get("reason") == "PodPending")
        assert await status() == "STOPPED"
        assert counter.count(server.url) == 0

        # Running and Ready: RUNNING fast; first Running reads the tools once.
        set_pod_status(kube_api, ns, "analytics-0", "Running")
        took = await within(FAST * 5, lambda: _is(status, "RUNNING"), what="RUNNING")
        assert took < FAST, f"Running took {took:.2f}s to reach the index"
        await eventually(searchable, what="tools searchable")
        assert counter.count(server.url) == 1
        await eventually(lambda: kube.server_status(ns, "analytics").get("toolCount") == 2)
        assert kube.server_status(ns, "analytics")["phase"] == "Running"
        assert kube.condition(ns, "analytics", "ToolsIndexed")["status"] == "True"

        # CrashLoopBackOff: ERROR within a second, out of search, no tools/list.
        set_pod_status(kube_api, ns, "analytics-0", "Running", ready=False,
                       waiting_reason="CrashLoopBackOff", restart_count=3)
        took = await within(FAST * 5, lambda: _is(status, "ERROR"), what="ERROR")
        assert took < FAST, f"CrashLoopBackOff took {took:.2f}s to reach the index"
        assert not await searchable()
        await eventually(lambda: kube.condition(ns, "analytics", "Ready").get("reason") == "CrashLoopBackOff")
        assert kube.server_status(ns, "analytics")["phase"] == "Error"

        # Back to Running: RUNNING again with the stored tools; still no second tools/list.
        set_pod_status(kube_api, ns, "analytics-0", "Running")
        took = await within(FAST * 5, lambda: _is(status, "RUNNING"), what="RUNNING again")
        assert took < FAST
        assert await searchable()

        # Pod deleted: STOPPED, out of search.
        kube.delete_pod(ns, "analytics-0")
        took = await within(FAST * 5, lambda: _is(status, "STOPPED"), what="STOPPED")
        assert took < FAST, f"pod deletion took {took:.2f}s to reach the index"
        assert not await searchable()
        await eventually(lambda: kube.condition(ns, "analytics", "Ready").get("reason") == "NoPods")
        assert counter.count(server.url) == 1, "a pod phase change must not re-read tools"


async def _is(check: Callable[[], Awaitable[object]], expected: object) -> bool:
    return await check() == expected


async def test_selector_and_several_pods(
    ns: str, kube: Kube, kube_api: ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(TOOLS) as server:
        kube.create_server(ns, "pg", {
            "image": "ghcr.io/acme/pg-mcp:2",
            "endpoint": server.url,
            "podSelector": {"matchLabels": {"app": "pg-mcp"}},
        })
        wl = workload_name(ns, "pg")
        # Pods with the default label only are not selected by a custom selector.
        kube.create_pod(ns, "pg-0", instance="pg")
        start_operator([ns])
        await eventually(lambda: kube.condition(ns, "pg", "Ready").get("reason") == "NoPods")
        set_pod_status(kube_api, ns, "pg-0", "Running")

        kube.create_pod(ns, "pg-a", instance="other", labels={"app": "pg-mcp"})
        kube.create_pod(ns, "pg-b", instance="other", labels={"app": "pg-mcp"})
        set_pod_status(kube_api, ns, "pg-a", "Running", ready=False, waiting_reason="ImagePullBackOff")
        await eventually(lambda: _is(lambda: probe.status(wl), "ERROR"))
        # One Running and Ready pod is enough (e.g. during a rollout).
        set_pod_status(kube_api, ns, "pg-b", "Running")
        await eventually(lambda: _is(lambda: probe.status(wl), "RUNNING"))
        await eventually(lambda: probe.found(QUERY, wl))

        # A label change takes the Ready pod out of the selection: back to ERROR (pg-a still fails).
        kube.core.patch_namespaced_pod("pg-b", ns, {"metadata": {"labels": {"app": "elsewhere"}}})
        await eventually(lambda: _is(lambda: probe.status(wl), "ERROR"))
        kube.delete_pod(ns, "pg-a")
        await eventually(lambda: _is(lambda: probe.status(wl), "STOPPED"))
        assert not await probe.found(QUERY, wl)
