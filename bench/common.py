"""What every benchmark shares: the machine, percentiles, the model, the real data, scale data.

Scale data is generated from the real catalogs in ``../shared/data`` with a fixed seed, so two
runs (or two machines) index exactly the same servers, tools and texts:

* registry servers are variants of the 102 ToolHive registry entries (their names, descriptions,
  tags, tool names and identifier kinds), each with its own URL or image;
* workload tools are drawn from the 527 full LiveMCPBench tool definitions (name, description,
  input schema), the realistic mix of one-line and page-long descriptions the model has to embed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mcp_optimizer.catalog import CatalogEntry, ToolDefinition, load_catalog_file
from mcp_optimizer.config import Settings
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.embeddings import Embedder, FastEmbedder, ModelSpec
from mcp_optimizer.embeddings.model import E5_SMALL, MINILM, WORDLLAMA
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from tests.support import postgres

# Re-exported: the benchmarks take the real data from here.
from tests.support.devsets import data_dir as data_dir
from tests.support.devsets import livemcpbench_servers as livemcpbench_servers
from tests.support.devsets import livemcpbench_tasks as livemcpbench_tasks
from tests.support.shared import model_path as model_path
from tests.support.shared import shared_model_path

REPO = Path(__file__).resolve().parents[1]
SEED = 20251125


# ------------------------------------------------------------------------------ locations


def cache_dir() -> Path:
    """Where slow-to-build benchmark indexes are kept between runs (``--rebuild`` ignores them)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "mcp-optimizer" / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    """CPU, cores, load and the versions every figure depends on."""
    import fastembed
    import onnxruntime
    import sqlite_vec

    from mcp_optimizer.db.engine import connect_sync

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect_sync(Path(tmp) / "probe.db")
        try:
            sqlite_version, vec_version = conn.execute("SELECT sqlite_version(), vec_version()").fetchone()
        finally:
            conn.close()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": f"{usable} usable of {os.cpu_count()}",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite_version,
        "sqlite-vec": f"{vec_version} (python package {getattr(sqlite_vec, '__version__', '?')})",
        "onnxruntime": onnxruntime.__version__,
        "fastembed": getattr(fastembed, "__version__", "?"),
        "model": str(model_path()),
    }


def print_header(title: str, args: argparse.Namespace | None = None) -> None:
    """The benchmark's name, the command that ran it and the machine, before any figure."""
    print(f"# {title}")
    print(f"command: python -m {' '.join([_module_name(), *sys.argv[1:]])}")
    for key, value in machine_info().items():
        print(f"  {key:>13}: {value}")
    if args is not None:
        print(f"  {'options':>13}: {vars(args)}")
    print(flush=True)


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


# ---------------------------------------------------------------------------------- stats


