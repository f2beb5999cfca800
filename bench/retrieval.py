"""Retrieval quality of ``find_tool`` on every dev set and its natural slices, through the real index.

Each set is indexed on its own (its tools as RUNNING workloads, through the :class:`Indexer`, so
BM25 statistics are the set's own) and every query goes through :class:`ToolSearch`. The sets,
their slices, how their labels map to indexed tools and the metrics (R@1, R@5, R@10, MRR@10,
any-of within a group of equivalent tools, all-of across a multi-tool query's groups) are in
:mod:`tests.support.devsets`; find_tool p50/p95 is the latency of
``ToolSearch.find_tools`` (limit 10), query embedding included (the query side never reads a
cache: every query runs through the model).

Rows: BM25 only (no model), then per model its vector-only row and every fusion configuration.
After the per-slice table: each row's *worst slice* (largest loss against the best row on that
slice), whether it holds BM25's floor on every slice, and paired bootstrap 95% intervals of
each row minus the reference row (BM25 unless ``--reference``), per slice.

Run ``python -m bench.retrieval`` for the default configuration against BM25 and its own
vector-only half (a few minutes); ``--full`` for every model and fusion candidate (about 30
minutes on 2 cores); ``--quick`` scores a fixed sample of 150 queries per slice. Tool vectors
are kept on disk between runs (``~/.cache/mcp-optimizer/bench/vectors.sqlite``), so only the
first run of a model embeds its tools. ``--db postgresql`` runs the same on PostgreSQL + pgvector
(a local pgserver), to compare the backends (``--save`` one run, ``--baseline`` it into the other).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BENCH_MODELS,
    base_parser,
    load_embedder,
    percentile,
    print_header,
    temp_index,
    uncached,
)
from mcp_optimizer.db.search import SearchMode, ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.embeddings.texts import tool_embedding_text
from tests.support.devsets import (
    METRICS,
    SLICES,
    DegradedEmbedder,
    DevSet,
    Query,
    QueryResult,
    dev_sets,
    livemcpbench,
    mean_metric,
    sample,
    score,
    workload_specs,
)

#: What "long" means for the split-long candidate: the 90th percentile of the short-request
#: slices is 22-32 words; LiveMCPBench's multi-step tasks have a median of 19 words and 18% of
#: them reach 30.
LONG_QUERY_WORDS = 30


@dataclass(frozen=True)
class Config:
    """One row: a ranking configuration (a search mode and :class:`ToolSearch` options)."""

    label: str
    mode: SearchMode
    options: tuple[tuple[str, Any], ...] = ()
    #: Model key of :data:`bench.common.BENCH_MODELS`; None for BM25 (no model).
    model: str | None = None
    #: Share of queries for which the vector retriever answers another query (``--degrade``).
    degraded: float = 0.0

    @property
    def name(self) -> str:
        name = self.label if self.model is None else f"{self.model}: {self.label}"
        return f"{name} (vector degraded {self.degraded:.0%})" if self.degraded else name


#: Fusion candidates, each a set of ToolSearch options; ``default`` is ToolSearch's own defaults.
FUSION_CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    # The defaults before issue 14: RRF k=20, vector weight 1.25, every query split into clauses.
    "previous": {"fusion": "rrf", "rrf_k": 20, "vector_weight": 1.25, "split_words": 1},
    "rrf60": {"fusion": "rrf", "rrf_k": 60, "vector_weight": 1.0},
    "minmax-equal": {"fusion": "minmax", "vector_weight": 1.0},
    "confidence": {"fusion": "confidence", "vector_weight": 0.5},
    "split-all": {"split_words": 1},
    "split-long": {"split_words": LONG_QUERY_WORDS},
}


#: What decides a default: a configuration must hold BM25's floor on both, on every slice.
FLOOR_METRICS = ("R@5", "MRR@10")

#: results[row name][slice][query id]
Results = dict[str, dict[str, dict[str, QueryResult]]]


def bootstrap(a: dict[str, QueryResult], b: dict[str, QueryResult], metric: str,
              resamples: int = 2000) -> tuple[float, float, float]:
    """Mean of a - b over the queries both answered, with a paired bootstrap 95% interval."""
    ids = sorted(a.keys() & b.keys())
    diffs = np.array([a[i].metric(metric) - b[i].metric(metric) for i in ids])
    rng = np.random.default_rng(0)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    return float(diffs.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# ----------------------------------------------------------------------------------- runs


async def run_model(model: str | None, configs: Sequence[Config], sets: Sequence[DevSet],
                    slices: dict[str, list[Query]], results: Results, cached_queries: bool,
                    backend: str = "sqlite") -> None:
    """Index every set with ``model`` (None: keyword-only) and score ``configs`` on every slice."""
    embedder = load_embedder(model, disk_cache=True) if model is not None else None
    for devset in sets:
        wanted = [name for name in devset.slices if name in slices]
        if not wanted:
            continue
        async with temp_index(embedder, backend=backend) as indexer:
            start = time.perf_counter()
            for spec in workload_specs(devset):
                await indexer.apply_workload(spec)
            tools = sum(len(t) for _, t in devset.servers)
            print(f"  [{model or 'bm25'}] indexed {devset.name}: {tools} tools in {time.perf_counter() - start:.1f} s",
                  flush=True)
            degraded: dict[float, DegradedEmbedder] = {}
            for config in configs:
                query_model: Embedder | None = None
                if embedder is not None:
                    query_model = embedder if cached_queries else uncached(embedder)
                    if config.degraded:
                        # One per share: every configuration gets the same swapped queries, and
                        # with --cached-queries they are embedded once.
                        if not cached_queries or config.degraded not in degraded:
                            degraded[config.degraded] = DegradedEmbedder(embedder, config.degraded)
                        query_model = degraded[config.degraded]
                search = ToolSearch(indexer.engine, query_model, **dict(config.options))
                for name in wanted:
                    if isinstance(query_model, DegradedEmbedder):
                        query_model.pool = [q.text for q in slices[name]]
                    await score(search, slices[name][:5], config.mode)  # warm-up: first ONNX runs, cold pages
                    results.setdefault(config.name, {})[name] = await score(search, slices[name], config.mode)


def ingest_speed(model: str) -> tuple[float, float]:
    """(passages/s, query p50 ms) of the model alone: LiveMCPBench's 527 tool texts with a cold
    cache in the embedder's length-sorted batches, then its 94 task questions one at a time."""
    embedder = uncached(load_embedder(model))
    texts = [tool_embedding_text(server, tool) for server, tools in livemcpbench().servers for tool in tools]
    start = time.perf_counter()
    embedder.embed(texts)
    rate = len(set(texts)) / (time.perf_counter() - start)
    latencies = []
    for query in livemcpbench().slices["livemcpbench"]:
        start = time.perf_counter()
        embedder.embed([query.text], query=True)
        latencies.append(time.perf_counter() - start)
    return rate, percentile(latencies, 50) * 1000


