"""The operator against a real control plane: 500 MCPServers from creation to indexed, and how
fast a pod phase change reaches search (SC-13).

* Control plane: ``scripts/control-plane start`` (etcd + kube-apiserver, see
  docs/control-plane.md), or an existing cluster with ``--kubeconfig``. There is no kubelet, so
  the benchmark plays it: it creates each MCPServer's pod and writes the pod's status.
* MCP servers: ONE child process (:class:`bench.harness.Farm`) serves all 500 as real MCP
  servers over streamable HTTP on 127.0.0.1 (:class:`McpTestServerFarm`); server ``i`` serves
  the tools of LiveMCPBench server ``i mod 70`` (real definitions, 7.5 tools on average).
* Operator: :func:`mcp_optimizer.operator.run_operator` in this process (its own thread and event
  loop, as ``mcp-optimizer run`` would run it), with the real model, so the time it spends
  embedding can be read from the embedder.

Figures:

1. creation -> all indexed: from the first MCPServer create call until every one is RUNNING in
   the index with all its tools searchable; the share of that the model was busy embedding;
2. pod phase change -> visible in search: a Running pod's status is set to CrashLoopBackOff (its
   tools must leave search) or back to Running (they must come back); time from the status write
   until ``find_tool`` agrees, polled every 5 ms; p50/p99.

``--toolhive`` runs the same with ToolHive's MCPServers (``toolhive.stacklok.dev``, its real CRDs
installed as in the tests): the benchmark plays ToolHive's operator, writing each object's
``status`` (``phase: Ready`` and ``url`` of its "proxy", a farm server) right after creating it;
the phase change is ``Ready`` -> ``Failed`` -> ``Ready`` on the object itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import Report, base_parser, load_embedder, ms_summary, percentile, print_header
from bench.harness import (
    MERGE_PATCH,
    Cluster,
    Farm,
    OperatorThread,
    cluster,
    create_farm_server,
    farm_query,
    farm_tools,
    operator_settings,
    peak_rss_mib,
    pod_status,
    server_name,
    until_search_agrees,
    visible,
)
from mcp_optimizer.config import Settings
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.operator.mapping import workload_name
from tests.support import toolhive


async def indexed_counts(engine: Any) -> tuple[int, int]:
    """(RUNNING workloads with their tools, RUNNING tools) in the index."""
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT count(DISTINCT s.id), count(t.id) FROM mcpservers_workload s "
            "JOIN tools_workload t ON t.server_id = s.id WHERE s.status = 'RUNNING'"))).one()
    return int(row[0]), int(row[1])


async def _time_until_indexed(
    count: int, create: Callable[[int], None], engine: AsyncEngine, embedder: Any, report: Report, *,
    created_what: str, figure: str, calls: str,
) -> None:
    """``create(i)`` for each of ``count`` farm servers (8 threads at once), timed until every one
    is RUNNING in the index with all its tools; one figure, ``figure``."""
    expected_tools = sum(len(farm_tools(i)) for i in range(count))
    seconds_before = embedder.seconds_embedding
    texts_before = embedder.texts_embedded
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, create, i) for i in range(count)))
        created = time.perf_counter() - start
        print(f"created {count} {created_what} in {created:.1f} s", flush=True)
        servers, tools, shown = 0, 0, 0.0
        while (servers, tools) != (count, expected_tools):
            if time.perf_counter() - start > 1800:
                raise TimeoutError(f"only {servers}/{count} servers, {tools}/{expected_tools} tools indexed")
            await asyncio.sleep(0.2)
            servers, tools = await indexed_counts(engine)
            if time.perf_counter() - shown > 10:
                shown = time.perf_counter()
                print(f"  {shown - start:5.1f} s: {servers}/{count} servers, {tools}/{expected_tools} tools",
                      flush=True)
    total = time.perf_counter() - start
    in_model = embedder.seconds_embedding - seconds_before
    busy = embedder.busy_seconds(start)
    report.add(figure.format(tools=expected_tools),
               f"{total:.1f} s ({count / total:.1f} servers/s; {calls} done at {created:.1f} s); "
               f"the model ran {busy:.1f} s of it = {busy / total:.0%} "
               f"({embedder.texts_embedded - texts_before} texts; {in_model:.1f} s summed over concurrent calls)")


#: One direction of a phase change: (label, the write that makes it given the server's name,
#: whether the server's tools must then be in search).
Direction = tuple[str, Callable[[str], None], bool]


async def _time_phase_changes(
    search: ToolSearch, count: int, changes: int, workload: Callable[[str], str], directions: Sequence[Direction],
    report: Report, *, figure: str, what: str,
) -> None:
    """``changes`` phase changes (each direction in turn) timed until find_tool follows them."""
    samples: dict[str, list[float]] = {label: [] for label, _, _ in directions}
    for n in range(changes):
        i = (n * 37) % count
        name = server_name(i)
        wl, query = workload(name), farm_query(i)
        assert await visible(search, wl, query), wl
        for label, change, want in directions:
            t0 = time.perf_counter()
            change(name)
            samples[label].append(await until_search_agrees(search, wl, query, want, since=t0, timeout=30, what=what))
    both = [s for values in samples.values() for s in values]
    report.add(figure, ms_summary(both), "p99 < 1 s", percentile(both, 99) < 1.0)
    for label, values in samples.items():
        print(f"    {label}: {ms_summary(values)}")


async def _create_and_index(kube: Cluster, ns: str, farm: Farm, count: int, engine: AsyncEngine,
                            embedder: Any, report: Report) -> None:
    """``count`` MCPServers with a Running pod each, timed until all their tools are indexed."""
    await _time_until_indexed(
        count, lambda i: create_farm_server(kube, ns, farm, i), engine, embedder, report,
        created_what="MCPServers and their Running pods",
        figure=f"creation -> all indexed: {count} MCPServers ({{tools}} tools) on the control plane",
        calls="create calls")


async def _pod_phase_changes(core: Any, ns: str, engine: AsyncEngine, embedder: Any, count: int, changes: int,
                             report: Report) -> None:
    """Pod phase changes (out, then back) timed until find_tool follows them."""

    def patch(**status: Any) -> Callable[[str], None]:
        return lambda name: core.patch_namespaced_pod_status(f"{name}-0", ns, pod_status("Running", **status),
                                                             _content_type=MERGE_PATCH)

    await _time_phase_changes(
        ToolSearch(engine, embedder), count, changes, lambda name: workload_name(ns, name),
        [("out (CrashLoopBackOff)", patch(ready=False, waiting="CrashLoopBackOff"), False),
         ("back (Running)", patch(), True)],
        report, figure="pod phase change -> visible in find_tool (both directions)", what="the pod")


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--servers", type=int, help="MCPServers (default 500; --quick 100)")
    parser.add_argument("--changes", type=int, help="pod phase changes timed (default 100; --quick 20)")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    parser.add_argument("--log", help="write the operator's log to this file")
    parser.add_argument("--toolhive", action="store_true", help="ToolHive's MCPServers instead of ours")
    args = parser.parse_args()
    count = args.servers or (100 if args.quick else 500)
    changes = args.changes or (20 if args.quick else 100)
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kind = "ToolHive MCPServers" if args.toolhive else "MCPServers"
    print_header(f"Operator: {count} {kind} on a real control plane", args)
    report = Report()
    with (
        cluster(args.kubeconfig) as kube,
        Farm(count) as farm,
        tempfile.TemporaryDirectory(prefix="mcp-bench-op-") as tmp,
    ):
        run = toolhive_run if args.toolhive else operator_run
        await run(kube, farm, count, changes, Path(tmp), report)
    report.print_table()


async def operator_run(kube: Cluster, farm: Farm, count: int, changes: int, tmp: Path, report: Report) -> None:
    """Our MCPServers, each with a pod whose phase changes."""
    ns = kube.create_namespace("mcp-bench")
    embedder = load_embedder()
    settings = operator_settings(tmp / "index.db", ns, embedder)
    operator = OperatorThread(settings, kube.kubeconfig, embedder)
    try:
        engine = create_engine(settings.db_path, mmap_size=settings.sqlite_mmap_size)
        await _create_and_index(kube, ns, farm, count, engine, embedder, report)
        await _pod_phase_changes(kube.core, ns, engine, embedder, count, changes, report)
        peak = peak_rss_mib()
        report.add("peak RSS of this process (operator + model + index + the benchmark's clients)",
                   f"{peak:.0f} MiB")
        await engine.dispose()
        kube.core.delete_namespace(ns)
    finally:
        operator.stop()


async def toolhive_run(kube: Cluster, farm: Farm, count: int, changes: int, tmp: Path, report: Report) -> None:
    """``--toolhive``: the same two figures with ToolHive's MCPServers, phase changes on the object."""
    toolhive.install_crds(kube.api)
    ns = kube.create_namespace("mcp-bench-th")
    embedder = load_embedder()
    settings = operator_settings(tmp / "index.db", ns, embedder)
    operator = OperatorThread(settings, kube.kubeconfig, embedder)
    try:
        await _toolhive_figures(kube.api, ns, farm, count, changes, settings, embedder, report)
    finally:
        operator.stop()
    kube.core.delete_namespace(ns)


