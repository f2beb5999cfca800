"""The index in SQLite: sqlite-vec ``vec0`` tables and FTS5 tables (see :mod:`mcp_optimizer.db.virtual`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mcp_optimizer.db.backends import Backend
from mcp_optimizer.db.models import TOOL_TOKENS_SQL
from mcp_optimizer.db.virtual import FTS_COLUMNS, VIRTUAL_TABLES, fts_table_ddl, vector_table_ddl


class SqliteBackend(Backend):
    name = "sqlite"

    def vector_ddl(self, dim: int) -> list[str]:
        return vector_table_ddl(dim)

    def keyword_ddl(self) -> list[str]:
        return fts_table_ddl()

    def side_tables(self) -> set[str]:
        return set(VIRTUAL_TABLES)

    async def table_names(self, conn: AsyncConnection) -> set[str]:
        return set((await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))).scalars())

    async def insert_keywords(self, c: AsyncConnection, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await c.execute(text(f"INSERT INTO {table}(rowid, {', '.join(FTS_COLUMNS)}) "
                                 f"VALUES (:id, {', '.join(':' + col for col in FTS_COLUMNS)})"), list(rows))

    async def delete_keywords(self, c: AsyncConnection, table: str, ids: Sequence[int]) -> None:
        # FTS5 deletes efficiently by rowid one at a time; an IN list scans.
        if ids:
            await c.execute(text(f"DELETE FROM {table} WHERE rowid = :id"), [{"id": i} for i in ids])

    def tool_tokens_sql(self) -> str | None:
        return TOOL_TOKENS_SQL

    async def knn(
        self, conn: AsyncConnection, table: str, key: str, embedding: bytes, k: int,
        where: Sequence[str], params: dict[str, Any], columns: str = "",
    ) -> Sequence[Any]:
        # vec0 filters on its metadata columns inside the scan, so the k nearest are k allowed rows.
        extra = f", {columns}" if columns else ""
        return (await conn.execute(text(
            f"SELECT v.{key}, v.distance{extra} FROM {table} v WHERE v.embedding MATCH :q AND v.k = :k"
            f"{''.join(' AND ' + w for w in where)} ORDER BY v.distance"),
            {**params, "q": embedding, "k": k})).all()

    async def keyword_hits(
        self, conn: AsyncConnection, table: str, words: Sequence[str], weights: Sequence[float], k: int,
        joins: Sequence[tuple[str, str]], where: Sequence[str], params: dict[str, Any], columns: str = "",
    ) -> Sequence[Any]:
        if not words:
            return []
        # Every word a quoted string joined by OR: FTS5 operators in user text are plain words.
        match = " OR ".join(f'"{w}"' for w in words)
        bm25 = f"bm25({table}, {', '.join(str(float(w)) for w in weights)})"
        extra = f", {columns}" if columns else ""
        joined = "".join(f" CROSS JOIN {table_alias} ON {on}" for table_alias, on in joins)
        # CROSS JOIN fixes the join order: the full-text match runs once and drives the
        # primary-key lookups. With a plain JOIN SQLite starts from the RUNNING servers and
        # re-runs the MATCH for every one of their tools (35 ms on 527 tools, 0.5 ms so).
        # FTS5's bm25() is lower-is-better; negated, every retriever's score is higher-is-better.
        return (await conn.execute(text(
            f"SELECT f.rowid, -{bm25} AS score{extra} FROM {table} f{joined} "
            f"WHERE {table} MATCH :m{''.join(' AND ' + w for w in where)} "
            "ORDER BY score DESC, f.rowid LIMIT :k"), {**params, "m": match, "k": k})).all()