# --------------------------------------------------------------------------------- tables


def _ms(results: dict[str, QueryResult], p: float) -> float:
    return percentile([r.seconds for r in results.values()], p) * 1000


def print_tables(results: Results, slices: Sequence[str], reference: str) -> None:
    rows = list(results)
    best = {(s, m): max(mean_metric(results[r][s], m) for r in rows if s in results[r])
            for s in slices for m in METRICS}
    print("\n### Every slice, every row\n")
    print("| slice | row | R@1 | R@5 | R@10 | MRR@10 | p50 ms | p95 ms |\n|---|---|---|---|---|---|---|---|")
    for s in slices:
        n = len(next(iter(results.values()))[s])
        for row in rows:
            res = results[row].get(s)
            if res is None:
                continue
            cells = []
            for m in METRICS:
                value = mean_metric(res, m)
                cells.append(f"**{value:.3f}**" if value >= best[(s, m)] - 1e-9 else f"{value:.3f}")
            print(f"| {s} (n={n}) | {row} | {' | '.join(cells)} | {_ms(res, 50):.1f} | {_ms(res, 95):.1f} |")
    print("\n### Worst slice of each row (loss against the best row on that slice) and the BM25 floor\n")
    print("| row | worst slice, R@5 | worst slice, MRR@10 | slices >= BM25 on R@5 and MRR@10 | "
          "mean R@5 | mean MRR@10 |\n|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for m in FLOOR_METRICS:
            losses = {s: mean_metric(results[row][s], m) - best[(s, m)] for s in slices}
            worst = min(losses, key=lambda s: losses[s])
            cells.append(f"{worst} {losses[worst]:+.3f}")
        floor = "bm25"
        held = [s for s in slices if floor in results and all(
            mean_metric(results[row][s], m) >= mean_metric(results[floor][s], m) - 1e-9 for m in FLOOR_METRICS)]
        means = [statistics.fmean(mean_metric(results[row][s], m) for s in slices) for m in FLOOR_METRICS]
        print(f"| {row} | {cells[0]} | {cells[1]} | {len(held)}/{len(slices)} | {means[0]:.3f} | {means[1]:.3f} |")
    if reference not in results:
        return
    print(f"\n### Each row minus `{reference}`, per slice: mean difference [paired bootstrap 95% interval]\n")
    print(f"| row | metric | {' | '.join(slices)} |\n|---|---|{'---|' * len(slices)}")
    for row in rows:
        if row == reference:
            continue
        for m in FLOOR_METRICS:
            cells = []
            for s in slices:
                d, lo, hi = bootstrap(results[row][s], results[reference][s], m)
                mark = "+" if lo > 0 else ("-" if hi < 0 else "")
                cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}")
            print(f"| {row} | {m} | {' | '.join(cells)} |")