async def _toolhive_figures(
    api: client.ApiClient, ns: str, farm: Farm, count: int, changes: int, settings: Settings, embedder: Any,
    report: Report,
) -> None:
    engine = create_engine(settings.db_path, mmap_size=settings.sqlite_mmap_size)

    def create(i: int) -> None:
        name = server_name(i)
        toolhive.apply(api, ns, {
            "apiVersion": "toolhive.stacklok.dev/v1beta1", "kind": "MCPServer", "metadata": {"name": name},
            "spec": {"image": f"ghcr.io/livemcpbench/{name}:1.0", "transport": "streamable-http", "proxyPort": 8080},
        })
        toolhive.set_status(api, "MCPServer", ns, name, phase="Ready", url=farm.url(i))

    await _time_until_indexed(
        count, create, engine, embedder, report,
        created_what="ToolHive MCPServers, each Ready with its proxy URL,",
        figure=f"creation -> all indexed: {count} ToolHive MCPServers ({{tools}} tools)",
        calls="create + status calls")

    def set_phase(phase: str) -> Callable[[str], None]:
        return lambda name: toolhive.set_status(api, "MCPServer", ns, name, phase=phase)

    await _time_phase_changes(
        ToolSearch(engine, embedder), count, changes, lambda name: workload_name(ns, name, "MCPServer"),
        [("out (Failed)", set_phase("Failed"), False), ("back (Ready)", set_phase("Ready"), True)],
        report, figure="ToolHive phase change -> visible in find_tool (both directions)", what="the phase")
    report.add("peak RSS of this process (operator + model + index + the benchmark's clients)",
               f"{peak_rss_mib():.0f} MiB")
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
