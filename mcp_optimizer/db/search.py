"""Hybrid tool search: BM25 and KNN, run at once and fused by score.

On SQLite the retrievers are FTS5's bm25() and sqlite-vec; on PostgreSQL the same BM25 computed
in SQL over FTS5's terms and pgvector (``db/backends``). This module is the same for both: what
is asked, the scope, the fusion.

Why BM25-led score fusion (:mod:`mcp_optimizer.db.fusion`, ``minmax``: each list scaled to
[0, 1], BM25 at weight 1 from its floor 0, the vector list at 0.5): on short real requests the
embedding alone ranks below BM25, and rank fusion let it reorder BM25's confident answers (the
private held-out set: the RRF default lost 13 points of R@1 to BM25 alone). At half weight the
vector list breaks BM25's near-ties and adds tools that share no word with the request, but
cannot undo a clear lexical match. Measured on every dev-set slice (``python -m
bench.retrieval``, bench/RESULTS.md "Retrieval"; R@5 default / BM25 only / vector only):
LiveMCPBench tasks 0.422 / 0.386 / 0.311, BFCL real-user 0.839 / 0.804 / 0.708, BFCL curated
0.930 / 0.908 / 0.876, MetaTool single 0.766 / 0.697 / 0.683, MetaTool multi-tool 0.705 /
0.626 / 0.375. Queries are not split into clauses by default (``split_words=0``): one KNN scan
per query.

Only tools of RUNNING workloads are ever returned: the vector query filters on the vec0
``status`` metadata column inside sqlite-vec (a WHERE before pgvector's scan), the full-text
query joins the server table.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.db.backends import Backend, backend_of
from mcp_optimizer.db.fusion import FusionMethod, Ranking, fuse
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
#: Words that carry no meaning for tool retrieval: English function words and the filler of
#: requests ("could you please help me find..."). Without this "how do I ..." matches every
#: description containing "do", and "provide"/"give"/"tell" match "Provides ..." in
#: descriptions. Words that name tool actions or qualify them ("up", "down", "off", "out", "not",
#: "all", "before", "after") are kept, and so is "id". FTS5 has no stopword list of its own;
#: removing these on the query side gained or held on every slice (bench/RESULTS.md, "Lexical side").
STOPWORDS = frozenset(
    [
        "a", "about", "additionally", "again", "also", "am", "an", "and", "any", "are", "as", "assist",
        "assistance", "at", "be", "because", "been", "being", "both", "but", "by", "can", "could",
        "currently", "did", "do", "does", "doing", "during", "each", "few", "for", "from", "further", "get",
        "give", "got", "had", "has", "have", "having", "he", "hello", "help", "her", "here", "hers",
        "herself", "hey", "hi", "him", "himself", "his", "how", "i", "if", "im", "in", "interested", "into",
        "is", "it", "its", "itself", "ive", "just", "kindly", "know", "let", "lets", "like", "looking", "me",
        "my", "myself", "need", "nor", "of", "on", "once", "or", "our", "ours", "ourselves", "own", "please",
        "provide", "she", "should", "so", "some", "specifically", "such", "tell", "than", "thank", "thanks",
        "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this",
        "those", "through", "to", "too", "until", "use", "using", "very", "via", "want", "wanted", "was",
        "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
        "would", "you", "your", "yours", "yourself", "yourselves",
    ]
)
#: The longest query that is searched as a whole; the rest of a longer text is ignored (the
#: MCP endpoint already refuses queries over 2000 characters).
MAX_QUERY_WORDS = 64


def fts_words(*texts: str | None) -> list[str]:
    """The words of a query the keyword side searches for, in order: lower-cased, without
    stopwords, repeats and single ASCII letters, at most :data:`MAX_QUERY_WORDS`."""
    words: list[str] = []
    for chunk in texts:
        for word in _WORD.findall((chunk or "").lower()):
            if word not in STOPWORDS and word not in words and (len(word) > 1 or not word.isascii()):
                words.append(word)
    return words[:MAX_QUERY_WORDS]


def fts_query(*texts: str | None) -> str:
    """An FTS5 MATCH expression that is always valid, whatever the user typed.

    Every word becomes a quoted string joined by OR, so FTS5 operators in user text (``NEAR``,
    ``AND``, ``*``, ``-``, ``:``, quotes, parentheses) are plain words, never syntax.
    Returns "" when nothing searchable remains.
    """
    return " OR ".join(f'"{w}"' for w in fts_words(*texts))


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


# Where a request for several things splits: sentence ends, then commas and "and"/"then".
_SENTENCE_END = re.compile(r"(?<=[.!?;\u3002\uff01\uff1f\uff1b])\s+|\n+")
_CLAUSE_BREAK = re.compile(r"[,\uff0c\u3001]\s*|\s+(?:and then|then|and)\s+", re.IGNORECASE)
#: At most this many parts are embedded besides the whole query (each costs a KNN scan).
MAX_QUERY_PARTS = 5


def query_parts(query: str, limit: int = MAX_QUERY_PARTS) -> list[str]:
    """The clauses of a query that asks for several things, or [] for a single request.

    A task like "read the PDF, draw a word cloud and save it as a Word file" needs three tools;
    one embedding of the whole sentence lands between them. Each part of two or more words can
    be embedded as well, a tool counting with its best similarity to any of them (see
    ``ToolSearch(split_words=...)``).
    """
    parts = [clause.strip() for sentence in _SENTENCE_END.split(query.strip())
             for clause in _CLAUSE_BREAK.split(sentence)]
    parts = [part for part in parts if len(part.split()) >= 2]
    if len(parts) < 2 or limit <= 0:
        return []
    # The longest parts carry the most content when there are too many to embed them all.
    keep = set(sorted(range(len(parts)), key=lambda i: -len(parts[i]))[:limit])
    return [part for i, part in enumerate(parts) if i in keep]


#: BM25 weights of the FTS columns, in :data:`~mcp_optimizer.db.virtual.FTS_COLUMNS` order (tool
#: name, description, arguments, server name). A structural choice, not a fit: the name is short
#: and names the action, so a word there counts double; the rest is the tool's own text and counts
#: once. Weights within 0.5-2 moved no slice beyond noise (bench/RESULTS.md, "Lexical side").
BM25_COLUMN_WEIGHTS = (2.0, 1.0, 1.0, 1.0)


class ToolSearch:
    """Read side of the index: find tools, find registry servers worth installing, list tools.

    ``embedder`` None is keyword-only search: every mode is BM25 and no model is needed.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder | None,
        *,
        hnsw_ef_search: int = 0,
        min_similarity: float | None = None,
        fusion: FusionMethod = "minmax",
        rrf_k: float = 60.0,
        vector_weight: float = 0.5,
        bm25_weight: float = 1.0,
        candidates: int = 50,
        bm25_columns: tuple[float, ...] = BM25_COLUMN_WEIGHTS,
        split_words: int = 0,
    ) -> None:
        self.engine = engine
        #: The database's half of each query (sqlite-vec and FTS5, or pgvector and SQL BM25).
        self.backend: Backend = backend_of(engine)
        #: PostgreSQL with HNSW indexes: candidates the index scan visits (``hnsw.ef_search``);
        #: 0 leaves pgvector's default. Ignored by exact scans.
        self.hnsw_ef_search = hnsw_ef_search
        self.embedder = embedder
        #: Vector hits below this cosine similarity count only if BM25 found them too (None:
        #: the model's own floor, :attr:`ModelSpec.min_similarity`).
        self.min_similarity = (min_similarity if min_similarity is not None
                               else embedder.spec.min_similarity if embedder is not None else 0.0)
        self.fusion: FusionMethod = fusion
        self.rrf_k = rrf_k
        self.vector_weight = vector_weight
        self.bm25_weight = bm25_weight
        self.candidates = candidates
        #: BM25 weights of the FTS columns (tool name, description, arguments, server).
        self.bm25_columns = bm25_columns
        #: Queries of at least this many words are also embedded clause by clause (see
        #: :func:`query_parts`); each clause costs one more KNN scan. 0: never.
        self.split_words = split_words

    def _fuse(self, bm25: Ranking[Any], vector: Ranking[Any]) -> dict[Any, float]:
        """The one fusion of every search (tools and registry servers)."""
        # BM25's floor is 0, the score of a tool without a query word; cosine similarity has none.
        return fuse([bm25, vector], self.fusion, weights=[self.bm25_weight, self.vector_weight],
                    floors=[0.0, None], k=self.rrf_k)

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
        full-text search found them too, so a query no tool answers returns nothing. Without a
        model every mode is ``bm25``.
        """
        if limit <= 0 or (groups is not None and not groups) or (namespaces is not None and not namespaces):
            return []
        if self.embedder is None:
            mode = "bm25"
        pool = max(self.candidates, limit * 3)
        match = fts_words(query, *(keywords or ())) if mode != "vector" else []
        # The query is embedded (in a worker thread) while the full-text search runs.
        embedding: asyncio.Future[Any] | None = None
        if mode != "bm25" and query.strip() and self.embedder is not None:
            parts = query_parts(query) if self.split_words and len(query.split()) >= self.split_words else []
            embedding = asyncio.ensure_future(self.embedder.aembed([query, *parts], query=True))
        try:
            return await self._find_tools(match, embedding, limit, pool, groups, namespaces, server)
        finally:
            if embedding is not None and not embedding.done():
                embedding.cancel()

    async def _find_tools(
        self,
        match: list[str],
        embedding: asyncio.Future[Any] | None,
        limit: int,
        pool: int,
        groups: Sequence[str] | None,
        namespaces: Sequence[str] | None,
        server: str | None,
    ) -> list[ToolHit]:
        server_id = None
        if server is not None:
            async with self.engine.connect() as conn:
                server_id = (await conn.execute(
                    text("SELECT id FROM mcpservers_workload WHERE workload_name = :w"), {"w": server})).scalar()
            if server_id is None:
                return []
        # The two retrievers run at once, each on its own connection (SQLite leaves Python's
        # lock while it works): the KNN scan, the larger cost at 20,000 tools, starts as soon as
        # the query is embedded instead of after the full-text query.
        bm25, similarities = await asyncio.gather(
            self._bm25_hits(match, pool, groups, namespaces, server_id),
            self._vector_hits(embedding, pool, groups, namespaces, server_id))
        found = {rowid for rowid, _ in bm25}
        vector = [(rowid, similarity) for rowid, similarity in similarities
                  if similarity >= self.min_similarity or rowid in found]
        scores = self._fuse(bm25, vector)
        similarity = dict(vector)
        # Equal fused scores break by the vector similarity, then the id (stable answers).
        best = sorted(scores, key=lambda r: (-scores[r], -similarity.get(r, -1.0), r))[:limit]
        async with self.engine.connect() as conn:
            details = await self._tool_details(conn, best)
        vector_rank = {rowid: rank for rank, (rowid, _) in enumerate(vector, start=1)}
        bm25_rank = {rowid: rank for rank, (rowid, _) in enumerate(bm25, start=1)}
        return [
            ToolHit(**details[rowid], score=round(scores[rowid], 6),
                    vector_rank=vector_rank.get(rowid), bm25_rank=bm25_rank.get(rowid))
            for rowid in best if rowid in details
        ]

    async def _bm25_hits(
        self, match: list[str], pool: int, groups: Sequence[str] | None, namespaces: Sequence[str] | None,
        server_id: str | None,
    ) -> list[tuple[int, float]]:
        """The ``pool`` best full-text matches of RUNNING workloads' tools, with their BM25 scores."""
        if not match:
            return []
        params: dict[str, Any] = {}
        where = ["s.status = 'RUNNING'", *_scope_clauses(
            params, groups, namespaces, group_column='s."group"', namespace_column=_S_NAMESPACE)]
        if server_id is not None:
            where.append("s.id = :sid")
            params["sid"] = server_id
        async with self.engine.connect() as conn:
            rows = await self.backend.keyword_hits(
                conn, WORKLOAD_TOOL_FTS, match, self.bm25_columns, pool,
                [("tools_workload t", "t.id = f.rowid"), ("mcpservers_workload s", "s.id = t.server_id")],
                where, params)
            return [(int(row[0]), float(row[1])) for row in rows]

    async def _vector_hits(
        self, embedding: asyncio.Future[Any] | None, pool: int, groups: Sequence[str] | None,
        namespaces: Sequence[str] | None, server_id: str | None,
    ) -> list[tuple[int, float]]:
        """The ``pool`` RUNNING workloads' tools nearest to the query (or any of its parts),
        best first, with their cosine similarity."""
        if embedding is None:
            return []
        embeddings = [to_bytes(v) for v in await embedding]
        params: dict[str, Any] = {}
        # Filtered inside the scan on both backends (vec0 metadata columns; a WHERE before
        # PostgreSQL's exact scan), so stopped servers' tools never crowd out the top k.
        where = ["status = 'RUNNING'",
                 *_scope_clauses(params, groups, namespaces, group_column="grp", namespace_column="namespace")]
        if server_id is not None:
            where.append("server_id = :sid")
            params["sid"] = server_id
        # A tool's similarity is its best against the whole query or any of its parts.
        best: dict[int, float] = {}
        async with self.engine.connect() as conn:
            await self._tune_knn(conn, pool)
            for query_vector in embeddings:
                for rowid, distance in await self.backend.knn(
                        conn, WORKLOAD_TOOL_VECTORS, "rowid", query_vector, pool, where, params):
                    best[rowid] = max(best.get(rowid, -1.0), 1.0 - float(distance))
        ranked = sorted(best, key=lambda r: (-best[r], r))[:pool]
        return [(rowid, best[rowid]) for rowid in ranked]

    async def _tune_knn(self, conn: AsyncConnection, pool: int) -> None:
        """On PostgreSQL with HNSW indexes, let the index scan visit enough candidates for ``pool``
        hits after filtering (pgvector filters after the index scan)."""
        if self.hnsw_ef_search > 0 and self.backend.name == "postgresql":
            ef_search = min(1000, max(self.hnsw_ef_search, pool))
            await conn.execute(text(f"SET hnsw.ef_search = {int(ef_search)}"))

    async def _registry_tool_names(self, conn: AsyncConnection, ids: Sequence[int]) -> dict[int, str]:
        if not ids:
            return {}
        params: dict[str, Any] = {}
        rows = await conn.execute(text(
            f"SELECT id, name FROM tools_registry WHERE {_in_clause('id', 't', ids, params)}"), params)
        return {int(row.id): str(row.name) for row in rows}

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
        """Registry servers worth installing for ``query``, fused like :meth:`find_tools`: the
        full-text ranking of the servers by their best tool, and the vector ranking by the best
        similarity of the server's own text or any of its tools.

        Servers that already have a RUNNING linked workload are left out unless
        ``exclude_running`` is False. ``groups``/``namespaces`` say which workloads count: an
        entry another team runs must not vanish from this caller's answers, or its absence
        would tell the caller that it runs."""
        if limit <= 0 or not query.strip():
            return []
        pool = max(self.candidates, limit * 5)
        embedding = (to_bytes(await self.embedder.aembed_one(query, query=True))
                     if self.embedder is not None else None)
        match = fts_words(query)
        tool_names: dict[str, list[str]] = {}
        bm25: dict[str, float] = {}
        similarity: dict[str, float] = {}

        def best(scores: dict[str, float], server_id: str, score: float, tool: str | None = None) -> None:
            scores[server_id] = max(scores.get(server_id, score), score)
            if tool is not None and tool not in tool_names.setdefault(server_id, []):
                tool_names[server_id].append(tool)

        async with self.engine.connect() as conn:
            for row in await self.backend.keyword_hits(
                    conn, REGISTRY_TOOL_FTS, match, self.bm25_columns, pool,
                    [("tools_registry t", "t.id = f.rowid")], [], {}, columns="t.server_id, t.name"):
                best(bm25, row.server_id, float(row.score), row.name)
            if embedding is not None:
                await self._tune_knn(conn, pool)
                for row in await self.backend.knn(conn, REGISTRY_SERVER_VECTOR, "server_id", embedding, pool, [], {}):
                    best(similarity, row.server_id, 1.0 - float(row.distance))
                rows = await self.backend.knn(conn, REGISTRY_TOOL_VECTORS, "rowid", embedding, pool, [], {},
                                              columns="v.server_id")
                names = await self._registry_tool_names(conn, [row.rowid for row in rows])
                for row in rows:
                    if 1.0 - float(row.distance) >= self.min_similarity:
                        best(similarity, row.server_id, 1.0 - float(row.distance), names.get(row.rowid))
            vector = [(sid, sim) for sid, sim in similarity.items() if sim >= self.min_similarity or sid in bm25]
            scores = self._fuse(sorted(bm25.items(), key=lambda h: (-h[1], h[0])),
                                sorted(vector, key=lambda h: (-h[1], h[0])))
            visible = not ((groups is not None and not groups) or (namespaces is not None and not namespaces))
            params: dict[str, Any] = {}
            if exclude_running and scores and visible:
                where = ["status = 'RUNNING'", "registry_server_id IS NOT NULL", *_scope_clauses(
                    params, groups, namespaces, group_column='"group"', namespace_column="coalesce(namespace, '')")]
                running = set((await conn.execute(text(
                    f"SELECT DISTINCT registry_server_id FROM mcpservers_workload WHERE {' AND '.join(where)}"),
                    params)).scalars())
                scores = {k: v for k, v in scores.items() if k not in running}
            top = sorted(scores, key=lambda s: (-scores[s], -similarity.get(s, -1.0), s))[:limit]
            if not top:
                return []
            params = {}
            by_id = {row.id: row for row in await conn.execute(text(
                "SELECT id, catalog, name, description, remote, url, package, transport FROM mcpservers_registry "
                f"WHERE {_in_clause('id', 's', top, params)}"), params)}
        return [
            RegistryServerHit(
                catalog=by_id[s].catalog, name=by_id[s].name, description=by_id[s].description,
                remote=bool(by_id[s].remote), url=by_id[s].url, package=by_id[s].package,
                transport=by_id[s].transport, score=round(scores[s], 6), tools=tool_names.get(s, [])[:10],
            )
            for s in top if s in by_id
        ]
