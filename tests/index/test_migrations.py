"""The schema comes from Alembic migrations; models and migrations must agree, upgrades keep rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from mcp_optimizer.db import migrate
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.models import Base
from mcp_optimizer.db.virtual import VIRTUAL_TABLES
from mcp_optimizer.db.workload_ops import WorkloadToolOps
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.mcp.tokens import tool_tokens

from .helpers import entry, tool, workload


def _is_virtual(name: str) -> bool:
    return any(name == table or name.startswith(table + "_") for table in VIRTUAL_TABLES)


async def test_models_and_migrations_agree(tmp_path: Path) -> None:
    engine = create_engine(tmp_path / "i.db")
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        def diff(sync_conn):
            context = MigrationContext.configure(sync_conn, opts={
                "include_name": lambda name, type_, parent: not (type_ == "table" and _is_virtual(name or ""))})
            return compare_metadata(context, Base.metadata)
        differences = await conn.run_sync(diff)
    await engine.dispose()
    assert differences == []


async def test_upgrade_from_first_revision_keeps_rows(tmp_path: Path, embedder, monkeypatch) -> None:
    path = tmp_path / "old.db"
    engine = create_engine(path)
    await migrate.upgrade(engine, "0001")
    assert await migrate.current_revision(engine) == "0001"
    # Code of revision 0001 stored no token estimates (0003 adds and backfills them).
    with monkeypatch.context() as old_code:
        old_code.setattr(WorkloadToolOps, "_after_write", _no_derived_columns)
        await _write_old_rows(engine, embedder)

    from mcp_optimizer.config import Settings

    upgraded = await Indexer.open(Settings(db_path=path), embedder)
    assert await migrate.current_revision(upgraded.engine) == migrate.head_revision()
    row = await upgraded.workloads.get_by_workload_name("ns/gh")
    assert row is not None and row.registry_server_name == "github"
    async with upgraded.engine.connect() as conn:
        counts = {t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
                  for t in ("mcpservers_registry", "tools_registry", "mcpservers_workload", "tools_workload",
                            "workload_tool_vectors", "workload_tool_fts", "registry_tool_vectors")}
        indexes = (await conn.execute(text("SELECT name FROM sqlite_master WHERE type='index'"))).scalars().all()
    assert counts == {"mcpservers_registry": 1, "tools_registry": 1, "mcpservers_workload": 1, "tools_workload": 1,
                      "workload_tool_vectors": 1, "workload_tool_fts": 1, "registry_tool_vectors": 1}
    assert "ix_mcpservers_workload_status" in indexes
    async with upgraded.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT name, details, token_count FROM tools_workload"))).one()
    details = json.loads(stored.details)
    assert stored.token_count == tool_tokens(details["name"], details["description"], details["inputSchema"])
    # Still fully usable after the upgrade.
    from mcp_optimizer.db.search import ToolSearch

    hits = await ToolSearch(upgraded.engine, embedder).find_tools("open a github issue")
    assert [h.tool for h in hits] == ["create_issue"]
    await upgraded.close()


async def _no_derived_columns(self: Any, c: Any, tool_ids: list[int]) -> None:
    pass


async def _write_old_rows(engine: Any, embedder: Any) -> None:
    old = Indexer(engine, embedder)
    await old.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server", tools=["create_issue"])])
    await old.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v2",
                                      tools=[tool("create_issue", "Create a GitHub issue")]))
    await old.close()


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
