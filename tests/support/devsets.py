"""The retrieval dev sets in ``../shared/data``, as real MCP workloads and scored queries.

Shared by ``bench/retrieval.py`` (every slice, every configuration) and the retrieval floor test
(``tests/index/test_retrieval_floor.py``, a fixed sample of each slice), so that both index and
score the sets the same way. Slices:

* ``livemcpbench``: 94 long, multi-step task questions over 527 real MCP tools (70 servers);
* ``bfcl-live``: 774 short real user requests (BFCL live_simple + live_multiple) and
  ``bfcl-curated``: 499 curated ones (simple_python + multiple), over 1,702 function definitions;
* ``metatool-single``: 1,393 short requests needing one of 199 plugin tools, and
  ``metatool-multi``: 497 needing two or more of them.

A query's *needs* are one or more groups of tools: any tool of a group answers it (aliases,
equivalent tools on several servers) and every group is needed (multi-tool tasks). R@k is the
share of a query's groups with a tool among the first k hits (R@1 of a two-tool query is at most
0.5); MRR@10 is 1 / rank of the first hit that answers any group (0 when none in the first 10).

How LiveMCPBench's annotated tool names are matched to indexed tools (``Annotator Metadata.Tools``
is a numbered list of bare tool names, no server):

1. the line's text after the ``N.`` number is the annotated name;
2. an indexed tool *with that exact name* on any server is a match: annotators name tools, not
   servers, and several servers expose identical tools (``read_file`` of Filesystem and Desktop
   Commander), so any of them answers the task;
3. otherwise the name compared case-insensitively with ``-`` and ``_`` treated alike;
4. otherwise the one indexed tool whose name extends it by a ``_suffix`` (``trial_references`` ->
   ``trial_references_getter``), if exactly one does;
5. otherwise :data:`ALIASES`, written by hand for names no rule can reach (listed with the reason);
6. otherwise the name is *unmapped*: the tool is not in ``tools.json``. Unmapped names are left
   out of the task's needs; a task whose names are all unmapped is left out (one is).

BFCL's pseudo-servers named after the BFCL category a function came from
(``bfcl-live_simple-0``) are renamed ``functions-<n>``: the category is the slice label, and
words such as "simple", "multiple" or "irrelevance" in a server name would leak it into BM25.
No set's tools or wording is special-cased anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import SearchMode, ToolSearch
from mcp_optimizer.embeddings import FastEmbedder
from mcp_optimizer.ingest import WorkloadSpec
from tests.support.shared import shared_dir

SLICES = ("livemcpbench", "bfcl-live", "bfcl-curated", "metatool-single", "metatool-multi")
METRICS = ("R@1", "R@5", "R@10", "MRR@10")
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*")
_BFCL_CATEGORY_SERVER = re.compile(r"bfcl-[a-z_]+-\d+")


def data_dir() -> Path:
    return shared_dir() / "data"


@dataclass(frozen=True)
class BenchServer:
    """One LiveMCPBench server: its display name, its config key and its MCP tools."""

    title: str
    key: str
    description: str
    tools: list[dict[str, Any]]

    @property
    def k8s_name(self) -> str:
        """The name an MCPServer for it would have (DNS label)."""
        name = "".join(c if c.isalnum() else "-" for c in self.key.lower())
        return "-".join(part for part in name.split("-") if part)[:63]


@cache
def livemcpbench_servers() -> list[BenchServer]:
    """The 70 LiveMCPBench servers with their full MCP tool definitions."""
    raw = json.loads((data_dir() / "livemcpbench" / "tools.json").read_text())
    servers = []
    for item in raw:
        for key, block in item["tools"].items():
            tools = [{"name": t["name"], "description": t.get("description") or "",
                      "inputSchema": t.get("inputSchema") or {"type": "object", "properties": {}}}
                     for t in block["tools"]]
            servers.append(BenchServer(item["name"], key, item.get("description") or "", tools))
    return servers


@cache
def livemcpbench_tasks() -> list[dict[str, Any]]:
    """The 95 annotated LiveMCPBench tasks, as in ``annotations.json``."""
    tasks: list[dict[str, Any]] = json.loads((data_dir() / "livemcpbench" / "annotations.json").read_text())
    return tasks


#: Annotated names no rule maps, to the indexed tool they mean. Kept to names whose meaning is
#: unambiguous: "ddg" is DuckDuckGo's usual abbreviation and the DuckDuckGo server's only tool.
ALIASES = {"ddg-search": "duckduckgo_web_search"}


Pair = tuple[str, str]


@dataclass(frozen=True)
class Query:
    qid: str
    text: str
    #: What answers it: every group is needed, any (server, tool) of a group will do.
    groups: tuple[frozenset[Pair], ...]


@dataclass
class DevSet:
    name: str
    #: (server name, its MCP tools)
    servers: list[tuple[str, list[dict[str, Any]]]]
    slices: dict[str, list[Query]] = field(default_factory=dict)


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


def _mcp_tool(raw: dict[str, Any]) -> dict[str, Any]:
    """Only what an MCP server's tools/list says: name, description, inputSchema."""
    return {"name": raw["name"], "description": raw.get("description") or "",
            "inputSchema": raw.get("inputSchema") or {"type": "object", "properties": {}}}


