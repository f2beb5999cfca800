"""Write fairness (issue 10, point 7): how fast a pod phase change reaches ``find_tool`` while a
5,000-entry catalog loads, and while it is deleted.

* Control plane: ``scripts/control-plane start`` (or ``--kubeconfig``); the benchmark plays the
  kubelet (it writes the pods' status), as :mod:`bench.operator` does (:mod:`bench.harness`).
* MCP servers: ``--servers`` MCPServers (default 20) served by one farm process
  (:class:`bench.harness.Farm`, real MCP over streamable HTTP), each with one Running pod.
* Operator: :func:`mcp_optimizer.operator.run_operator` in this process with the real model.
* Catalog: one ConfigMap of ``--entries`` registry entries (default 5,000; ``--quick`` 1,000),
  variants of the ToolHive registry entries kept small enough for a ConfigMap (1 MiB): each has
  its own image, the base entry's description (clipped to 40 characters) and its first 4 tool
  names. Every entry's texts are new, so the load embeds ~5 texts per entry.

Figures, for three phases (idle, during the catalog load, during its delete): ``--flippers``
(default 4) concurrent flippers each take a Running server, set its pod to CrashLoopBackOff or
back to Running, and time from the status write until ``find_tool`` (a :class:`ToolSearch` over the
operator's index file, sharing its model) agrees, polled every 5 ms; p50/p99/max over every flip
of the phase, and how many took over 1 s. The load phase runs from the ConfigMap's creation until
every entry is in the index; the delete phase from its deletion until none is. Where the code has
``mcp_optimizer_index_write_wait_seconds``, how long the status writes of each phase waited for the
index's write lock (the share of the flip latency the scheduling is responsible for; the rest is
the API server, kopf and CPU shared with the model).

``--index-only`` measures the same without Kubernetes, on the Indexer alone: the catalog's texts
are embedded once first (a load and a delete, untimed), then a second load and delete are timed
while a writer sets a workload's status every 20 ms, timing each ``set_workload_status`` (p50/p99/
max), and where the code has a write scheduler, how much of that was waiting for the write
lock: the cost of the write scheduling alone, without the API server, kopf or the model.

Run with the code under test on ``PYTHONPATH`` to compare versions (``bench/RESULTS.md`` says how).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from sqlalchemy import text

from bench.common import Report, base_parser, load_embedder, ms_summary, percentile, print_header, registry_bases
from bench.harness import (
    MERGE_PATCH,
    Farm,
    OperatorThread,
    cluster,
    create_farm_server,
    farm_query,
    operator_settings,
    pod_status,
    server_name,
    until_search_agrees,
    visible,
)
from mcp_optimizer.config import Settings
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator.mapping import workload_name

CATALOG_LABEL = "mcp-optimizer.dev/registry-catalog"
#: The ConfigMap limit is 1 MiB for all of its data.
CONFIGMAP_LIMIT = 1024 * 1024


def catalog_document(count: int) -> str:
    """A legacy-format catalog of ``count`` container entries, small enough for one ConfigMap."""
    bases = registry_bases()
    servers: dict[str, Any] = {}
    for i in range(count):
        base = bases[i % len(bases)]
        servers[f"{base.name[:24]}-{i:04d}"] = {
            "image": f"ghcr.io/bench/{base.name[:24]}-{i:04d}:1",
            "description": base.description[:40],
            "tools": [t.name for t in base.tools[:4]],
        }
    document = json.dumps({"servers": servers}, separators=(",", ":"))
    if len(document) > CONFIGMAP_LIMIT:
        raise SystemExit(f"a {count}-entry catalog is {len(document)} bytes, over the ConfigMap limit")
    return document


async def registry_rows(engine: Any, catalog: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(
            text("SELECT count(*) FROM mcpservers_registry WHERE catalog = :c"), {"c": catalog})).scalar_one())


class Flipper:
    """Flips one server's pod and times until search agrees, until told to stop."""

    def __init__(self, core: client.CoreV1Api, ns: str, search: ToolSearch, index: int) -> None:
        self.core = core
        self.ns = ns
        self.search = search
        self.name = server_name(index)
        self.workload = workload_name(ns, self.name)
        self.query = farm_query(index)
        self.running = True  # the pod's state as last written

    async def visible(self) -> bool:
        return await visible(self.search, self.workload, self.query)

    async def flip(self) -> float:
        want = not self.running
        body = pod_status("Running") if want else pod_status("Running", ready=False, waiting="CrashLoopBackOff")
        started = time.perf_counter()
        await asyncio.to_thread(self.core.patch_namespaced_pod_status, f"{self.name}-0", self.ns, body,
                                _content_type=MERGE_PATCH)
        took = await until_search_agrees(self.search, self.workload, self.query, want, since=started, timeout=900,
                                         what="the pod")
        self.running = want
        return took

    async def run(self, until: Callable[[], Awaitable[bool]], samples: list[float], *, pause: float) -> None:
        while True:  # at least one flip, so that a phase shorter than one flip is still measured
            samples.append(await self.flip())
            if await until():
                return
            await asyncio.sleep(pause)