def save(results: Results, path: Path) -> None:
    path.write_text(json.dumps({row: {s: {q: [r.ranks, r.seconds] for q, r in res.items()}
                                      for s, res in slices.items()} for row, slices in results.items()}))


def load(path: Path, suffix: str) -> Results:
    raw = json.loads(path.read_text())
    return {f"{row}{suffix}": {s: {q: QueryResult(v[0], v[1]) for q, v in res.items()} for s, res in slices.items()}
            for row, slices in raw.items()}


def configs_for(models: Sequence[str], fusion: Sequence[str], degrade: float = 0.0) -> dict[str | None, list[Config]]:
    by_model: dict[str | None, list[Config]] = {None: [Config("bm25", "bm25")]}
    for model in models:
        rows = [Config("vector", "vector", model=model)] + [
            Config(name, "hybrid", tuple(FUSION_CANDIDATES[name].items()), model) for name in fusion]
        if degrade:
            rows += [Config(c.label, c.mode, c.options, model, degrade) for c in list(rows)]
        by_model[model] = rows
    return by_model


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--full", action="store_true", help="every model and every fusion candidate")
    parser.add_argument("--models", help=f"comma-separated, of {', '.join(BENCH_MODELS)} (default: the default model)")
    parser.add_argument("--fusion", help=f"comma-separated, of {', '.join(FUSION_CANDIDATES)} (default: default)")
    parser.add_argument("--slices", help=f"comma-separated, of {', '.join(SLICES)} (default: all)")
    parser.add_argument("--reference", default="bm25", help="row the bootstrap intervals are relative to")
    parser.add_argument("--cached-queries", action="store_true",
                        help="let queries hit the embedding cache (faster iteration; latency then excludes the model)")
    parser.add_argument("--save", type=Path, help="write every per-query result to this JSON file")
    parser.add_argument("--baseline", type=Path, help="add the rows of a --save file, for paired comparisons")
    parser.add_argument("--speed", action="store_true", help="also measure each model's passages/s and query time")
    parser.add_argument("--degrade", type=float, default=0.0,
                        help="also score every row with the vector retriever answering another query for this "
                             "share of queries (a weak embedder, to test that fusion holds BM25's floor)")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else (list(BENCH_MODELS) if args.full else [DEFAULT_MODEL])
    fusion = args.fusion.split(",") if args.fusion else (list(FUSION_CANDIDATES) if args.full else ["default"])
    wanted = args.slices.split(",") if args.slices else list(SLICES)
    print_header("Retrieval quality of find_tool on every dev set and slice", args)
    sets = dev_sets()
    slices = {name: (sample(queries, 150) if args.quick else queries)
              for devset in sets for name, queries in devset.slices.items() if name in wanted}
    print("slices: " + ", ".join(f"{name} {len(q)} queries" for name, q in slices.items()), flush=True)
    results: Results = {}
    for model, configs in configs_for(models, fusion, args.degrade).items():
        await run_model(model, configs, sets, slices, results, args.cached_queries, args.db)
    if args.baseline:
        results.update(load(args.baseline, " (baseline)"))
    if args.save:
        save(results, args.save)
    print_tables(results, list(slices), args.reference)
    if args.speed or args.full:
        print("\n### Models alone: cold passages/s (527 LiveMCPBench tool texts) and one query (p50)\n")
        print("| model | dim | passages/s | query ms |\n|---|---|---|---|")
        for model in models:
            rate, query_ms = ingest_speed(model)
            print(f"| {model} | {BENCH_MODELS[model][0].dim} | {rate:.0f} | {query_ms:.1f} |", flush=True)


#: The model rows of a default run.
DEFAULT_MODEL = "minilm"

if __name__ == "__main__":
    asyncio.run(main())