@cache
def livemcpbench() -> DevSet:
    servers = [(s.k8s_name, s.tools) for s in livemcpbench_servers()]
    by_tool: dict[str, set[Pair]] = {}
    for server, tools in servers:
        for tool in tools:
            by_tool.setdefault(tool["name"], set()).add((server, tool["name"]))
    queries = []
    for raw in livemcpbench_tasks():
        lines = str(raw["Annotator Metadata"]["Tools"]).splitlines()
        groups: list[frozenset[Pair]] = []
        for line in lines:
            mapped = map_annotation(_NUMBERED.sub("", line).strip(), set(by_tool)) if line.strip() else None
            if mapped is not None and frozenset(by_tool[mapped]) not in groups:
                groups.append(frozenset(by_tool[mapped]))
        if groups:
            queries.append(Query(str(raw["task_id"]), str(raw["Question"]), tuple(groups)))
    return DevSet("livemcpbench", servers, {"livemcpbench": queries})


@cache
def bfcl() -> DevSet:
    folder = data_dir() / "bfcl-single"
    raw_servers = json.loads((folder / "tools.json").read_text())
    rename: dict[str, str] = {}
    for item in raw_servers:
        if _BFCL_CATEGORY_SERVER.fullmatch(item["name"]):
            rename[item["name"]] = f"functions-{len(rename)}"
    servers = [(rename.get(item["name"], item["name"]), [_mcp_tool(t) for t in item["tools"]]) for item in raw_servers]
    slices: dict[str, list[Query]] = {"bfcl-live": [], "bfcl-curated": []}
    for raw in json.loads((folder / "queries.json").read_text()):
        group = frozenset((rename.get(server, server), tool) for server, tool in raw["relevant"])
        slice_name = "bfcl-live" if raw["category"].startswith("live") else "bfcl-curated"
        slices[slice_name].append(Query(raw["id"], raw["query"], (group,)))
    return DevSet("bfcl", servers, slices)


@cache
def metatool() -> DevSet:
    folder = data_dir() / "metatool-toole"
    servers = [(item["name"], [_mcp_tool(t) for t in item["tools"]])
               for item in json.loads((folder / "tools.json").read_text())]
    single = [Query(raw["id"], raw["query"], (frozenset(tuple(p) for p in raw["relevant"]),))
              for raw in json.loads((folder / "queries.json").read_text())]
    multi = [Query(raw["id"], raw["query"], tuple(frozenset([(p[0], p[1])]) for p in raw["relevant"]))
             for raw in json.loads((folder / "queries_multi.json").read_text())]
    return DevSet("metatool", servers, {"metatool-single": single, "metatool-multi": multi})


def dev_sets() -> list[DevSet]:
    return [livemcpbench(), bfcl(), metatool()]


def sample(queries: list[Query], size: int) -> list[Query]:
    """A fixed sample (seed 0) for ``--quick``, in the original order."""
    if len(queries) <= size:
        return queries
    keep = set(random.Random(0).sample(range(len(queries)), size))
    return [q for i, q in enumerate(queries) if i in keep]


def _slug(name: str) -> str:
    return "-".join(part for part in re.split(r"[^a-z0-9]+", name.lower()) if part)[:60] or "x"


