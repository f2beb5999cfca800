"""Writes never starve status: the priority write lock, and catalogs written in chunks that stay
correct when the catalog changes midway or the load dies midway."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from sqlalchemy import text

from mcp_optimizer.catalog import CatalogEntry, ToolDefinition
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.ingest.scheduler import WritePriority, WriteScheduler

from .helpers import tool, workload

# ------------------------------------------------------------------------------ the lock


async def test_waiters_are_served_by_priority_then_arrival():
    scheduler = WriteScheduler()
    order: list[str] = []
    holder = asyncio.Event()

    async def write(label: str, priority: WritePriority) -> None:
        async with scheduler.turn(priority):
            order.append(label)
            await asyncio.sleep(0)

    async def hold() -> None:
        async with scheduler.turn(WritePriority.BULK):
            await holder.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    tasks = []
    for label, priority in [("bulk-1", WritePriority.BULK), ("workload-1", WritePriority.WORKLOAD),
                            ("status-1", WritePriority.STATUS), ("bulk-2", WritePriority.BULK),
                            ("status-2", WritePriority.STATUS)]:
        tasks.append(asyncio.create_task(write(label, priority)))
        await asyncio.sleep(0)
    holder.set()
    await asyncio.gather(first, *tasks)
    assert order == ["status-1", "status-2", "workload-1", "bulk-1", "bulk-2"]
    assert not scheduler.locked


async def test_a_waiter_past_max_wait_is_not_starved():
    scheduler = WriteScheduler(max_wait=0.05)
    order: list[str] = []
    release = asyncio.Event()

    async def write(label: str, priority: WritePriority) -> None:
        async with scheduler.turn(priority):
            order.append(label)

    async def hold() -> None:
        async with scheduler.turn(WritePriority.STATUS):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    bulk = asyncio.create_task(write("bulk", WritePriority.BULK))
    await asyncio.sleep(0.1)  # the bulk write is now overdue
    status = asyncio.create_task(write("status", WritePriority.STATUS))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, bulk, status)
    assert order == ["bulk", "status"]


async def test_cancelled_waiters_leave_the_lock_usable():
    scheduler = WriteScheduler()
    observed: list[tuple[str, float]] = []
    scheduler.observer = lambda priority, waited: observed.append((priority, waited))
    release = asyncio.Event()

    async def hold() -> None:
        async with scheduler.turn(WritePriority.BULK):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(scheduler.turn(WritePriority.STATUS).__aenter__())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    release.set()
    await holder
    async with scheduler.turn(WritePriority.WORKLOAD):
        assert scheduler.locked
    assert not scheduler.locked
    assert [p for p, _ in observed] == ["bulk", "workload"]


# ------------------------------------------------------------------------------ chunked catalogs


def catalog(count: int, *, version: int = 1, start: int = 0) -> list[CatalogEntry]:
    """``count`` container entries with 3 tools each; ``version`` changes descriptions."""
    return [
        CatalogEntry(
            name=f"server-{i:04d}", remote=False, package=f"ghcr.io/acme/server-{i:04d}:1", transport="stdio",
            description=f"Server number {i}, version {version}",
            tools=[ToolDefinition(name=f"{verb}_{i}") for verb in ("read", "write", "list")],
        )
        for i in range(start, start + count)
    ]


async def dump(indexer: Indexer) -> dict[str, Any]:
    """Everything a catalog load decides, in comparable form (ids and timestamps left out)."""
    async with indexer.engine.connect() as conn:
        servers = (await conn.execute(text(
            "SELECT catalog, name, package_key, description, content_hash, server_embedding "
            "FROM mcpservers_registry ORDER BY catalog, name"))).all()
        tools = (await conn.execute(text(
            "SELECT s.name, t.name, t.embedding_hash FROM tools_registry t "
            "JOIN mcpservers_registry s ON s.id = t.server_id ORDER BY s.name, t.name"))).all()
        counts = {table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                  for table in ("registry_server_vector", "registry_tool_vectors", "registry_tool_fts")}
        links = (await conn.execute(text(
            "SELECT workload_name, registry_server_name, registry_catalog, status FROM mcpservers_workload "
            "ORDER BY workload_name"))).all()
    return {"servers": [tuple(r) for r in servers], "tools": [tuple(r) for r in tools], "counts": counts,
            "links": [tuple(r) for r in links]}


async def rows(indexer: Indexer, catalog_name: str) -> int:
    async with indexer.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM mcpservers_registry WHERE catalog = :c"),
                                       {"c": catalog_name})).scalar_one())


async def until(check, *, timeout: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def linked_workloads(indexer: Indexer) -> None:
    """Workloads that link to entries 5 (removed in v2), 150 and 260, and one to nothing (400)."""
    for i in (5, 150, 260, 400):
        await indexer.apply_workload(workload(f"ns/w{i}", package=f"ghcr.io/acme/server-{i:04d}:2",
                                              tools=[tool(f"own_{i}", "A workload tool")]))


async def reference(settings, embedder, entries: list[CatalogEntry], tmp_name: str) -> dict[str, Any]:
    """The same catalog loaded in one piece into a fresh index, with the same workloads."""
    fresh = await Indexer.open(replace(settings, db_path=settings.db_path.with_name(tmp_name),
                                       catalog_chunk_seconds=3600.0), embedder)
    try:
        await fresh.load_catalog("c", entries)
        await linked_workloads(fresh)
        await fresh.rematch_workloads()
        return await dump(fresh)
    finally:
        await fresh.close()


async def test_a_status_write_does_not_wait_for_a_catalog(settings, embedder):
    indexer = await Indexer.open(replace(settings, catalog_chunk_seconds=0.0), embedder)
    try:
        await indexer.apply_workload(workload("ns/pinned", package="ghcr.io/other/x:1", tools=[tool("x_tool")]))
        load = asyncio.create_task(indexer.load_catalog("c", catalog(300)))
        await until(lambda: _more_than(indexer, "c", 0))
        assert await indexer.set_workload_status("ns/pinned", WorkloadStatus.STOPPED)
        # The status is committed while the catalog is still being written.
        assert 0 < await rows(indexer, "c") < 300
        assert not load.done()
        result = await load
        assert len(result.added) == 300 and await rows(indexer, "c") == 300
        row = await indexer.workloads.get_by_workload_name("ns/pinned")
        assert row is not None and row.status == "STOPPED"
    finally:
        await indexer.close()


async def _more_than(indexer: Indexer, catalog_name: str, n: int) -> bool:
    return await rows(indexer, catalog_name) > n


async def test_chunked_load_equals_a_load_in_one_transaction(settings, embedder):
    v1 = catalog(300)
    indexer = await Indexer.open(replace(settings, catalog_chunk_seconds=0.0), embedder)
    try:
        await linked_workloads(indexer)
        result = await indexer.load_catalog("c", v1)
        assert len(result.added) == 300
        assert {r.workload_name for r in result.rematched} == {"ns/w5", "ns/w150", "ns/w260"}
        assert await dump(indexer) == await reference(settings, embedder, v1, "one-piece.db")
    finally:
        await indexer.close()


def version_two() -> list[CatalogEntry]:
    """v1 with the first 50 removed, 50 renamed (same image, new name), 50 changed, 40 added."""
    v1 = catalog(300)
    kept = v1[50:]
    renamed = [e.model_copy(update={"name": f"renamed-{e.name}"}) for e in kept[:50]]
    changed = [e.model_copy(update={"description": "A changed description"}) for e in kept[50:100]]
    return [*renamed, *changed, *kept[100:], *catalog(40, start=300)]


async def test_a_catalog_that_changes_midway_ends_as_the_last_version(settings, embedder):
    indexer = await Indexer.open(replace(settings, catalog_chunk_seconds=0.0), embedder)
    v2 = version_two()
    try:
        await linked_workloads(indexer)
        first = asyncio.create_task(indexer.load_catalog("c", catalog(300)))
        await until(lambda: _more_than(indexer, "c", 30))
        second = asyncio.create_task(indexer.load_catalog("c", v2))
        await asyncio.sleep(0)
        assert not first.done()
        await asyncio.gather(first, second)
        await indexer.rematch_workloads()
        assert await dump(indexer) == await reference(settings, embedder, v2, "v2.db")
        names = {row[1] for row in (await dump(indexer))["servers"]}
        assert "renamed-server-0050" in names and "server-0050" not in names and "server-0339" in names
    finally:
        await indexer.close()


async def test_a_load_cut_short_is_finished_by_the_next_load(settings, embedder):
    v1 = catalog(300)
    indexer = await Indexer.open(replace(settings, catalog_chunk_seconds=0.0), embedder)
    try:
        await linked_workloads(indexer)
        load = asyncio.create_task(indexer.load_catalog("c", v1))
        await until(lambda: _more_than(indexer, "c", 30))
        load.cancel()  # what a process killed midway leaves: the committed chunks
        await asyncio.gather(load, return_exceptions=True)
        assert 30 < await rows(indexer, "c") < 300
    finally:
        await indexer.close()
    # The next start loads the catalog again (the operator loads every catalog at start).
    restarted = await Indexer.open(replace(settings, catalog_chunk_seconds=0.0), embedder)
    try:
        result = await restarted.load_catalog("c", v1)
        assert len(result.added) + len(result.unchanged) == 300 and result.unchanged
        await restarted.rematch_workloads()
        assert await dump(restarted) == await reference(settings, embedder, v1, "whole.db")
    finally:
        await restarted.close()
