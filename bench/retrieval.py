"""Retrieval quality on LiveMCPBench: does ``find_tool`` put the tools a human used near the top?

Loads every server and tool of ``../shared/data/livemcpbench/tools.json`` (70 servers, 527 tools)
as RUNNING workloads, asks ``find_tool`` each of the 95 task questions of ``annotations.json``
and scores the ranking against the tools the annotator used, for the hybrid, vector-only and
BM25-only modes. Also reports query latency (query embedding included).

Metrics, averaged over tasks (a task needs several tools; one query should surface all):

* Recall@k: share of the task's annotated tools among the first k hits;
* MRR@10: 1 / rank of the first annotated tool in the first 10 hits (0 when none);
* Hit@1: how often the first hit is one of the annotated tools.

How annotated tool names are matched to indexed tools (``Annotator Metadata.Tools`` is a
numbered list of bare tool names, no server):

1. the line's text after the ``N.`` number is the annotated name;
2. an indexed tool *with that exact name* on any server is a match: annotators name tools, not
   servers, and several servers expose identical tools (``read_file`` of Filesystem and Desktop
   Commander), so any of them answers the task;
3. otherwise the name compared case-insensitively with ``-`` and ``_`` treated alike;
4. otherwise the one indexed tool whose name extends it by a ``_suffix`` (``trial_references`` →
   ``trial_references_getter``), if exactly one does;
5. otherwise :data:`ALIASES`, written by hand for names no rule can reach (listed with the reason);
6. otherwise the name is *unmapped*: the tool is not in ``tools.json`` (the annotator's server
   version had it). Unmapped names are left out of the task's relevant set and listed in the
   output; a task whose names are all unmapped is left out (none is, on this data).

Run ``python -m bench.retrieval`` (about a minute: it embeds the 527 tools), ``--tune`` adds the
grid over fusion settings that chose :class:`ToolSearch`'s defaults.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BenchServer,
    Report,
    base_parser,
    livemcpbench_servers,
    livemcpbench_tasks,
    load_embedder,
    ms_summary,
    print_header,
    stopwatch,
    temp_index,
    uncached,
)
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import SearchMode, ToolSearch
from mcp_optimizer.ingest import Indexer, WorkloadSpec

#: Annotated names no rule maps, to the indexed tool they mean. Kept to names whose meaning is
#: unambiguous: "ddg" is DuckDuckGo's usual abbreviation and the DuckDuckGo server's only tool.
ALIASES = {"ddg-search": "duckduckgo_web_search"}

MODES: tuple[SearchMode, ...] = ("hybrid", "vector", "bm25")
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*")


@dataclass
class Task:
    task_id: str
    question: str
    #: Annotated names that map to indexed tools, mapped (deduplicated, in annotation order).
    relevant: list[str]
    unmapped: list[str]


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").strip()


def map_annotation(name: str, indexed: set[str]) -> str | None:
    """The indexed tool name an annotated tool name means, or None (rules in the module doc)."""
    if name in indexed:
        return name
    by_norm = {_norm(n): n for n in indexed}
    if _norm(name) in by_norm:
        return by_norm[_norm(name)]
    extended = [n for n in indexed if _norm(n).startswith(_norm(name) + "_")]
    if len(extended) == 1:
        return extended[0]
    alias = ALIASES.get(name)
    return alias if alias in indexed else None


def load_tasks(indexed: set[str]) -> list[Task]:
    tasks = []
    for raw in livemcpbench_tasks():
        lines = str(raw["Annotator Metadata"]["Tools"]).splitlines()
        names = [_NUMBERED.sub("", line).strip() for line in lines if line.strip()]
        relevant: list[str] = []
        unmapped: list[str] = []
        for name in names:
            mapped = map_annotation(name, indexed)
            if mapped is None:
                unmapped.append(name)
            elif mapped not in relevant:
                relevant.append(mapped)
        tasks.append(Task(raw["task_id"], raw["Question"], relevant, unmapped))
    return tasks


def workload_spec(server: BenchServer) -> WorkloadSpec:
    """A RUNNING container workload per LiveMCPBench server, named like its MCPServer would be."""
    return WorkloadSpec(
        workload_name=f"livemcpbench/{server.k8s_name}", name=server.k8s_name,
        package=f"ghcr.io/livemcpbench/{server.k8s_name}:latest", status=WorkloadStatus.RUNNING,
        namespace="livemcpbench", tools=server.tools,
    )


async def load_livemcpbench(indexer: Indexer) -> int:
    """Index every LiveMCPBench server; returns the number of tools."""
    count = 0
    for server in livemcpbench_servers():
        result = await indexer.apply_workload(workload_spec(server))
        count += result.tool_count
    return count


@dataclass
class Scores:
    recall5: float
    recall10: float
    mrr: float
    hit1: float
    latencies: list[float]

    def row(self) -> str:
        return f"{self.recall5:.3f} | {self.recall10:.3f} | {self.mrr:.3f} | {self.hit1:.3f}"


async def evaluate(search: ToolSearch, tasks: Sequence[Task], mode: SearchMode = "hybrid") -> Scores:
    recall5, recall10, rr, hit1, latencies = [], [], [], [], []
    for task in tasks:
        start = time.perf_counter()
        hits = await search.find_tools(task.question, limit=10, mode=mode)
        latencies.append(time.perf_counter() - start)
        names = [h.tool for h in hits]
        relevant = set(task.relevant)
        recall5.append(len(relevant & set(names[:5])) / len(relevant))
        recall10.append(len(relevant & set(names[:10])) / len(relevant))
        first = next((rank for rank, name in enumerate(names, start=1) if name in relevant), None)
        rr.append(1.0 / first if first else 0.0)
        hit1.append(1.0 if first == 1 else 0.0)
    mean = statistics.fmean
    return Scores(mean(recall5), mean(recall10), mean(rr), mean(hit1), latencies)


#: The grid ``--tune`` walks; each dimension is varied alone around the defaults, then the best
#: values of each together.
GRID: dict[str, list[Any]] = {
    "rrf_k": [5, 10, 20, 30, 60, 100],
    "vector_weight": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
    "candidates": [20, 50, 100, 200],
    "min_similarity": [0.0, 0.2, 0.3, 0.4],
    "max_query_parts": [0, 1, 2, 3, 5, 8],
}


async def tune(indexer: Indexer, tasks: Sequence[Task], defaults: dict[str, Any]) -> None:
    """Vary one ToolSearch setting at a time around ``defaults`` and print hybrid scores."""
    print("\n## Fusion settings (hybrid mode), one varied at a time around the defaults\n")
    print("| setting | value | R@5 | R@10 | MRR@10 | Hit@1 |\n|---|---|---|---|---|---|")
    for setting, values in GRID.items():
        for value in values:
            params = {**defaults, setting: value}
            scores = await evaluate(ToolSearch(indexer.engine, indexer.embedder, **params), tasks)
            mark = " (default)" if value == defaults.get(setting) else ""
            print(f"| {setting} | {value}{mark} | {scores.row()} |", flush=True)
    print("\n## BM25 column weights (name, description, arguments)\n")
    print("| weights | R@5 / R@10 / MRR@10 / Hit@1 (hybrid) | BM25 alone |\n|---|---|---|")
    for weights in itertools.product((1.0, 2.0, 4.0), (1.0,), (0.0, 0.5, 1.0)):
        params = {**defaults, "bm25_columns": weights}
        scores = await evaluate(ToolSearch(indexer.engine, indexer.embedder, **params), tasks, "hybrid")
        bm25 = await evaluate(ToolSearch(indexer.engine, indexer.embedder, **params), tasks, "bm25")
        mark = " (default)" if weights == (2.0, 1.0, 0.5) else ""
        print(f"| {weights}{mark} | {scores.row().replace(' | ', ' / ')} | {bm25.row().replace(' | ', ' / ')} |",
              flush=True)


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tune", action="store_true", help="also print the grid over fusion settings")
    parser.add_argument("--show", type=int, default=0, help="print the first N tasks' top hits (diagnostics)")
    args = parser.parse_args()
    print_header("Retrieval quality on LiveMCPBench (95 tasks, 70 servers, 527 tools)", args)
    embedder = load_embedder()
    report = Report()
    async with temp_index(embedder) as indexer:
        with stopwatch() as t:
            tools = await load_livemcpbench(indexer)
        print(f"indexed {tools} tools of {len(livemcpbench_servers())} servers in {t[0]:.1f} s "
              f"({embedder.texts_embedded} texts embedded, {embedder.seconds_embedding:.1f} s in the model)")
        indexed = {tool["name"] for server in livemcpbench_servers() for tool in server.tools}
        tasks = load_tasks(indexed)
        unmapped = sorted({name for task in tasks for name in task.unmapped})
        skipped = [task for task in tasks if not task.relevant]
        tasks = [task for task in tasks if task.relevant]
        annotated = sum(len(task.relevant) for task in tasks)
        print(f"{len(tasks)} tasks scored ({len(skipped)} without a mappable tool), {annotated} annotated tools; "
              f"unmapped names: {', '.join(unmapped) or 'none'}\n")
        search = ToolSearch(indexer.engine, embedder)
        # Warm up: the first ONNX runs and SQLite page reads are not what a running server sees.
        for task in tasks[:5]:
            await search.find_tools(task.question)
        print("| mode | R@5 | R@10 | MRR@10 | Hit@1 | query latency |\n|---|---|---|---|---|---|")
        results = {}
        for mode in MODES:
            # A fresh cache per mode: every pass asks the same questions, and a cached query
            # embedding would hide the model's share of the latency.
            scores = await evaluate(ToolSearch(indexer.engine, uncached(embedder)), tasks, mode)
            results[mode] = scores
            print(f"| {mode} | {scores.row()} | {ms_summary(scores.latencies)} |", flush=True)
        print()
        for mode, scores in results.items():
            report.add(f"{mode} Recall@5 / @10 / MRR@10 / Hit@1", scores.row().replace(" | ", " / "))
        if args.show:
            for task in tasks[: args.show]:
                hits = await search.find_tools(task.question, limit=10)
                marks = [f"{'*' if h.tool in task.relevant else ''}{h.tool}" for h in hits]
                print(f"- {task.question[:100]!r}\n  want {task.relevant}\n  got  {marks}")
        if args.tune:
            defaults = {"min_similarity": search.min_similarity, "rrf_k": search.rrf_k,
                        "vector_weight": search.vector_weight, "bm25_weight": search.bm25_weight,
                        "candidates": search.candidates, "max_query_parts": search.max_query_parts}
            await tune(indexer, tasks, defaults)


if __name__ == "__main__":
    asyncio.run(main())
