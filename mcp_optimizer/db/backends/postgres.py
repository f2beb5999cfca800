"""The index in PostgreSQL: pgvector tables for vectors, term tables and SQL BM25 for keywords.

Vectors: a ``vector(dim)`` column in plain tables shaped like the ``vec0`` ones (same names,
same filter columns). A KNN query is ``ORDER BY embedding <=> q LIMIT k`` after the filters:
an exact scan, like sqlite-vec's, unless ``MCP_OPTIMIZER_PG_HNSW`` builds HNSW indexes
(:func:`hnsw_ddl`), which are approximate and filter after the index scan.

Keywords: ``<fts table>`` holds each tool's length in tokens, ``<fts table>_terms`` each term
of the tool with its count per column; the terms are FTS5's own (:mod:`.terms`). The score is
FTS5's BM25 (``fts5_aux.c``): per query phrase, ``idf * f * (k1 + 1) / (f + k1 * (1 - b + b *
len / avglen))`` with ``f`` the column-weighted count, ``idf`` and ``avglen`` over every row of
the table, summed over the phrases. A phrase FTS5 would match as adjacent tokens (a word
FTS5's tokenizer splits, such as ``get_user``) counts here as its terms separately.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mcp_optimizer.db.backends import Backend
from mcp_optimizer.db.backends.terms import BM25_B, BM25_K1, document_terms, idf, phrase_terms
from mcp_optimizer.db.virtual import (
    FTS_COLUMNS,
    FTS_TABLES,
    REGISTRY_SERVER_VECTOR,
    REGISTRY_TOOL_VECTORS,
    VECTOR_TABLES,
    WORKLOAD_SERVER_VECTOR,
    WORKLOAD_TOOL_VECTORS,
)

#: Per-column term counts in the term tables, in :data:`FTS_COLUMNS` order.
TF_COLUMNS = tuple(f"tf_{column}" for column in FTS_COLUMNS)
#: The tool vector tables an HNSW index may be built on (server vectors are few).
HNSW_TABLES = (REGISTRY_TOOL_VECTORS, WORKLOAD_TOOL_VECTORS)


def terms_table(table: str) -> str:
    return f"{table}_terms"


def vector_ddl(dim: int) -> list[str]:
    """CREATE statements of the pgvector tables (shaped like :func:`~mcp_optimizer.db.virtual.vector_table_ddl`)."""
    vector = f"embedding vector({int(dim)}) NOT NULL"
    filters = "status text NOT NULL, grp text NOT NULL, namespace text NOT NULL"
    return [
        f"CREATE TABLE {REGISTRY_SERVER_VECTOR} (server_id text PRIMARY KEY, {vector})",
        f"CREATE TABLE {REGISTRY_TOOL_VECTORS} (rowid integer PRIMARY KEY, {vector}, server_id text NOT NULL)",
        f"CREATE TABLE {WORKLOAD_SERVER_VECTOR} (server_id text PRIMARY KEY, {vector}, {filters})",
        f"CREATE TABLE {WORKLOAD_TOOL_VECTORS} (rowid integer PRIMARY KEY, {vector}, server_id text NOT NULL, "
        f"{filters})",
        f"CREATE INDEX ix_{WORKLOAD_TOOL_VECTORS}_server_id ON {WORKLOAD_TOOL_VECTORS} (server_id)",
    ]


def keyword_ddl() -> list[str]:
    counts = ", ".join(f"{column} integer NOT NULL" for column in TF_COLUMNS)
    statements = []
    for table in FTS_TABLES:
        statements += [
            f"CREATE TABLE {table} (rowid integer PRIMARY KEY, length integer NOT NULL)",
            # (term, rowid) first: a query looks terms up; deletes go by rowid.
            f"CREATE TABLE {terms_table(table)} (term text NOT NULL, rowid integer NOT NULL, {counts}, "
            "PRIMARY KEY (term, rowid))",
            f"CREATE INDEX ix_{terms_table(table)}_rowid ON {terms_table(table)} (rowid)",
        ]
    return statements


def hnsw_ddl(enabled: bool) -> list[str]:
    """Statements that build (or drop) the HNSW indexes of the tool vector tables."""
    if not enabled:
        return [f"DROP INDEX IF EXISTS ix_{table}_hnsw" for table in HNSW_TABLES]
    return [f"CREATE INDEX IF NOT EXISTS ix_{table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops)"
            for table in HNSW_TABLES]


def tool_token_count(details: Any) -> int:
    """``ceil(len(compact JSON of name, description, inputSchema) / 4)``: what SQLite's
    ``TOOL_TOKENS_SQL`` computes (and ``mcp.tokens.tool_tokens``; a test holds them equal)."""
    if isinstance(details, str):
        details = json.loads(details)
    definition = {"name": details.get("name"), "description": details.get("description") or "",
                  "inputSchema": details.get("inputSchema") or {}}
    return math.ceil(len(json.dumps(definition, separators=(",", ":"), ensure_ascii=False)) / 4)


def vector_literal(embedding: bytes) -> str:
    """pgvector's text form of float32 bytes (exact: each float32 prints as a shortest
    round-tripping decimal and parses back to itself)."""
    return "[" + ",".join(repr(v) for v in np.frombuffer(embedding, dtype="<f4").tolist()) + "]"


class PostgresBackend(Backend):
    name = "postgresql"

    def vector_ddl(self, dim: int) -> list[str]:
        return vector_ddl(dim)

    def keyword_ddl(self) -> list[str]:
        return keyword_ddl()

    def side_tables(self) -> set[str]:
        return {*VECTOR_TABLES, *FTS_TABLES, *(terms_table(t) for t in FTS_TABLES)}

    async def table_names(self, conn: AsyncConnection) -> set[str]:
        return set((await conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))).scalars())

    async def tune(self, conn: AsyncConnection, *, hnsw: bool) -> None:
        for statement in hnsw_ddl(hnsw):
            await conn.execute(text(statement))

    def vector(self, param: str) -> str:
        return f"CAST(:{param} AS vector)"

    def vector_value(self, embedding: bytes) -> Any:
        return vector_literal(embedding)

    async def insert_keywords(self, c: AsyncConnection, table: str, rows: Sequence[dict[str, Any]]) -> None:
        documents = document_terms((row["id"], [row[col] or "" for col in FTS_COLUMNS]) for row in rows)
        if not documents:
            return
        await c.execute(text(f"INSERT INTO {table}(rowid, length) VALUES (:id, :n)"),
                        [{"id": i, "n": doc.length} for i, doc in documents.items()])
        terms = [{"term": term, "id": i, **dict(zip(TF_COLUMNS, counts, strict=True))}
                 for i, doc in documents.items() for term, counts in doc.counts.items()]
        if terms:
            await c.execute(text(
                f"INSERT INTO {terms_table(table)}(term, rowid, {', '.join(TF_COLUMNS)}) "
                f"VALUES (:term, :id, {', '.join(':' + col for col in TF_COLUMNS)})"), terms)

    async def delete_keywords(self, c: AsyncConnection, table: str, ids: Sequence[int]) -> None:
        if ids:
            await c.execute(text(f"DELETE FROM {terms_table(table)} WHERE rowid = ANY(:ids)"), {"ids": list(ids)})
            await c.execute(text(f"DELETE FROM {table} WHERE rowid = ANY(:ids)"), {"ids": list(ids)})

    async def after_explicit_ids(self, c: AsyncConnection, table: str) -> None:
        await c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                             f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"))

    async def knn(
        self, conn: AsyncConnection, table: str, key: str, embedding: bytes, k: int,
        where: Sequence[str], params: dict[str, Any], columns: str = "",
    ) -> Sequence[Any]:
        extra = f", {columns}" if columns else ""
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        return (await conn.execute(text(
            f"SELECT v.{key}, v.embedding <=> CAST(:q AS vector) AS distance{extra} FROM {table} v{condition} "
            f"ORDER BY distance, v.{key} LIMIT :k"), {**params, "q": vector_literal(embedding), "k": k})).all()

    async def keyword_hits(
        self, conn: AsyncConnection, table: str, words: Sequence[str], weights: Sequence[float], k: int,
        joins: Sequence[tuple[str, str]], where: Sequence[str], params: dict[str, Any], columns: str = "",
    ) -> Sequence[Any]:
        phrases = [term for terms in phrase_terms(words) for term in terms]
        if not phrases:
            return []
        terms = terms_table(table)
        stats = (await conn.execute(text(f"SELECT count(*), coalesce(sum(length), 0) FROM {table}"))).one()
        rows, tokens = int(stats[0]), int(stats[1])
        if rows == 0:
            return []
        hits: dict[str, int] = dict((await conn.execute(text(
            f"SELECT term, count(*) FROM {terms} WHERE term = ANY(:terms) GROUP BY term"),
            {"terms": sorted(set(phrases))})).all())
        found = [term for term in phrases if hits.get(term)]
        if not found:
            return []
        idfs = [idf(rows, int(hits[term])) for term in found]
        weighted = " + ".join(f"{float(w)} * t.{col}" for w, col in zip(weights, TF_COLUMNS, strict=True))
        extra = f", {columns}" if columns else ""
        joined = "".join(f" JOIN {table_alias} ON {on}" for table_alias, on in joins)
        # One row per (tool, query phrase): a term asked twice counts twice, as in FTS5. Rounded
        # to 9 decimals so that rows FTS5 scores equal tie here too (summation order differs).
        return (await conn.execute(text(
            f"WITH q(term, idf) AS (SELECT * FROM unnest(CAST(:terms AS text[]), CAST(:idfs AS float8[]))), "
            f"s AS (SELECT t.rowid, round(CAST(sum(q.idf * (({weighted}) * {BM25_K1 + 1.0}) / "
            f"(({weighted}) + {BM25_K1} * ({1.0 - BM25_B} + {BM25_B} * d.length / CAST(:avgdl AS float8)))) "
            f"AS numeric), 9) AS score FROM q JOIN {terms} t ON t.term = q.term JOIN {table} d ON d.rowid = t.rowid "
            "GROUP BY t.rowid) "
            f"SELECT f.rowid, CAST(f.score AS float8) AS score{extra} FROM s f{joined}"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY f.score DESC, f.rowid LIMIT :k"),
            {**params, "terms": found, "idfs": idfs, "avgdl": tokens / rows, "k": k})).all()
