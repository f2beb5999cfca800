"""Writes never starve status: the priority write lock, and catalogs written in chunks that stay
correct when the catalog changes midway or the load dies midway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from sqlalchemy import text

from mcp_optimizer.catalog import CatalogEntry, ToolDefinition
from mcp_optimizer.config import Settings
from mcp_optimizer.db.backends.terms import phrase_terms
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.records import RegistryServerColumns, ToolRow
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.embeddings.model import to_bytes
from mcp_optimizer.embeddings.texts import server_embedding_text, text_hash, tool_embedding_text
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.ingest.scheduler import WritePriority, WriteScheduler
from mcp_optimizer.ingest.service import _GROUP_ENTRIES, _CatalogOp, _next_group
from tests.support.backends import sqlite_only

from .helpers import tool, workload

#: The kinds of catalog operation the Indexer groups (ingest.service._CatalogOp.kind).
CatalogOpKind = Literal["remove", "update", "rename", "add"]

# ------------------------------------------------------------------------------ the lock


async def test_waiters_are_served_by_priority_then_arrival() -> None:
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


async def test_a_waiter_past_max_wait_is_not_starved() -> None:
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


async def test_cancelled_waiters_leave_the_lock_usable() -> None:
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


async def until(check: Callable[[], Awaitable[bool]], *, timeout: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def linked_workloads(indexer: Indexer) -> None:
    """Workloads that link to entries 5 (removed in v2), 150 and 260, and one to nothing (400)."""
    for i in (5, 150, 260, 400):
        await indexer.apply_workload(workload(f"ns/w{i}", package=f"ghcr.io/acme/server-{i:04d}:2",
                                              tools=[tool(f"own_{i}", "A workload tool")]))


async def reference(
    settings: Settings, embedder: Embedder | None, entries: list[CatalogEntry], tmp_name: str
) -> dict[str, Any]:
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


async def test_a_status_write_does_not_wait_for_a_catalog(settings: Settings, embedder: Embedder) -> None:
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


async def test_chunked_load_equals_a_load_in_one_transaction(settings: Settings, embedder: Embedder) -> None:
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


async def test_a_catalog_that_changes_midway_ends_as_the_last_version(settings: Settings, embedder: Embedder) -> None:
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


async def test_a_load_cut_short_is_finished_by_the_next_load(settings: Settings, embedder: Embedder) -> None:
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


# ------------------------------------------------------------------------------ grouped writes


def entry_rows(embedder: Any, entries: list[CatalogEntry]) -> list[tuple[RegistryServerColumns, list[ToolRow]]]:
    """What :meth:`RegistryServerOps.create` and the tool ops take for ``entries``, embedded by the
    real model; a tool named ``*_unembedded`` gets no vector (as when the model failed for it)."""
    texts = [server_embedding_text(e.name, e.description, e.tags) for e in entries]
    texts += [tool_embedding_text(e.name, t.to_mcp()) for e in entries for t in e.tools]
    vectors = dict(zip(texts, (to_bytes(v) for v in embedder.embed(texts)), strict=True))
    items = []
    for e in entries:
        columns: RegistryServerColumns = {
            "name": e.name, "remote": e.remote, "url": e.url, "package": e.package, "transport": e.transport,
            "description": e.description, "tags": list(e.tags), "content_hash": e.content_hash(),
            "server_embedding": vectors[server_embedding_text(e.name, e.description, e.tags)]}
        tools = []
        for t in e.tools:
            details = t.to_mcp()
            embedded = tool_embedding_text(e.name, details)
            tools.append(ToolRow(t.name, details, None if t.name.endswith("_unembedded") else vectors[embedded],
                                 text_hash(embedded)))
        items.append((columns, tools))
    return items


async def full_dump(engine: Any) -> dict[str, Any]:
    """The registry side with its tool ids, FTS rows and vector rows (server ids by name: they are
    random)."""
    async with engine.connect() as conn:
        def value(v: Any) -> Any:
            # pgvector's text form back to the stored float32 bytes (exact: see vector_literal).
            if conn.dialect.name == "postgresql" and isinstance(v, str) and v.startswith("["):
                return np.array(json.loads(v), dtype="<f4").tobytes()
            return v

        async def query(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(value(v) for v in row) for row in (await conn.execute(text(sql))).all()]
        return {
            "servers": await query(
                'SELECT catalog, name, remote, url, url_key, package, package_key, transport, description, tags, '
                '"group", content_hash, server_embedding FROM mcpservers_registry ORDER BY name'),
            "tools": await query(
                "SELECT t.id, s.name, t.name, t.details, t.details_embedding, t.embedding_hash FROM tools_registry t "
                "JOIN mcpservers_registry s ON s.id = t.server_id ORDER BY t.id"),
            "fts": await query("SELECT rowid, name, description, args FROM registry_tool_fts ORDER BY rowid")
            if conn.dialect.name == "sqlite" else await query(
                # PostgreSQL keeps terms: the tool name's terms stand for the name column.
                "SELECT d.rowid, (SELECT string_agg(t.term, ' ' ORDER BY t.term) FROM registry_tool_fts_terms t "
                "WHERE t.rowid = d.rowid AND t.tf_name > 0), NULL, NULL FROM registry_tool_fts d ORDER BY d.rowid"),
            "dialect": conn.dialect.name,
            "tool_vectors": await query(
                "SELECT v.rowid, s.name, v.embedding FROM registry_tool_vectors v "
                "LEFT JOIN mcpservers_registry s ON s.id = v.server_id ORDER BY v.rowid"),
            "server_vectors": await query(
                "SELECT s.name, v.embedding FROM registry_server_vector v "
                "LEFT JOIN mcpservers_registry s ON s.id = v.server_id ORDER BY s.name"),
        }


def assert_search_rows_are_the_tools_own(dump_: dict[str, Any]) -> None:
    """Every tool's FTS row and vector row carry that tool (same rowid), and no row is left over."""
    tools = {row[0]: row for row in dump_["tools"]}
    assert [row[0] for row in dump_["fts"]] == sorted(tools)
    for rowid, name, _, _ in dump_["fts"]:
        if dump_["dialect"] == "sqlite":
            assert name.split(" ")[0] == tools[rowid][2]
        else:
            assert set(name.split(" ")) >= {t for terms in phrase_terms([tools[rowid][2]]) for t in terms}
    embedded = sorted(i for i, row in tools.items() if row[4] is not None)
    assert [row[0] for row in dump_["tool_vectors"]] == embedded
    for rowid, server, embedding in dump_["tool_vectors"]:
        assert (server, embedding) == (tools[rowid][1], tools[rowid][4])
    servers = {row[1]: row[12] for row in dump_["servers"]}
    assert dump_["server_vectors"] == sorted((n, e) for n, e in servers.items() if e is not None)


