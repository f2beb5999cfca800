"""Hybrid tool search: sqlite-vec KNN and FTS5 BM25, fused by reciprocal rank.

Why fusion by rank: scores of the two retrievers live on unrelated scales, ranks do not. On
LiveMCPBench (95 real tasks over 527 real tools, ``python -m bench.retrieval``) fusion beats
either retriever alone: Recall@10 0.53 hybrid vs 0.44 vector-only and 0.45 BM25-only, and the
first hit is an annotated tool for 44% of the tasks (35% and 33% alone). The defaults here
(k = 20, vector weight 1.25, query split into its parts) were chosen on that set; the tuning
table is in bench/RESULTS.md.

Only tools of RUNNING workloads are ever returned: the vector query filters on the vec0
``status`` metadata column inside sqlite-vec, the full-text query joins the server table.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.db.virtual import (
    REGISTRY_SERVER_VECTOR,
    REGISTRY_TOOL_FTS,
    REGISTRY_TOOL_VECTORS,
    WORKLOAD_TOOL_FTS,
    WORKLOAD_TOOL_VECTORS,
)
from mcp_optimizer.embeddings import Embedder, to_bytes

SearchMode = Literal["hybrid", "vector", "bm25"]
_S_NAMESPACE = "coalesce(s.namespace, '')"

_WORD = re.compile(r"\w+", re.UNICODE)
# Words that carry no meaning for tool retrieval; without this "how do I ..." matches every
# description containing "do". Kept short on purpose: FTS5 has no stopword list of its own.
STOPWORDS = frozenset(
    [
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "could", "do", "does", "for", "from", "get",
        "got", "have", "how", "i", "in", "into", "is", "it", "its", "me", "my", "need", "of", "on", "or",
        "our", "please", "should", "so", "some", "that", "the", "their", "them", "then", "there", "these",
        "this", "to", "use", "using", "want", "was", "we", "what", "when", "where", "which", "who", "will",
        "with", "would", "you", "your",
    ]
)


def fts_query(*texts: str | None) -> str:
    """An FTS5 MATCH expression that is always valid, whatever the user typed.

    Every word becomes a quoted string joined by OR, so FTS5 operators in user text (``NEAR``,
    ``AND``, ``*``, ``-``, ``:``, quotes, parentheses) are plain words, never syntax.
    Returns "" when nothing searchable remains.
    """
    words: list[str] = []
    for chunk in texts:
        for word in _WORD.findall((chunk or "").lower()):
            if word not in STOPWORDS and word not in words and (len(word) > 1 or not word.isascii()):
                words.append(word)
    return " OR ".join(f'"{w}"' for w in words[:64])


# Where a request for several things splits: sentence ends, then commas and "and"/"then".
_SENTENCE_END = re.compile(r"(?<=[.!?;\u3002\uff01\uff1f\uff1b])\s+|\n+")
_CLAUSE_BREAK = re.compile(r"[,\uff0c\u3001]\s*|\s+(?:and then|then|and)\s+", re.IGNORECASE)
#: At most this many parts are embedded besides the whole query (each costs a KNN scan).
MAX_QUERY_PARTS = 5


def query_parts(query: str, limit: int = MAX_QUERY_PARTS) -> list[str]:
    """The clauses of a query that asks for several things, or [] for a single request.

    A task like "read the PDF, draw a word cloud and save it as a Word file" needs three tools;
    one embedding of the whole sentence lands between them and is near none. Each part of two
    or more words is embedded as well and a tool counts with its best similarity to any of them.
    Measured on LiveMCPBench's 94 multi-tool tasks (bench/retrieval.py): vector-only Recall@10
    0.37 -> 0.45, hybrid MRR 0.51 -> 0.55.
    """
    parts = [clause.strip() for sentence in _SENTENCE_END.split(query.strip())
             for clause in _CLAUSE_BREAK.split(sentence)]
    parts = [part for part in parts if len(part.split()) >= 2]
    if len(parts) < 2 or limit <= 0:
        return []
    # The longest parts carry the most content when there are too many to embed them all.
    keep = set(sorted(range(len(parts)), key=lambda i: -len(parts[i]))[:limit])
    return [part for i, part in enumerate(parts) if i in keep]


@dataclass(frozen=True)
class ToolHit:
    server: str
    server_name: str
    tool: str
    description: str
    input_schema: dict[str, Any]
    score: float
    group: str
    namespace: str | None
    #: Diagnostics: 1-based rank in each retriever (None when it did not find the tool).
    vector_rank: int | None = None
    bm25_rank: int | None = None


@dataclass(frozen=True)
class RegistryServerHit:
    catalog: str
    name: str
    description: str
    remote: bool
    url: str | None
    package: str | None
    transport: str | None
    score: float
    tools: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkloadInfo:
    workload_name: str
    name: str
    status: str
    status_reason: str | None
    endpoint: str | None
    transport: str
    group: str
    namespace: str | None
    registry_server_name: str | None
    tool_names: list[str]


def _in_clause(column: str, prefix: str, values: Sequence[object], params: dict[str, Any]) -> str:
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return f"{column} IN ({', '.join(names)})"


def _scope_clauses(
    params: dict[str, Any],
    groups: Sequence[str] | None,
    namespaces: Sequence[str] | None,
    *,
    group_column: str,
    namespace_column: str,
) -> list[str]:
    """WHERE clauses restricting workloads to ``groups``/``namespaces`` (None: no restriction).

    A workload without a namespace stores none (NULL in the table, "" in vec0 metadata); the
    namespace column given must map that to "" so that a namespace-restricted scope never sees it.
    """
    clauses = []
    if groups is not None:
        clauses.append(_in_clause(group_column, "g", groups, params))
    if namespaces is not None:
        clauses.append(_in_clause(namespace_column, "n", namespaces, params))
    return clauses


class ToolSearch:
    """Read side of the index: find tools, find registry servers worth installing, list tools."""

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        *,
        min_similarity: float = 0.3,
        rrf_k: float = 20.0,
        vector_weight: float = 1.25,
        bm25_weight: float = 1.0,
        candidates: int = 50,
        bm25_columns: tuple[float, float, float] = (2.0, 1.0, 0.5),
        max_query_parts: int = MAX_QUERY_PARTS,
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.min_similarity = min_similarity
        self.rrf_k = rrf_k
        self.vector_weight = vector_weight
        self.bm25_weight = bm25_weight
        self.candidates = candidates
        #: BM25 weights of the FTS columns (tool name, description, arguments).
        self.bm25_columns = bm25_columns
        #: Parts of a multi-request query embedded besides the whole (see :func:`query_parts`);
        #: each costs one more KNN scan, 0 turns splitting off.
        self.max_query_parts = max_query_parts

    def _bm25(self, table: str) -> str:
        return f"bm25({table}, {', '.join(str(float(w)) for w in self.bm25_columns)})"

    async def find_tools(
        self,
        query: str,
        *,
        keywords: Sequence[str] | None = None,
        limit: int = 10,
        groups: Sequence[str] | None = None,
        namespaces: Sequence[str] | None = None,
        server: str | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[ToolHit]:
        """The ``limit`` tools of RUNNING workloads that best answer ``query``, best first.

        ``groups``/``namespaces`` restrict to those (an empty list means nothing is visible),
        ``server`` to one workload. Vector hits below ``min_similarity`` count only when the
        full-text search found them too, so a query no tool answers returns nothing.
        """
        if limit <= 0 or (groups is not None and not groups) or (namespaces is not None and not namespaces):
            return []
        pool = max(self.candidates, limit * 3)
        match = fts_query(query, *(keywords or ())) if mode != "vector" else ""
        # The query is embedded (in a worker thread) while the full-text search runs.
        embedding: asyncio.Future[Any] | None = None
        if mode != "bm25" and query.strip():
            embedding = asyncio.ensure_future(self.embedder.aembed([query, *query_parts(query, self.max_query_parts)]))
        try:
            return await self._find_tools(match, embedding, limit, pool, groups, namespaces, server)
        finally:
            if embedding is not None and not embedding.done():
                embedding.cancel()

    async def _find_tools(
        self,
        match: str,
        embedding: asyncio.Future[Any] | None,
        limit: int,
        pool: int,
        groups: Sequence[str] | None,
        namespaces: Sequence[str] | None,
        server: str | None,
    ) -> list[ToolHit]:
        vector_hits: dict[int, tuple[int, float]] = {}
        bm25_hits: dict[int, int] = {}
        async with self.engine.connect() as conn:
            server_id = None
            if server is not None:
                server_id = (await conn.execute(
                    text("SELECT id FROM mcpservers_workload WHERE workload_name = :w"), {"w": server})).scalar()
                if server_id is None:
                    return []
            if match:
                params: dict[str, Any] = {"m": match, "k": pool}
                where = [f"{WORKLOAD_TOOL_FTS} MATCH :m", "s.status = 'RUNNING'", *_scope_clauses(
                    params, groups, namespaces, group_column='s."group"', namespace_column=_S_NAMESPACE)]
                if server_id is not None:
                    where.append("s.id = :sid")
                    params["sid"] = server_id
                # CROSS JOIN fixes the join order: the full-text match runs once and drives the
                # primary-key lookups. With a plain JOIN SQLite starts from the RUNNING servers and
                # re-runs the MATCH for every one of their tools (35 ms on 527 tools, 0.5 ms so).
                rows = await conn.execute(text(
                    f"SELECT f.rowid FROM {WORKLOAD_TOOL_FTS} f CROSS JOIN tools_workload t ON t.id = f.rowid "
                    f"CROSS JOIN mcpservers_workload s ON s.id = t.server_id WHERE {' AND '.join(where)} "
                    f"ORDER BY {self._bm25(WORKLOAD_TOOL_FTS)}, f.rowid LIMIT :k"), params)
                for rank, (rowid,) in enumerate(rows, start=1):
                    bm25_hits[rowid] = rank
            if embedding is not None:
                embeddings = [to_bytes(v) for v in await embedding]
                params = {"k": pool}
                where = ["embedding MATCH :q", "k = :k", "status = 'RUNNING'",
                         *_scope_clauses(params, groups, namespaces, group_column="grp", namespace_column="namespace")]
                if server_id is not None:
                    where.append("server_id = :sid")
                    params["sid"] = server_id
                knn = text(f"SELECT rowid, distance FROM {WORKLOAD_TOOL_VECTORS} WHERE {' AND '.join(where)} "
                           "ORDER BY distance")
                # A tool's similarity is its best against the whole query or any of its parts.
                best_similarity: dict[int, float] = {}
                for vector in embeddings:
                    for rowid, distance in await conn.execute(knn, {**params, "q": vector}):
                        best_similarity[rowid] = max(best_similarity.get(rowid, -1.0), 1.0 - float(distance))
                ranked = sorted(best_similarity, key=lambda r: (-best_similarity[r], r))[:pool]
                vector_hits = {rowid: (rank, best_similarity[rowid]) for rank, rowid in enumerate(ranked, start=1)}
            scores: dict[int, float] = {}
            for rowid, (rank, similarity) in vector_hits.items():
                if similarity >= self.min_similarity or rowid in bm25_hits:
                    scores[rowid] = self.vector_weight / (self.rrf_k + rank)
            for rowid, rank in bm25_hits.items():
                scores[rowid] = scores.get(rowid, 0.0) + self.bm25_weight / (self.rrf_k + rank)
            # Equal fused scores (one retriever's rank 1 + the other's rank 2, and vice versa) are
            # common; the vector similarity breaks the tie.
            best = sorted(scores, key=lambda r: (-scores[r], -vector_hits.get(r, (0, 0.0))[1]))[:limit]
            details = await self._tool_details(conn, best)
        return [
            ToolHit(**details[rowid], score=round(scores[rowid], 6),
                    vector_rank=vector_hits[rowid][0] if rowid in vector_hits else None,
                    bm25_rank=bm25_hits.get(rowid))
            for rowid in best if rowid in details
        ]

    async def _tool_details(self, conn: AsyncConnection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        params: dict[str, Any] = {}
        rows = await conn.execute(text(
            "SELECT t.id, t.details, s.workload_name, s.name, s.\"group\", s.namespace FROM tools_workload t "
            f"JOIN mcpservers_workload s ON s.id = t.server_id WHERE {_in_clause('t.id', 't', ids, params)}"),
            params)
        return {row.id: self._hit_fields(row) for row in rows}

    @staticmethod
    def _hit_fields(row: Any) -> dict[str, Any]:
        import json

        details = json.loads(row.details) if isinstance(row.details, str) else row.details
        return {
            "server": row.workload_name, "server_name": row.name, "tool": details.get("name", ""),
            "description": details.get("description") or "",
            "input_schema": details.get("inputSchema") or {"type": "object", "properties": {}},
            "group": row.group, "namespace": row.namespace,
        }

    async def running_tools(
        self,
        *,
        server: str | None = None,
        groups: Sequence[str] | None = None,
        namespaces: Sequence[str] | None = None,
    ) -> list[ToolHit]:
        """Every tool of RUNNING workloads (optionally one workload), ordered by server and name."""
        if (groups is not None and not groups) or (namespaces is not None and not namespaces):
            return []
        params: dict[str, Any] = {}
        where = ["s.status = 'RUNNING'", *_scope_clauses(
            params, groups, namespaces, group_column='s."group"', namespace_column=_S_NAMESPACE)]
        if server is not None:
            where.append("s.workload_name = :w")
            params["w"] = server
        async with self.engine.connect() as conn:
            rows = await conn.execute(text(
                "SELECT t.id, t.details, s.workload_name, s.name, s.\"group\", s.namespace FROM tools_workload t "
                f"JOIN mcpservers_workload s ON s.id = t.server_id WHERE {' AND '.join(where)} "
                "ORDER BY s.workload_name, t.name"), params)
            return [ToolHit(**self._hit_fields(row), score=0.0) for row in rows]

    async def running_groups(
        self, *, groups: Sequence[str] | None = None, namespaces: Sequence[str] | None = None
    ) -> list[str]:
        """The groups that have RUNNING workloads, within ``groups``/``namespaces`` (None: all)."""
        if (groups is not None and not groups) or (namespaces is not None and not namespaces):
            return []
        params: dict[str, Any] = {}
        where = ["s.status = 'RUNNING'", *_scope_clauses(
            params, groups, namespaces, group_column='s."group"', namespace_column=_S_NAMESPACE)]
        async with self.engine.connect() as conn:
            rows = await conn.execute(text(
                f'SELECT DISTINCT s."group" FROM mcpservers_workload s WHERE {" AND ".join(where)} '
                'ORDER BY s."group"'), params)
            return [str(group) for group in rows.scalars()]

    async def tool_input_schema(self, workload_name: str, tool: str) -> dict[str, Any] | None:
        """The stored ``inputSchema`` of one tool of a workload, or None."""
        import json

        async with self.engine.connect() as conn:
            details = (await conn.execute(text(
                "SELECT t.details FROM tools_workload t JOIN mcpservers_workload s ON s.id = t.server_id "
                "WHERE s.workload_name = :w AND t.name = :t"), {"w": workload_name, "t": tool})).scalar()
        if details is None:
            return None
        parsed = json.loads(details) if isinstance(details, str) else details
        schema = parsed.get("inputSchema") if isinstance(parsed, dict) else None
        return schema if isinstance(schema, dict) else None
    async def workload_namespaces(self) -> set[str]:
        """Every namespace that holds a workload (what Kubernetes auth asks a caller's access about)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT DISTINCT namespace FROM mcpservers_workload WHERE namespace IS NOT NULL")
            )
            return {str(ns) for ns in rows.scalars()}

    async def get_workload(self, workload_name: str) -> WorkloadInfo | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT id, workload_name, name, status, status_reason, endpoint, transport, \"group\", namespace, "
                "registry_server_name FROM mcpservers_workload WHERE workload_name = :w"),
                {"w": workload_name})).first()
            if row is None:
                return None
            names = (await conn.execute(text("SELECT name FROM tools_workload WHERE server_id = :s ORDER BY name"),
                                        {"s": row.id})).scalars().all()
        return WorkloadInfo(
            workload_name=row.workload_name, name=row.name, status=row.status, status_reason=row.status_reason,
            endpoint=row.endpoint, transport=row.transport, group=row.group, namespace=row.namespace,
            registry_server_name=row.registry_server_name, tool_names=list(names),
        )

    async def find_registry_servers(
        self,
        query: str,
        *,
        limit: int = 10,
        exclude_running: bool = True,
        groups: Sequence[str] | None = None,
        namespaces: Sequence[str] | None = None,
    ) -> list[RegistryServerHit]:
        """Registry servers worth installing for ``query``: fused ranks of server vectors, tool
        vectors and tool full-text hits, each server ranked by its best tool.

        Servers that already have a RUNNING linked workload are left out unless
        ``exclude_running`` is False. ``groups``/``namespaces`` say which workloads count: an
        entry another team runs must not vanish from this caller's answers, or its absence
        would tell the caller that it runs."""
        if limit <= 0 or not query.strip():
            return []
        pool = max(self.candidates, limit * 5)
        embedding = to_bytes(await self.embedder.aembed_one(query))
        match = fts_query(query)
        server_ranks: list[dict[str, int]] = []
        tool_names: dict[str, list[str]] = {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(text(
                f"SELECT server_id, distance FROM {REGISTRY_SERVER_VECTOR} WHERE embedding MATCH :q AND k = :k "
                "ORDER BY distance"), {"q": embedding, "k": pool})
            server_ranks.append({row.server_id: rank for rank, row in enumerate(
                (r for r in rows if 1.0 - r.distance >= self.min_similarity), start=1)})
            rows = await conn.execute(text(
                f"SELECT v.server_id, v.distance, t.name FROM {REGISTRY_TOOL_VECTORS} v "
                f"JOIN tools_registry t ON t.id = v.rowid WHERE v.embedding MATCH :q AND v.k = :k "
                "ORDER BY v.distance"), {"q": embedding, "k": pool})
            server_ranks.append(self._first_ranks(
                [(r.server_id, r.name) for r in rows if 1.0 - r.distance >= self.min_similarity], tool_names))
            if match:
                rows = await conn.execute(text(
                    f"SELECT t.server_id, t.name FROM {REGISTRY_TOOL_FTS} f CROSS JOIN tools_registry t "
                    f"ON t.id = f.rowid WHERE {REGISTRY_TOOL_FTS} MATCH :m "
                    f"ORDER BY {self._bm25(REGISTRY_TOOL_FTS)}, f.rowid LIMIT :k"),
                    {"m": match, "k": pool})
                server_ranks.append(self._first_ranks([(r.server_id, r.name) for r in rows], tool_names))
            scores: dict[str, float] = {}
            for ranks in server_ranks:
                for server_id, rank in ranks.items():
                    scores[server_id] = scores.get(server_id, 0.0) + 1.0 / (self.rrf_k + rank)
            visible = not ((groups is not None and not groups) or (namespaces is not None and not namespaces))
            params: dict[str, Any] = {}
            if exclude_running and scores and visible:
                where = ["status = 'RUNNING'", "registry_server_id IS NOT NULL", *_scope_clauses(
                    params, groups, namespaces, group_column='"group"', namespace_column="coalesce(namespace, '')")]
                running = set((await conn.execute(text(
                    f"SELECT DISTINCT registry_server_id FROM mcpservers_workload WHERE {' AND '.join(where)}"),
                    params)).scalars())
                scores = {k: v for k, v in scores.items() if k not in running}
            best = sorted(scores, key=lambda s: -scores[s])[:limit]
            if not best:
                return []
            params = {}
            rows = await conn.execute(text(
                "SELECT id, catalog, name, description, remote, url, package, transport FROM mcpservers_registry "
                f"WHERE {_in_clause('id', 's', best, params)}"), params)
            by_id = {row.id: row for row in rows}
        return [
            RegistryServerHit(
                catalog=by_id[s].catalog, name=by_id[s].name, description=by_id[s].description,
                remote=bool(by_id[s].remote), url=by_id[s].url, package=by_id[s].package,
                transport=by_id[s].transport, score=round(scores[s], 6), tools=tool_names.get(s, [])[:10],
            )
            for s in best if s in by_id
        ]

    @staticmethod
    def _first_ranks(hits: list[tuple[str, str]], tool_names: dict[str, list[str]]) -> dict[str, int]:
        ranks: dict[str, int] = {}
        for server_id, tool in hits:
            ranks.setdefault(server_id, len(ranks) + 1)
            names = tool_names.setdefault(server_id, [])
            if tool not in names:
                names.append(tool)
        return ranks