def percentile(samples: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default); p in 0..100."""
    return float(np.percentile(np.asarray(samples, dtype=float), p))


def ms_summary(seconds: Sequence[float]) -> str:
    """``p50 / p99 / max`` in milliseconds with the sample count."""
    ms = [s * 1000 for s in seconds]
    return (f"p50 {percentile(ms, 50):7.2f} ms  p99 {percentile(ms, 99):7.2f} ms  "
            f"max {max(ms):7.2f} ms  mean {statistics.fmean(ms):7.2f} ms  (n={len(ms)})")


@dataclass
class Figure:
    """One result line: what, value, target, and whether the target was met."""

    name: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, name: str, value: str, target: str = "", met: bool | None = None) -> None:
        self.figures.append(Figure(name, value, target, met))
        mark = "" if met is None else ("  [met]" if met else "  [MISSED]")
        print(f"{name}: {value}" + (f"   target {target}" if target else "") + mark, flush=True)

    def print_table(self) -> None:
        print("\n| figure | value | target | |\n|---|---|---|---|")
        for f in self.figures:
            mark = "" if f.met is None else ("met" if f.met else "**missed**")
            print(f"| {f.name} | {f.value} | {f.target} | {mark} |")


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


# ---------------------------------------------------------------------------------- model


#: The models measured by the benchmarks, by short name: (spec, folder in ``../shared/models``).
BENCH_MODELS: dict[str, tuple[ModelSpec, str]] = {
    "minilm": (MINILM, "all-MiniLM-L6-v2"),
    "e5": (E5_SMALL, "multilingual-e5-small-q4"),
    "wordllama": (WORDLLAMA, "wordllama-l2-supercat-256"),
}


class RecordingEmbedder(FastEmbedder):
    """The real model, remembering every text it actually ran (cache misses), in order."""

    def __init__(self, path: Path | None = None, **kwargs: Any) -> None:
        super().__init__(path or model_path(), **kwargs)
        self.recorded: list[str] = []
        #: (start, end) perf_counter of every model run: concurrent runs overlap, so the model's
        #: share of a wall-clock period is the union of these, not the sum of their lengths.
        self.intervals: list[tuple[float, float]] = []

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.recorded.extend(texts)
        start = time.perf_counter()
        try:
            return super()._embed_batch(texts)
        finally:
            self.intervals.append((start, time.perf_counter()))

    def busy_seconds(self, since: float) -> float:
        """Wall-clock seconds since ``since`` (a perf_counter value) during which the model ran."""
        busy, reach = 0.0, since
        for start, end in sorted(self.intervals):
            start = max(start, reach)
            if end > start:
                busy += end - start
                reach = end
        return busy


class DiskCachedEmbedder(RecordingEmbedder):
    """The real model, with every vector it makes kept on disk (``cache_dir()/vectors.sqlite``,
    keyed by the model's fingerprint and the exact text), so that rebuilding a benchmark index
    embeds only texts no earlier run has seen. Used for the texts an index stores, never for
    queries whose latency is measured."""

    def __init__(self, path: Path | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        import sqlite3

        self._disk = sqlite3.connect(cache_dir() / "vectors.sqlite", check_same_thread=False)
        self._disk.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, text_sha TEXT, vector BLOB, "
                           "PRIMARY KEY (model, text_sha))")
        self.disk_hits = 0

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        import hashlib

        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        found: dict[str, bytes] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._disk.execute(
                f"SELECT text_sha, vector FROM vectors WHERE model = ? AND text_sha IN ({','.join('?' * len(chunk))})",
                [self.spec.fingerprint, *chunk])
            found.update(dict(rows))
        missing = [t for t, k in zip(texts, keys, strict=True) if k not in found]
        if missing:
            fresh = super()._embed_batch(missing)
            for text, vector in zip(missing, fresh, strict=True):
                found[hashlib.sha256(text.encode()).hexdigest()] = np.asarray(vector, "<f4").tobytes()
            self._disk.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", [
                (self.spec.fingerprint, hashlib.sha256(t.encode()).hexdigest(),
                 found[hashlib.sha256(t.encode()).hexdigest()]) for t in missing])
            self._disk.commit()
        self.disk_hits += len(texts) - len(missing)
        return np.stack([np.frombuffer(found[k], dtype="<f4") for k in keys]).astype(np.float32)


def bench_model(key: str) -> tuple[ModelSpec, Path]:
    """The spec and directory of a model of :data:`BENCH_MODELS`."""
    spec, folder = BENCH_MODELS[key]
    return spec, shared_model_path(folder)


def load_embedder(key: str | None = None, *, disk_cache: bool = False, **kwargs: Any) -> RecordingEmbedder:
    """The model ``key`` of :data:`BENCH_MODELS`, or the configured one (the environment's
    ``MCP_OPTIMIZER_EMBEDDING_MODEL_PATH``/``_NAME``) when ``key`` is None."""
    if key is None:
        settings = Settings.from_env()
        path, spec = model_path(), settings.embedding_model_spec()
    else:
        spec, path = bench_model(key)
    if not (path / "model.onnx").is_file():
        sys.exit(f"embedding model not found at {path}: set MCP_OPTIMIZER_EMBEDDING_MODEL_PATH")
    embedder = (DiskCachedEmbedder if disk_cache else RecordingEmbedder)(path, model=spec, **kwargs)
    embedder.load()
    return embedder


def uncached(embedder: Embedder) -> RecordingEmbedder:
    """An embedder with the same settings and loaded ONNX session but an empty text cache, so
    that a timing includes the model (queries repeat across benchmark passes; users' don't)."""
    assert isinstance(embedder, FastEmbedder)
    copy = RecordingEmbedder(embedder.model_path, model=embedder.spec, batch_size=embedder.batch_size)
    copy._model = embedder._model  # the same session: no second copy of the model in memory
    return copy


def model_alone_seconds(embedder: Embedder, texts: Sequence[str]) -> float:
    """Seconds the model needs for ``texts`` through the embedder's batching, with a cold cache."""
    floor = uncached(embedder)
    with stopwatch() as t:
        floor.embed(list(texts))
    return t[0]


# ----------------------------------------------------------------------------- real data


def real_tools() -> list[dict[str, Any]]:
    """The 527 real tool definitions (duplicates by name across servers kept)."""
    return [tool for server in livemcpbench_servers() for tool in server.tools]


@cache
def registry_bases() -> list[CatalogEntry]:
    """The 102 ToolHive registry entries."""
    return load_catalog_file(data_dir() / "toolhive-registry" / "registry.json").entries


# ---------------------------------------------------------------------------- scale data


def _variant_identifier(base: CatalogEntry, i: int) -> tuple[str | None, str | None]:
    """A URL or image unique to index ``i``, shaped like ``base``'s."""
    if base.remote:
        assert base.url is not None
        scheme, _, rest = base.url.partition("://")
        host, _, path = rest.partition("/")
        return f"{scheme}://s{i}.{host}/{path}", None
    assert base.package is not None
    repo, _, tag = base.package.rpartition(":")
    if "/" in tag or not repo:  # no tag
        repo, tag = base.package, "latest"
    return None, f"{repo}-{i}:{tag}"


def workload_identifier(entry: CatalogEntry, respell: int) -> tuple[str | None, str | None]:
    """The same identifier as ``entry`` spelled another way (another tag, URL case/port/slash),
    so that linking exercises normalisation; ``respell`` picks the spelling."""
    if entry.remote:
        assert entry.url is not None
        scheme, _, rest = entry.url.partition("://")
        host, _, path = rest.partition("/")
        url = f"{scheme}://{host.upper() if respell % 2 else host}/{path}"
        return (url.rstrip("/") + "/" if respell % 3 == 0 else url), None
    assert entry.package is not None
    repo = entry.package.rpartition(":")[0] or entry.package
    return None, f"{repo}:bench-{respell}"


def scale_catalog(count: int, *, seed: int = SEED, rich: int = 0, rich_tools: int = 20) -> list[CatalogEntry]:
    """``count`` registry servers modelled on the ToolHive registry (tool names only, as there).

    The first ``rich`` get exactly ``rich_tools`` tools with full LiveMCPBench definitions: the
    servers whose deletion and renaming the benchmarks time.
    """
    rng = random.Random(seed)
    bases = registry_bases()
    pool = real_tools()
    entries = []
    for i in range(count):
        base = bases[i % len(bases)]
        url, package = _variant_identifier(base, i)
        if i < rich:
            tools = [ToolDefinition.model_validate(t) for t in unique_by_name(rng.sample(pool, rich_tools * 2))]
            tools = tools[:rich_tools]
        else:
            tools = list(base.tools)
        entries.append(CatalogEntry(
            name=f"{base.name}-{i}", remote=base.remote, url=url, package=package, transport=base.transport,
            description=base.description, tags=list(base.tags), tools=tools,
        ))
    return entries


def unique_by_name(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for tool in tools:
        if tool["name"] not in seen:
            seen.add(tool["name"])
            out.append(tool)
    return out


def sample_tools(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """``count`` distinct-named real tool definitions."""
    pool = real_tools()
    tools = unique_by_name(rng.sample(pool, min(len(pool), count * 2)))[:count]
    return [json.loads(json.dumps(t)) for t in tools]  # private copies: specs get mutated by callers


def make_workload(
    i: int,
    tools: list[dict[str, Any]],
    *,
    link: CatalogEntry | None = None,
    respell: int = 0,
    status: WorkloadStatus = WorkloadStatus.RUNNING,
    namespaces: int = 20,
) -> WorkloadSpec:
    """Workload ``i``: linked to ``link`` (its identifier respelled) or running an unlisted image."""
    if link is not None:
        url, package = workload_identifier(link, respell)
        name = link.name
    else:
        url, package = None, f"ghcr.io/bench/unlisted-{i}:1.0.{i}"
        name = f"unlisted-{i}"
    namespace = f"ns{i % namespaces}"
    return WorkloadSpec(
        workload_name=f"{namespace}/w{i}", name=name, url=url, package=package, endpoint=url,
        status=status, namespace=namespace, group="default", tools=tools,
    )


# ---------------------------------------------------------------------------------- index


@asynccontextmanager
async def temp_index(
    embedder: FastEmbedder | None, path: Path | None = None, *, backend: str = "sqlite"
) -> AsyncIterator[Indexer]:
    """A fresh index file in a temporary directory (or at ``path``), or with ``backend``
    ``postgresql`` a fresh database on a local PostgreSQL (pgserver), closed afterwards;
    keyword-only (no model, nothing embedded) when ``embedder`` is None."""
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as tmp:
        url = postgres.fresh_database("bench") if backend == "postgresql" else None
        # From the environment so that settings such as MCP_OPTIMIZER_SQLITE_MMAP_SIZE can be compared.
        settings = Settings.from_env().with_overrides(
            db_path=path or Path(tmp) / "index.db",
            embedding_model_path=embedder.model_path if embedder is not None else None,
            embedding_model_name=embedder.spec.name if embedder is not None else None,
            search_mode="hybrid" if embedder is not None else "bm25").with_index(url)
        indexer = await Indexer.open(settings, embedder)
        try:
            yield indexer
        finally:
            await indexer.close()
            if url is not None:
                postgres.drop_database(url)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller scale and fewer samples (a smoke run)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the index's database: an SQLite file, or PostgreSQL + pgvector (a local pgserver)")
    return parser


# ------------------------------------------------------------------------ 20,000 tools


def replica_specs(tool_target: int = 20_000, *, status: WorkloadStatus = WorkloadStatus.RUNNING) -> list[WorkloadSpec]:
    """Every LiveMCPBench server deployed once per namespace until ``tool_target`` tools run.

    Teams running the same servers in their own namespaces is how large clusters look, and it
    keeps the build cheap: replicas share their tool texts (the context is the server name), so
    only the 527 distinct texts go through the model however many replicas there are. Search cost
    does not depend on that: the KNN scan and the BM25 posting lists grow with every replica.
    """
    servers = livemcpbench_servers()
    per_round = sum(len(s.tools) for s in servers)
    rounds = -(-tool_target // per_round)
    specs = []
    for r in range(rounds):
        namespace = f"team-{r:02d}"
        for server in servers:
            specs.append(WorkloadSpec(
                workload_name=f"{namespace}/{server.k8s_name}", name=server.k8s_name,
                package=f"ghcr.io/livemcpbench/{server.k8s_name}:latest", status=status,
                namespace=namespace, tools=json.loads(json.dumps(server.tools)),
            ))
    return specs


async def build_replica_index(indexer: Indexer, tool_target: int = 20_000) -> tuple[int, int, float]:
    """Index :func:`replica_specs`; returns (workloads, tools, seconds)."""
    specs = replica_specs(tool_target)
    tools = 0
    with stopwatch() as t:
        for spec in specs:
            tools += (await indexer.apply_workload(spec)).tool_count
    return len(specs), tools, t[0]
