"""A replica's read-only view of the shared index: it never migrates, and serves only at its schema head."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from mcp_optimizer.config import Settings
from mcp_optimizer.db import migrate
from mcp_optimizer.db.engine import WRITE_OPTION, create_engine
from mcp_optimizer.embeddings import FastEmbedder
from mcp_optimizer.ingest import Indexer, IndexReader
from mcp_optimizer.operator.readiness import Readiness, ReplicaReadiness


async def test_a_reader_waits_for_the_writer_to_create_and_migrate_the_schema(
    settings: Settings, embedder: FastEmbedder
) -> None:
    reader = IndexReader.open(settings)
    try:
        assert await reader.check() == (False, "the index has no schema yet: waiting for the writer to create it")
        # An older writer's schema: a newer reader does not serve from it, and does not migrate it.
        await migrate.upgrade(reader.engine, "0003")
        serving, why = await reader.check()
        assert not serving
        assert why == f"the index is at schema 0003, this version serves {migrate.head_revision()}: waiting for the " \
                      "writer to migrate it"
        assert await migrate.current_revision(reader.engine) == "0003"
        # The writer (the Indexer) migrates; the reader serves from then on.
        indexer = await Indexer.open(settings, embedder, repair=True)
        await indexer.close()
        assert await reader.check() == (True, "ok")
    finally:
        await reader.close()


async def test_a_reader_does_not_serve_from_a_schema_it_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    engine = create_engine(path)
    await migrate.upgrade(engine)
    async with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    await engine.dispose()
    reader = IndexReader.open(Settings(db_path=path))
    try:
        serving, why = await reader.check()
        assert not serving and why.endswith("this version serves 0004: a newer version migrated it")
    finally:
        await reader.close()


async def test_a_reader_reports_an_index_that_does_not_answer(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    path.write_bytes(b"not a database at all" * 100)
    reader = IndexReader.open(Settings(db_path=path))
    try:
        serving, why = await reader.check()
        assert not serving and why.startswith("the index does not answer:")
    finally:
        await reader.close()
        await asyncio.sleep(0.2)  # aiosqlite's thread of the refused connection reports to this loop


async def test_replica_readiness_reader_writer_and_stopping(indexer: Indexer) -> None:
    readiness = ReplicaReadiness()
    assert readiness.state() == (False, "starting: the index has not been checked yet")
    readiness.reader = (True, "ok")
    assert readiness.state() == (True, "ok")
    # The writer keeps the single-replica rules: not ready before its first pass.
    writer = Readiness(indexer.health)
    readiness.writer = writer
    assert readiness.state() == (False, "writer: starting: catalogs are being loaded")
    writer.expect([])
    writer.catalogs_loaded()
    assert readiness.state() == (True, "ok")
    readiness.stopping = True
    assert readiness.state() == (False, "stopping: finishing in-flight calls")


async def test_a_writer_that_took_over_serves_during_its_first_pass(indexer: Indexer) -> None:
    readiness = ReplicaReadiness()
    readiness.reader = (True, "ok")
    readiness.writer = Readiness(indexer.health)
    readiness.took_over = True
    assert readiness.state() == (True, "ok")
    readiness.reader = (False, "the index is at schema 0003, this version serves 0004: waiting for the writer to "
                               "migrate it")
    assert readiness.state() == readiness.reader
