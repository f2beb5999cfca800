"""The schema comes from Alembic migrations; models and migrations must agree, upgrades keep rows."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_optimizer.config import Settings
from mcp_optimizer.db import migrate
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.models import Base
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.db.virtual import VIRTUAL_TABLES
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.mcp.tokens import tool_tokens

from .helpers import entry, tool, workload


def _is_virtual(name: str) -> bool:
    return any(name == table or name.startswith(table + "_") for table in VIRTUAL_TABLES)


async def test_models_and_migrations_agree(tmp_path: Path) -> None:
    engine = create_engine(tmp_path / "i.db")
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        def diff(sync_conn: Connection) -> object:
            context = MigrationContext.configure(sync_conn, opts={
                "include_name": lambda name, type_, parent: not (type_ == "table" and _is_virtual(name or ""))})
            return compare_metadata(context, Base.metadata)
        differences = await conn.run_sync(diff)
    await engine.dispose()
    assert differences == []


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
                for t in ("mcpservers_registry", "tools_registry", "mcpservers_workload", "tools_workload",
                          "workload_tool_vectors", "workload_tool_fts", "registry_tool_vectors", "registry_tool_fts")}


async def test_upgrade_from_revision_0002_keeps_rows_and_vectors(tmp_path: Path, embedder: Embedder) -> None:
    """An index as revision 0002 left it (no token estimates, three full-text columns) upgrades
    in place: 0003 adds and backfills each tool's token estimate; 0004 rebuilds the full-text rows
    from the stored tool details (with the server name) and records the model that made the
    vectors. Every row and vector stays and nothing is embedded."""
    path = tmp_path / "old.db"
    index = await Indexer.open(Settings(db_path=path), embedder)
    await index.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server", tools=["create_issue"])])
    await index.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v2", tools=[
        tool("create_issue", "Create a GitHub issue"),
        {"name": "set_units", "description": "Choose units",
         "inputSchema": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["fahrenheit"]}}}},
    ]))
    await index.close()
    engine = create_engine(path)
    async with engine.begin() as conn:  # the index as revision 0002 left it
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "0002"))
        columns = [row[1] for row in await conn.execute(text("PRAGMA table_info(workload_tool_fts)"))]
        tool_columns = [row[1] for row in await conn.execute(text("PRAGMA table_info(tools_workload)"))]
        old_vectors = (await conn.execute(text("SELECT details_embedding FROM tools_workload ORDER BY id"))).all()
    assert columns == ["name", "description", "args"]
    assert "token_count" not in tool_columns
    before = await _counts(engine)
    await engine.dispose()

    embedded = embedder.texts_embedded
    upgraded = await Indexer.open(Settings(db_path=path), embedder)
    assert await migrate.current_revision(upgraded.engine) == migrate.head_revision()
    assert embedder.texts_embedded == embedded  # nothing re-embedded
    assert await upgraded.recorded_embedding_model() == embedder.spec.fingerprint
    assert await _counts(upgraded.engine) == before == {
        "mcpservers_registry": 1, "tools_registry": 1, "mcpservers_workload": 1, "tools_workload": 2,
        "workload_tool_vectors": 2, "workload_tool_fts": 2, "registry_tool_vectors": 1, "registry_tool_fts": 1}
    async with upgraded.engine.connect() as conn:
        assert (await conn.execute(text("SELECT details_embedding FROM tools_workload ORDER BY id"))).all() \
            == old_vectors
        fts = await conn.execute(text("SELECT name, server FROM workload_tool_fts"))
        rows: dict[str, str] = {name: server for name, server in fts.all()}
        indexes = (await conn.execute(text("SELECT name FROM sqlite_master WHERE type='index'"))).scalars().all()
        stored = (await conn.execute(text("SELECT details, token_count FROM tools_workload"))).all()
    assert "ix_mcpservers_workload_status" in indexes
    for details_json, token_count in stored:
        details = json.loads(details_json)
        assert token_count == tool_tokens(details["name"], details["description"], details["inputSchema"])
    # The new column holds the server name (the registry entry's, which the workload is linked to).
    assert rows == {"create_issue create issue": "github", "set_units set units": "github"}
    search = ToolSearch(upgraded.engine, embedder)
    assert [h.tool for h in await search.find_tools("fahrenheit", mode="bm25")] == ["set_units"]
    assert {h.tool for h in await search.find_tools("github", mode="bm25")} == {"create_issue", "set_units"}
    await upgraded.close()


async def test_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    engine = create_engine(tmp_path / "i.db")
    await migrate.upgrade(engine)
    await migrate.upgrade(engine)  # idempotent
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "base"))
        tables = (await conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))).scalars().all()
    assert set(tables) <= {"alembic_version", "sqlite_sequence"}
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()
    await engine.dispose()