def write_waits() -> dict[str, dict[float, float]]:
    """priority -> {bucket upper bound: cumulative count} of the operator's waits for the write lock
    (``mcp_optimizer_index_write_wait_seconds``; empty with code that has no such metric)."""
    histogram = getattr(METRICS, "index_write_wait", None)
    waits: dict[str, dict[float, float]] = {}
    if histogram is None:
        return waits
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                waits.setdefault(sample.labels["priority"], {})[float(sample.labels["le"])] = sample.value
    return waits


def wait_summary(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> str:
    """How long status writes waited for the write lock during a phase, from the histogram's buckets."""
    buckets = {le: after.get("status", {}).get(le, 0.0) - before.get("status", {}).get(le, 0.0)
               for le in after.get("status", {})}
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return "n/a"
    shown = [f"<= {le * 1000:g} ms: {buckets[le] / total:.1%}" for le in (0.01, 0.05, 0.1, 0.25, 1.0) if le in buckets]
    return f"{int(total)} status writes waited " + ", ".join(shown)


async def phase(flippers: list[Flipper], until: Callable[[], Awaitable[bool]], *, pause: float) -> list[float]:
    samples: list[float] = []
    await asyncio.gather(*(f.run(until, samples, pause=pause) for f in flippers))
    return samples


async def measure(
    *, entries: int, servers: int = 20, flippers: int = 4, idle_flips: int = 40, pause: float = 0.05,
    kubeconfig: str | None = None, report: Report | None = None,
) -> Report:
    """Run the three phases and add their figures to ``report`` (a new one when None); starts and
    stops its own control plane unless ``kubeconfig`` names a cluster. For :mod:`bench.hostile`."""
    report = report if report is not None else Report()
    document = catalog_document(entries)
    print(f"catalog: {entries} entries, {len(document)} bytes", flush=True)
    with (
        cluster(kubeconfig) as kube,
        Farm(servers) as farm,
        tempfile.TemporaryDirectory(prefix="mcp-bench-fair-") as tmp,
    ):
        ns = kube.create_namespace("mcp-bench")
        embedder = load_embedder()
        # The catalog is in the servers' namespace (a trusted catalog namespace here).
        settings = operator_settings(Path(tmp) / "index.db", ns, embedder, catalog_namespaces=(ns,))
        operator = OperatorThread(settings, kube.kubeconfig, embedder)
        try:
            for i in range(servers):
                create_farm_server(kube, ns, farm, i)
            engine = create_engine(settings.db_path)
            search = ToolSearch(engine, embedder)
            flipping = [Flipper(kube.core, ns, search, i) for i in range(min(flippers, servers))]
            await _indexed(flipping)
            print(f"{servers} MCPServers indexed", flush=True)
            await _phases(kube.core, ns, engine, flipping, document, entries, idle_flips, pause, report)
            await engine.dispose()
            kube.core.delete_namespace(ns)
        finally:
            operator.stop()
    return report


async def _indexed(flipping: list[Flipper]) -> None:
    deadline = time.monotonic() + 600
    for flipper in flipping:
        while not await flipper.visible():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{flipper.workload} was not indexed within 600 s")
            await asyncio.sleep(0.1)


async def _phases(
    core: client.CoreV1Api, ns: str, engine: Any, flipping: list[Flipper], document: str, entries: int,
    idle_flips: int, pause: float, report: Report,
) -> None:
    """The flips' figures: idle, during the catalog load, during its delete."""
    # Idle: no catalog write.
    idle: list[float] = []
    for n in range(idle_flips):
        idle.append(await flipping[n % len(flipping)].flip())
        await asyncio.sleep(pause)
    report.add("pod flip -> find_tool, idle", ms_summary(idle))

    catalog = f"{ns}/big"

    # During the load.
    async def loaded() -> bool:
        return await registry_rows(engine, catalog) >= entries

    def create() -> None:
        core.create_namespaced_config_map(ns, {  # type: ignore[arg-type]
            "metadata": {"name": "big", "labels": {CATALOG_LABEL: "true"}}, "data": {"registry.json": document}})

    await _write_phase(flipping, create, loaded, pause, report, f"the {entries}-entry catalog load", "the load", ".0f")

    # During the delete.
    async def deleted() -> bool:
        return await registry_rows(engine, catalog) == 0

    await _write_phase(flipping, lambda: core.delete_namespaced_config_map("big", ns), deleted, pause, report,
                       "its delete", "the delete", ".1f")


async def _write_phase(
    flipping: list[Flipper], write: Callable[[], object], until: Callable[[], Awaitable[bool]], pause: float,
    report: Report, during: str, lock_during: str, seconds_format: str,
) -> None:
    """Flips from ``write()`` until ``until()``: their figure, and the write lock's waits."""
    started, waits = time.perf_counter(), write_waits()
    write()
    samples = await phase(flipping, until, pause=pause)
    took = time.perf_counter() - started
    slow = sum(1 for s in samples if s > 1.0)
    report.add(f"pod flip -> find_tool during {during} ({took:{seconds_format}} s)",
               f"{ms_summary(samples)}; {slow} over 1 s", "p99 < 1 s", percentile(samples, 99) < 1.0)
    report.add(f"  write lock waits during {lock_during}", wait_summary(waits, write_waits()))


async def index_only(entries: int, report: Report | None = None) -> Report:
    """The ``--index-only`` figures (see the module docstring)."""
    from mcp_optimizer.catalog import parse_catalog
    from mcp_optimizer.db.models import WorkloadStatus
    from mcp_optimizer.ingest import Indexer, WorkloadSpec

    report = report if report is not None else Report()
    parsed = parse_catalog(catalog_document(entries))
    embedder = load_embedder()
    with tempfile.TemporaryDirectory(prefix="mcp-bench-fair-") as tmp:
        indexer = await Indexer.open(Settings(db_path=Path(tmp) / "index.db"), embedder)
        try:
            await indexer.apply_workload(WorkloadSpec(
                workload_name="ns/flipper", name="flipper", package="ghcr.io/acme/flipper:1",
                status=WorkloadStatus.RUNNING, tools=[{"name": "flip", "description": "Flip a coin"}]))
            await indexer.load_catalog("big", parsed.entries)  # embeds every text once (untimed)
            await indexer.delete_catalog("big")

            waits: list[float] = []  # the status writes' waits for the write lock (where the code has them)
            scheduler = getattr(indexer, "scheduler", None)
            if scheduler is not None:
                scheduler.observer = lambda priority, seconds: waits.append(seconds) if priority == "status" else None

            async def timed(work: Awaitable[Any]) -> tuple[float, list[float]]:
                task = asyncio.ensure_future(work)
                waits.clear()
                samples: list[float] = []
                flip = 0
                started = time.perf_counter()
                while not task.done():
                    flip += 1
                    status = WorkloadStatus.RUNNING if flip % 2 else WorkloadStatus.STOPPED
                    t0 = time.perf_counter()
                    await indexer.set_workload_status("ns/flipper", status)
                    samples.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.02)
                await task
                return time.perf_counter() - started, samples

            took, samples = await timed(indexer.load_catalog("big", parsed.entries))
            report.add(f"set_workload_status during a {entries}-entry catalog load, texts cached ({took:.1f} s)",
                       ms_summary(samples), "p99 < 1 s", percentile(samples, 99) < 1.0)
            if waits:
                report.add("  of which waiting for the write lock", ms_summary(waits))
            took, samples = await timed(indexer.delete_catalog("big"))
            report.add(f"set_workload_status during its delete ({took:.1f} s)", ms_summary(samples),
                       "p99 < 1 s", percentile(samples, 99) < 1.0)
            if waits:
                report.add("  of which waiting for the write lock", ms_summary(waits))
        finally:
            await indexer.close()
    return report


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--entries", type=int, help="catalog entries (default 5000; --quick 1000)")
    parser.add_argument("--servers", type=int, default=20, help="MCPServers (default 20)")
    parser.add_argument("--flippers", type=int, default=4, help="servers flipped concurrently (default 4)")
    parser.add_argument("--idle-flips", type=int, default=40, help="flips timed with no catalog write (40)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between one flipper's flips (0.05)")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    parser.add_argument("--index-only", action="store_true", help="the Indexer alone, no Kubernetes")
    args = parser.parse_args()
    entries = args.entries or (1000 if args.quick else 5000)
    if args.index_only:
        print_header(f"Write fairness, index only: status writes during a {entries}-entry catalog load", args)
        (await index_only(entries)).print_table()
        return
    print_header(f"Write fairness: pod flips during a {entries}-entry catalog load and delete", args)
    report = await measure(entries=entries, servers=args.servers, flippers=args.flippers,
                           idle_flips=args.idle_flips, pause=args.pause, kubeconfig=args.kubeconfig)
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
