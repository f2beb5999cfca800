"""The reconciler's ordering rules for ToolHive's objects, without a cluster.

A real index (the shared ``indexer`` fixture), a recording status writer that must never be
called, kopf's index played by a dict the test updates before each event (as kopf does), and a
``tools/list`` that can be held at a gate to make the races happen on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mcp_optimizer.ingest import Indexer
from mcp_optimizer.ingest.scheduler import WritePriority
from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.operator.mapping import ServerView
from mcp_optimizer.operator.toolhive_mapping import MCP_SERVER, ToolHiveOptions, parse_toolhive
from mcp_optimizer.operator.workloads import WorkloadReconciler

PROXY = "http://mcp-fetch-proxy.ns.svc.cluster.local:8080/mcp"
TOOLS = [{"name": "fetch", "description": "Fetch a URL and return its content", "inputSchema": {"type": "object"}}]


class NoWrites:
    """ToolHive's objects are never written: any status write fails the test."""

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        raise AssertionError(f"status written to {namespace}/{name}")


class GatedTools:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[str] = []
        self.tools = TOOLS

    async def __call__(
        self, endpoint: str, transport: str, timeout: float, *, namespace: str | None, policy: ClientPolicy
    ) -> list[dict[str, Any]]:
        self.calls.append(endpoint)
        answer = list(self.tools)  # what the proxy lists when asked, however long it takes to say it
        await self.gate.wait()
        return answer

    async def called(self, times: int) -> None:
        """Wait until ``tools/list`` was called ``times`` times (the read is then at the gate)."""
        for _ in range(600):
            if len(self.calls) >= times:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"tools/list called {len(self.calls)} times, expected {times}")


class Cluster:
    """kopf's index of ToolHive MCPServers: namespace -> views, updated before each event."""

    def __init__(self, reconciler: WorkloadReconciler) -> None:
        self.index: dict[str, list[ServerView]] = {"ns": []}
        self.reconciler = reconciler
        reconciler.attach(pods={}, servers={}, toolhive=[self.index])

    async def event(self, status: dict[str, Any] | None = None, **spec: Any) -> ServerView:
        body: dict[str, Any] = {
            "metadata": {"namespace": "ns", "name": "fetch", "uid": "u-1", "generation": 1},
            "spec": {"image": "ghcr.io/stackloklabs/gofetch/server", **spec},
        }
        if status is not None:
            body["status"] = status
        view = parse_toolhive(body, kind=MCP_SERVER, version="v1beta1", options=ToolHiveOptions())
        self.index["ns"] = [view]
        await self.reconciler.observe(view)
        return view


WL = "ns/mcpserver.toolhive/fetch"


@pytest.fixture
def tools() -> GatedTools:
    return GatedTools()


@pytest.fixture
async def reconciler(indexer: Indexer, tools: GatedTools) -> AsyncIterator[WorkloadReconciler]:
    """The reconciler over the real index, reading tools through ``tools``; closed afterwards."""
    reconciler = WorkloadReconciler(indexer, NoWrites(), mcp_timeout=1.0, list_tools=tools)  # type: ignore[arg-type]
    yield reconciler
    await reconciler.close()


@pytest.fixture
def cluster(reconciler: WorkloadReconciler) -> Cluster:
    return Cluster(reconciler)


async def settled(indexer: Any, status: str, tools: int) -> None:
    async def check() -> bool:
        row = await indexer.workloads.get_by_workload_name(WL)
        if row is None or row.status != status:
            return False
        return bool(await indexer.workload_tools.count_by_server(row.id) == tools)

    for _ in range(600):  # up to 30 s: the model is slow on a loaded machine
        if await check():
            return
        await asyncio.sleep(0.05)
    row = await indexer.workloads.get_by_workload_name(WL)
    raise AssertionError(f"expected {status} with {tools} tools, row is {row and row.status}")


async def test_ready_arriving_while_the_first_row_is_written_is_not_lost(
    indexer: Indexer, tools: GatedTools, cluster: Cluster
) -> None:
    """Objects are created without a status; ToolHive writes Ready a moment later. If the first
    (STOPPED) row is still being written then, Ready must still be acted on when it is done."""
    # The index is busy (a catalog being written, say): the first sync waits inside its write.
    async with indexer._write(WritePriority.BULK):
        await cluster.event()
        await asyncio.sleep(0.05)
        await cluster.event({"phase": "Ready", "url": PROXY})
    await settled(indexer, "RUNNING", 1)
    assert tools.calls == [PROXY]


async def test_a_phase_change_during_the_tools_read_wins(indexer: Indexer, tools: GatedTools, cluster: Cluster) -> None:
    """Ready starts a tools read; Failed arrives while the proxy is slow to answer: the row written
    when it answers says ERROR (the latest phase), and later phase changes need no read."""
    tools.gate.clear()
    await cluster.event({"phase": "Ready", "url": PROXY})
    await tools.called(1)
    await cluster.event({"phase": "Failed", "url": PROXY, "message": "OOMKilled"})
    tools.gate.set()
    await settled(indexer, "ERROR", 1)
    row = await indexer.workloads.get_by_workload_name(WL)
    assert row is not None and row.status_reason == "ToolHive reports Failed: OOMKilled"
    await cluster.event({"phase": "Ready", "url": PROXY})
    await settled(indexer, "RUNNING", 1)
    assert tools.calls == [PROXY], "a phase change must not read the tools again"


async def test_a_new_proxy_url_during_the_read_is_read_instead(
    indexer: Indexer, tools: GatedTools, cluster: Cluster
) -> None:
    tools.gate.clear()
    await cluster.event({"phase": "Ready", "url": PROXY})
    await tools.called(1)
    moved = PROXY.replace("8080", "9090")
    await cluster.event({"phase": "Ready", "url": moved})
    tools.gate.set()
    await settled(indexer, "RUNNING", 1)
    for _ in range(600):
        row = await indexer.workloads.get_by_workload_name(WL)
        if row is not None and row.endpoint == moved:
            break
        await asyncio.sleep(0.05)
    assert row is not None and row.endpoint == moved
    assert tools.calls[-1] == moved


async def test_tool_config_change_reads_again_even_during_a_read(
    indexer: Indexer, tools: GatedTools, reconciler: WorkloadReconciler, cluster: Cluster
) -> None:
    await cluster.event({"phase": "Ready", "url": PROXY}, toolConfigRef={"name": "fetch-tools"})
    await settled(indexer, "RUNNING", 1)
    tools.gate.clear()
    assert reconciler.tool_config_changed("ns", "fetch-tools") == [WL]
    await tools.called(2)
    # The proxy applied the new filter after the first re-read asked: only a second re-read sees it.
    tools.tools = [*TOOLS, {"name": "fetch_raw", "description": "Raw bytes", "inputSchema": {"type": "object"}}]
    assert reconciler.tool_config_changed("ns", "fetch-tools") == [WL]
    assert reconciler.tool_config_changed("ns", "other-config") == []
    tools.gate.set()
    await settled(indexer, "RUNNING", 2)
    await tools.called(3)