# Compares two index files row by row, FTS5 columns and reused rowids included: PostgreSQL keeps
# terms, not texts, and its id sequence never hands out a freed id again.
@sqlite_only
async def test_create_many_writes_what_create_and_bulk_upsert_write(settings: Settings, embedder: Embedder) -> None:
    """The grouped insert allocates tool ids itself: after a server lost its newest tools (their
    ids free again), it must store exactly what the one-by-one writes store, each tool's FTS and
    vector rows under its own id."""
    entries = [
        *catalog(5),
        CatalogEntry(name="remote-one", remote=True, url="https://mcp.example.com/mcp", transport="streamable-http",
                     description="A remote server", tags=["web"],
                     tools=[ToolDefinition(name="fetch_page", description="Fetch a web page",
                                           inputSchema={"type": "object", "properties": {
                                               "url": {"type": "string", "description": "The page address"}}}),
                            ToolDefinition(name="fetch_unembedded")]),
        CatalogEntry(name="no-tools", remote=False, package="ghcr.io/acme/empty:1", transport="stdio"),
    ]
    items = entry_rows(embedder, entries)
    earlier = entry_rows(embedder, catalog(1, start=900))[0]
    dumps = []
    for path, grouped in (("grouped.db", True), ("one-by-one.db", False)):
        indexer = await Indexer.open(replace(settings, db_path=settings.db_path.with_name(path)), embedder)
        try:
            registry, tools = indexer.registry, indexer.registry_tools
            first = await registry.create("c", earlier[0])
            await tools.bulk_upsert(first, earlier[1])
            await tools.bulk_upsert(first, earlier[1][:1])  # the two newest tools go: their ids are free
            if grouped:
                async with indexer.engine.begin() as conn:
                    await registry.create_many("c", items[:4], conn)
                    await registry.create_many("c", items[4:], conn)
                assert await registry.create_many("c", []) == []
            else:
                for columns, rows_ in items:
                    server_id = await registry.create("c", columns)
                    await tools.bulk_upsert(server_id, rows_)
            dumps.append(await full_dump(indexer.engine))
        finally:
            await indexer.close()
    grouped_dump, one_by_one_dump = dumps
    assert grouped_dump == one_by_one_dump
    assert_search_rows_are_the_tools_own(grouped_dump)
    assert len(grouped_dump["tools"]) == 1 + 5 * 3 + 2 and len(grouped_dump["tool_vectors"]) == 1 + 5 * 3 + 1


