"""``find_tool`` latency and throughput over 20,000 indexed tools, query embedding included.

The index: every LiveMCPBench server (70 servers, 527 real tools) deployed in 38 namespaces,
20,026 RUNNING tools (see :func:`bench.common.replica_specs`). Queries, each embedded by the model
(a fresh embedding cache per pass, so no query is ever answered from the cache):

* ``short``: the single requests inside LiveMCPBench's task questions ("generate a word cloud
  chart", "convert the document to PDF"), 2 to 30 words: what an agent sends to ``find_tool``;
* ``task``: the 94 whole task questions (up to several sentences; not split into parts by
  default, see ``ToolSearch(split_words=...)``).

Single client: p50/p99 of ``ToolSearch.find_tools`` (hybrid, limit 10), with the model's share
and the vector-only / BM25-only breakdown. Then 8 concurrent clients (asyncio tasks sharing one
``ToolSearch``, as the MCP endpoint does): queries per second and latency under load.
``--db postgresql``: the same on PostgreSQL + pgvector (a local pgserver, exact scans unless
``MCP_OPTIMIZER_PG_HNSW=on``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from bench.common import (
    Report,
    base_parser,
    build_replica_index,
    livemcpbench_tasks,
    load_embedder,
    ms_summary,
    percentile,
    print_header,
    temp_index,
    uncached,
)
from mcp_optimizer.db.backends import backend_of
from mcp_optimizer.db.search import SearchMode, ToolSearch, query_parts
from mcp_optimizer.db.virtual import WORKLOAD_TOOL_VECTORS
from mcp_optimizer.embeddings import FastEmbedder, to_bytes
from mcp_optimizer.ingest import Indexer


def query_sets() -> dict[str, list[str]]:
    questions = [str(t["Question"]).strip() for t in livemcpbench_tasks()]
    short: list[str] = []
    for question in questions:
        for part in query_parts(question) or [question]:
            if 2 <= len(part.split()) <= 30 and part not in short:
                short.append(part)
    return {"short": short, "task": questions}


async def knn_scan_seconds(indexer: Indexer, embedder: FastEmbedder, runs: int = 50) -> list[float]:
    vector = to_bytes(embedder.embed_one("generate a word cloud chart"))
    samples = []
    backend = backend_of(indexer.engine)
    async with indexer.engine.connect() as conn:
        for _ in range(runs):
            start = time.perf_counter()
            await backend.knn(conn, WORKLOAD_TOOL_VECTORS, "rowid", vector, 50, ["status = 'RUNNING'"], {})
            samples.append(time.perf_counter() - start)
    return samples


async def single_client(indexer: Indexer, embedder: FastEmbedder, queries: Sequence[str],
                        mode: SearchMode = "hybrid", **options: Any) -> tuple[list[float], float]:
    """Latencies of one client asking ``queries`` in turn; and the seconds spent in the model."""
    model = uncached(embedder)
    search = ToolSearch(indexer.engine, model, **options)
    latencies = []
    for query in queries:
        start = time.perf_counter()
        await search.find_tools(query, limit=10, mode=mode)
        latencies.append(time.perf_counter() - start)
    return latencies, model.seconds_embedding


async def concurrent_clients(indexer: Indexer, embedder: FastEmbedder, queries: Sequence[str],
                             clients: int) -> tuple[float, list[float]]:
    """(queries per second, latencies) with ``clients`` asking at once, each its share in turn."""
    search = ToolSearch(indexer.engine, uncached(embedder))
    latencies: list[float] = []

    async def client(mine: Sequence[str]) -> None:
        for query in mine:
            start = time.perf_counter()
            await search.find_tools(query, limit=10)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client(queries[i::clients]) for i in range(clients)))
    return len(queries) / (time.perf_counter() - start), latencies


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tools", type=int, help="indexed tools (default 20000; --quick 5000)")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    tool_target = args.tools or (5000 if args.quick else 20_000)
    passes = 1 if args.quick else 2
    print_header(f"find_tool over {tool_target} tools", args)
    embedder = load_embedder()
    report = Report()
    async with temp_index(embedder, backend=args.db) as indexer:
        workloads, tools, seconds = await build_replica_index(indexer, tool_target)
        print(f"indexed {tools} tools of {workloads} workloads in {seconds:.1f} s "
              f"({embedder.texts_embedded} distinct texts through the model)\n")
        sets = query_sets()
        # Warm-up: first ONNX runs and cold SQLite pages are not what a running server sees.
        await single_client(indexer, embedder, sets["short"][:20])
        for name, queries in sets.items():
            words = sorted(len(q.split()) for q in queries)
            latencies: list[float] = []
            model_seconds = 0.0
            for _ in range(passes):
                lat, in_model = await single_client(indexer, embedder, queries)
                latencies += lat
                model_seconds += in_model
            share = model_seconds / sum(latencies)
            met = percentile(latencies, 50) < 0.015 and percentile(latencies, 99) < 0.040
            report.add(f"find_tool, 1 client, {name} queries ({len(queries)}, median {words[len(words) // 2]} words)",
                       f"{ms_summary(latencies)}; {share:.0%} of it embedding the query",
                       "p50 < 15 ms, p99 < 40 ms", met)
            for mode in ("vector", "bm25"):
                lat, _ = await single_client(indexer, embedder, queries, mode)
                print(f"    {mode}-only: {ms_summary(lat)}")
            if name == "task":
                lat, _ = await single_client(indexer, embedder, queries, split_words=1)
                print(f"    hybrid with every query split into its clauses (split_words=1): {ms_summary(lat)}")
        # The floor under every vector search: one KNN scan over all tool vectors.
        scans = await knn_scan_seconds(indexer, embedder)
        scan = "sqlite-vec" if args.db == "sqlite" else "pgvector"
        report.add(f"one {scan} KNN scan (k=50) over {tools} vectors, no embedding", ms_summary(scans))
        for name, queries in sets.items():
            qps1, _ = await concurrent_clients(indexer, embedder, queries, 1)
            qps, latencies = await concurrent_clients(indexer, embedder, list(queries) * passes, args.clients)
            report.add(f"throughput, {args.clients} concurrent clients, {name} queries",
                       f"{qps:.0f} queries/s (1 client: {qps1:.0f}/s); latency under load {ms_summary(latencies)}")
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
