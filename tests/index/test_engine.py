"""The index connection: sqlite-vec loaded, WAL, foreign keys, optional mmap, clear open errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from mcp_optimizer.db import migrate
from mcp_optimizer.db.engine import IndexOpenError, create_engine
from mcp_optimizer.db.meta_ops import IndexMetaOps


async def pragmas(path: Path, *, mmap_size: int = 0, max_bytes: int = 0) -> dict[str, object]:
    engine = create_engine(path, mmap_size=mmap_size, max_bytes=max_bytes)
    try:
        async with engine.connect() as conn:
            return {name: (await conn.execute(text(f"PRAGMA {name}"))).scalar()
                    for name in ("journal_mode", "foreign_keys", "mmap_size")} | {
                "vec": (await conn.execute(text("SELECT vec_version()"))).scalar()}
    finally:
        await engine.dispose()


async def test_connection_settings(tmp_path: Path) -> None:
    default = await pragmas(tmp_path / "a.db")
    assert default["journal_mode"] == "wal" and default["foreign_keys"] == 1
    assert default["mmap_size"] == 0 and str(default["vec"]).startswith("v0.")
    mapped = await pragmas(tmp_path / "b.db", mmap_size=1 << 26)
    assert mapped["mmap_size"] == 1 << 26


def test_open_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(IndexOpenError, match="does not exist"):
        create_engine(tmp_path / "missing" / "index.db")
    with pytest.raises(IndexOpenError, match="must be a file"):
        create_engine(":memory:")


async def test_used_bytes_counts_the_pages_in_use_not_the_free_ones(tmp_path: Path) -> None:
    # What the operator compares with MCP_OPTIMIZER_INDEX_MAX_BYTES before it writes again.
    engine = create_engine(tmp_path / "used.db")
    try:
        await migrate.upgrade(engine)
        meta = IndexMetaOps(engine)
        before = await meta.used_bytes()
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE ballast (b BLOB)"))
            await conn.execute(text("INSERT INTO ballast VALUES (zeroblob(1000000))"))
        grown = await meta.used_bytes()
        assert before > 0 and grown - before >= 1_000_000
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE ballast"))
        # The file keeps the freed pages (until VACUUM); they are room again.
        assert await meta.used_bytes() < before + 100_000
    finally:
        await engine.dispose()