def workload_specs(devset: DevSet) -> list[WorkloadSpec]:
    """Every server of the set as a RUNNING container workload in the set's own namespace."""
    return [
        WorkloadSpec(workload_name=f"{devset.name}/{i:04d}-{_slug(server)}", name=server,
                     package=f"ghcr.io/{devset.name}/{_slug(server)}:latest", status=WorkloadStatus.RUNNING,
                     namespace=devset.name, tools=json.loads(json.dumps(tools)))
        for i, (server, tools) in enumerate(devset.servers)
    ]


def subset(devset: DevSet, sizes: dict[str, int], distractors: int) -> DevSet:
    """A fixed smaller copy of ``devset`` (seed 0): ``sizes[slice]`` queries of each slice and a
    pool of the tools they need plus ``distractors`` other tools, on their own servers."""
    slices = {name: sample(queries, sizes[name]) for name, queries in devset.slices.items() if name in sizes}
    needed = {pair for queries in slices.values() for query in queries for group in query.groups for pair in group}
    others = sorted({(server, str(t["name"])) for server, tools in devset.servers for t in tools} - needed)
    keep = needed | set(random.Random(0).sample(others, min(distractors, len(others))))
    servers = [(server, [t for t in tools if (server, t["name"]) in keep]) for server, tools in devset.servers]
    return DevSet(devset.name, [(server, tools) for server, tools in servers if tools], slices)


class DegradedEmbedder(FastEmbedder):
    """The same model made weak on purpose: for a fixed share of the queries it embeds another
    query of the slice instead (chosen by hash, so every configuration gets the same wrong
    answers). The vector list then has a real query's profile of scores but is about something
    else, which is how an embedder that does not understand a set's requests looks to fusion;
    ``--degrade 0.3`` costs the previous RRF default about what the private set showed (-0.07
    R@5 against BM25)."""

    def __init__(self, base: FastEmbedder, share: float) -> None:
        super().__init__(base.model_path, base.spec, batch_size=base.batch_size)
        base.load()
        self._model = base._model  # the same ONNX session, a cache of its own
        self.share = share
        #: The queries a swapped query is drawn from (the slice being scored).
        self.pool: list[str] = []

    @staticmethod
    def _hash(text: str, salt: str = "") -> int:
        return int(hashlib.sha256((salt + text).encode()).hexdigest()[:12], 16)

    def embed(self, texts: Sequence[str], *, query: bool = False) -> npt.NDArray[np.float32]:
        """Passages as the model makes them; a query of the pool may be swapped for another."""
        if query and self.pool:
            texts = [self._swap(t) for t in texts]
        return super().embed(texts, query=query)

    def _swap(self, text: str) -> str:
        if self._hash(text) % 1000 >= self.share * 1000:
            return text
        other = self.pool[self._hash(text, "other") % len(self.pool)]
        return other if other != text else self.pool[(self.pool.index(other) + 1) % len(self.pool)]



# ---------------------------------------------------------------------------------- scoring


@dataclass
class QueryResult:
    #: 1-based rank of the first hit answering each group (None: not in the first 10).
    ranks: list[int | None]
    seconds: float

    def recall(self, k: int) -> float:
        return sum(1 for r in self.ranks if r is not None and r <= k) / len(self.ranks)

    def rr(self) -> float:
        found = [r for r in self.ranks if r is not None]
        return 1.0 / min(found) if found else 0.0

    def metric(self, name: str) -> float:
        return self.rr() if name == "MRR@10" else self.recall(int(name.split("@")[1]))


async def score(search: ToolSearch, queries: Sequence[Query], mode: SearchMode) -> dict[str, QueryResult]:
    """Ask ``search`` every query (limit 10) and record where its needs were found, and how long
    ``find_tools`` took (query embedding included unless the embedder has it cached)."""
    out = {}
    for query in queries:
        start = time.perf_counter()
        hits = await search.find_tools(query.text, limit=10, mode=mode)
        seconds = time.perf_counter() - start
        found = [(h.server_name, h.tool) for h in hits]
        ranks = [next((rank for rank, pair in enumerate(found, start=1) if pair in group), None)
                 for group in query.groups]
        out[query.qid] = QueryResult(ranks, seconds)
    return out


def mean_metric(results: dict[str, QueryResult], metric: str) -> float:
    return statistics.fmean(r.metric(metric) for r in results.values())
