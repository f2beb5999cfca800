"""SQL statements per index operation: what each write costs in round trips, counted on the engine.

Deterministic (the fake embedder, a fixed small index), so two commits compare without the
machine's noise: a round trip is what PostgreSQL pays per statement, and what aiosqlite pays a
thread hop for. Counts include BEGIN and COMMIT; catalog chunks are not cut by time here
(``catalog_chunk_seconds`` 60), so the count does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text

from mcp_optimizer.config import Settings
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.vocabulary import WorkloadStatus
from tests.index.helpers import entry, tool, workload
from tests.support.fake_embedder import FakeEmbedder

T = TypeVar("T")
IMAGE = "ghcr.io/x/s"


class Counter:
    def __init__(self, indexer: Indexer) -> None:
        self.statements = 0
        event.listen(indexer.engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        self.statements += 1

    async def measure(self, label: str, operation: Awaitable[T]) -> T:
        self.statements = 0
        result = await operation
        print(f"{label}: {self.statements}")
        return result


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        indexer = await Indexer.open(Settings(db_path=Path(tmp) / "index.db", catalog_chunk_seconds=60), FakeEmbedder())
        counter = Counter(indexer)
        entries = [entry(f"s{i}", package=f"{IMAGE}{i}", tools=[f"t{i}{j}" for j in range(4)]) for i in range(40)]
        await counter.measure("load_catalog 40 entries x 4 tools", indexer.load_catalog("c", entries))
        tools = [tool(f"w{j}", f"Tool {j}") for j in range(20)]
        for k in range(5):
            await counter.measure(f"apply_workload linked #{k}", indexer.apply_workload(
                workload(f"ns/w{k}", package=f"{IMAGE}0:v{k}", tools=tools)))
        await counter.measure("re-apply unchanged workload", indexer.apply_workload(
            workload("ns/w0", package=f"{IMAGE}0:v0", tools=tools)))
        [row] = [r for r in await indexer.registry.list() if r.name == "s0"]
        await counter.measure("delete registry server, 5 linked (op alone)", indexer.delete_registry_servers([row.id]))
        await counter.measure("rematch 5", indexer.rematch_workloads([f"ns/w{k}" for k in range(5)]))
        await counter.measure("load_catalog restore (re-add s0, re-match)", indexer.load_catalog("c", entries))
        linked = await indexer.workloads.get_by_workload_name("ns/w1")
        assert linked is not None
        await counter.measure("unlink one workload (SC-8)", indexer.unlink_workloads([linked.id]))
        await indexer.rematch_workloads(["ns/w1"])
        await counter.measure("delete_catalog (40 entries, 5 linked) + re-match", indexer.delete_catalog("c"))
        await counter.measure("set_workload_status", indexer.set_workload_status("ns/w2", WorkloadStatus.STOPPED))
        await counter.measure("delete_workload", indexer.delete_workload("ns/w3"))
        await counter.measure("ensure_embedding_model (unchanged)", indexer.ensure_embedding_model())
        async with indexer.engine.begin() as conn:
            await conn.execute(text("DELETE FROM index_meta"))  # as if another model made the vectors
        await counter.measure("ensure_embedding_model (re-embed everything)", indexer.ensure_embedding_model())
        await indexer.close()


if __name__ == "__main__":
    asyncio.run(main())