async def test_grouped_catalog_writes_keep_every_tool_searchable(settings: Settings, embedder: Embedder) -> None:
    """A chunked load and a change of most of the catalog (removals, renames, changes and additions
    written in groups) leave each tool's search rows its own, and search finds the added tools."""
    indexer = await Indexer.open(replace(settings, catalog_chunk_seconds=0.0), embedder)
    try:
        await indexer.load_catalog("c", catalog(300))
        assert_search_rows_are_the_tools_own(await full_dump(indexer.engine))
        result = await indexer.load_catalog("c", version_two())
        assert (len(result.removed), len(result.renamed), len(result.updated), len(result.added)) == (50, 50, 50, 40)
        dump_ = await full_dump(indexer.engine)
        assert_search_rows_are_the_tools_own(dump_)
        assert len(dump_["servers"]) == 290 and len(dump_["tools"]) == 290 * 3
        hits = await ToolSearch(indexer.engine, embedder).find_registry_servers("write_339", limit=3)
        assert hits and hits[0].name == "server-0339"
    finally:
        await indexer.close()


def test_groups_are_bounded_and_never_mix_kinds() -> None:
    def op(kind: CatalogOpKind, tools: int, i: int) -> _CatalogOp:
        entry = CatalogEntry(name=f"s{i}", remote=False, package=f"ghcr.io/acme/s{i}:1", transport="stdio",
                             tools=[ToolDefinition(name=f"t{n}") for n in range(tools)])
        return _CatalogOp(kind, None, None if kind == "remove" else entry)

    ops = [*(op("remove", 0, i) for i in range(10)), *(op("add", 3, i) for i in range(3)),
           op("update", 3, 99), *(op("add", 60, i) for i in range(3)), op("add", 200, 7), op("add", 1, 8)]
    groups = []
    position = 0
    while position < len(ops):
        group = _next_group(ops, position)
        groups.append([(o.kind, len(o.entry.tools) if o.entry else 0) for o in group])
        position += len(group)
    assert groups == [
        [("remove", 0)] * _GROUP_ENTRIES, [("remove", 0)] * 2,  # at most 8 entries
        [("add", 3)] * 3, [("update", 3)],  # kinds are not mixed; updates go one by one
        [("add", 60)] * 2, [("add", 60)],  # at most 128 tools...
        [("add", 200)],  # ...unless one entry has more: it goes alone
        [("add", 1)],
    ]
