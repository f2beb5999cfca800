"""What differs between the index's two databases, in one place.

The ops classes, the Indexer and :class:`~mcp_optimizer.db.search.ToolSearch` are
backend-neutral: the base tables are SQLAlchemy's on both, and everything beside them goes
through the :class:`Backend` of the connection's dialect:

* SQLite (:mod:`.sqlite`): sqlite-vec ``vec0`` tables for vectors, FTS5 tables for keywords;
* PostgreSQL (:mod:`.postgres`): pgvector tables for vectors, and term tables (terms made by
  FTS5's own tokenizer, :mod:`.terms`) over which BM25 is computed in SQL by FTS5's formula.

Both keep the same table names and key column names (``rowid`` of a tool's vector and keyword
rows is the tool's id, ``server_id`` keys a server vector), so deleting rows and updating a
workload's filter columns is the same SQL on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.db.virtual import FTS_COLUMNS


class Backend:
    """The per-database half of the index. Subclasses: :class:`.sqlite.SqliteBackend`,
    :class:`.postgres.PostgresBackend`."""

    #: The SQLAlchemy dialect name.
    name: str

    # ------------------------------------------------------------------ schema

    def vector_ddl(self, dim: int) -> list[str]:
        """CREATE statements of the four vector tables for vectors of ``dim`` dimensions."""
        raise NotImplementedError

    def keyword_ddl(self) -> list[str]:
        """CREATE statements of the two keyword tables."""
        raise NotImplementedError

    def side_tables(self) -> set[str]:
        """Every table beside the base tables at the head schema."""
        raise NotImplementedError

    async def table_names(self, conn: AsyncConnection) -> set[str]:
        """The tables the database holds now."""
        raise NotImplementedError

    async def tune(self, conn: AsyncConnection, *, hnsw: bool) -> None:
        """Settings applied at open (PostgreSQL: build or drop the HNSW indexes)."""

    # ------------------------------------------------------------------ writing

    def vector(self, param: str) -> str:
        """The SQL for a bound vector parameter (``:param``)."""
        return f":{param}"

    def vector_value(self, embedding: bytes) -> Any:
        """What a vector parameter is bound to, given the stored float32 bytes."""
        return embedding

    async def insert_vectors(self, c: AsyncConnection, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """INSERT rows (dicts of column -> value, ``embedding`` as float32 bytes) into a vector table."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for columns, group in groups.items():
            values = ", ".join(self.vector(col) if col == "embedding" else f":{col}" for col in columns)
            await c.execute(text(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({values})"),
                            [{**row, "embedding": self.vector_value(row["embedding"])} for row in group])

    async def insert_keywords(self, c: AsyncConnection, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """INSERT the keyword rows of tools: dicts of ``id`` and the :data:`FTS_COLUMNS` texts."""
        raise NotImplementedError

    async def delete_keywords(self, c: AsyncConnection, table: str, ids: Sequence[int]) -> None:
        """DELETE the keyword rows of the tools ``ids``."""
        raise NotImplementedError

    async def after_explicit_ids(self, c: AsyncConnection, table: str) -> None:
        """Rows were inserted into ``table`` with ids chosen by the caller: let the database's
        own id allocation continue after them."""

    def tool_tokens_sql(self) -> str | None:
        """SQL (over ``details``) of a tool's token estimate, or None to compute it in Python."""
        return None

    # ------------------------------------------------------------------ reading

    async def knn(
        self, conn: AsyncConnection, table: str, key: str, embedding: bytes, k: int,
        where: Sequence[str], params: dict[str, Any], columns: str = "",
    ) -> Sequence[Any]:
        """The ``k`` rows of a vector table nearest to ``embedding`` (cosine) among those
        ``where`` allows: rows of (``key``, ``distance``, then ``columns``), nearest first."""
        raise NotImplementedError

    async def keyword_hits(
        self, conn: AsyncConnection, table: str, words: Sequence[str], weights: Sequence[float], k: int,
        joins: Sequence[tuple[str, str]], where: Sequence[str], params: dict[str, Any], columns: str = "",
    ) -> Sequence[Any]:
        """The ``k`` best BM25 matches of a keyword table for the query ``words``
        (:func:`~mcp_optimizer.db.search.fts_query`'s words), FTS5's BM25 with the column
        ``weights``: rows of (``rowid``, ``score`` (higher is better), then ``columns``),
        best first, ties by rowid. ``joins`` ((table and alias, ON condition), from ``f``, the
        keyword row, in that order) and ``where`` restrict the rows."""
        raise NotImplementedError


def backend_for(dialect: str) -> Backend:
    from mcp_optimizer.db.backends.postgres import PostgresBackend
    from mcp_optimizer.db.backends.sqlite import SqliteBackend

    if dialect == "sqlite":
        return SqliteBackend()
    if dialect == "postgresql":
        return PostgresBackend()
    raise ValueError(f"the index cannot live in a {dialect} database")


def backend_of(bind: AsyncConnection | AsyncEngine | Any) -> Backend:
    """The backend of a connection or engine (sync or async)."""
    return backend_for(bind.dialect.name)


__all__ = ["FTS_COLUMNS", "Backend", "backend_for", "backend_of"]
