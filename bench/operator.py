"""The operator against a real control plane: 500 MCPServers from creation to indexed, and how
fast a pod phase change reaches search (SC-13).

* Control plane: ``scripts/control-plane start`` (etcd + kube-apiserver, see
  docs/control-plane.md), or an existing cluster with ``--kubeconfig``. There is no kubelet, so
  the benchmark plays it: it creates each MCPServer's pod and writes the pod's status.
* MCP servers: ONE child process (``python -m bench.operator --farm-child``) serves all 500 as
  real MCP servers over streamable HTTP on 127.0.0.1 (:class:`McpTestServerFarm`); server ``i``
  serves the tools of LiveMCPBench server ``i mod 70`` (real definitions, 7.5 tools on average).
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
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import (
    REPO,
    Report,
    base_parser,
    livemcpbench_servers,
    load_embedder,
    ms_summary,
    percentile,
    print_header,
)
from mcp_optimizer.config import Settings
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.operator import run_operator
from mcp_optimizer.operator.mapping import GROUP, INSTANCE_LABEL, PLURAL, VERSION, workload_name
from mcp_optimizer.testing.mcp_servers import LOOPBACK
from tests.support import toolhive

CRD_FILE = REPO / "crds" / "mcpservers.mcp-optimizer.dev.yaml"
MERGE_PATCH = "application/merge-patch+json"


# ------------------------------------------------------------------------------ the farm


def farm_tools(i: int) -> list[dict[str, Any]]:
    servers = livemcpbench_servers()
    return servers[i % len(servers)].tools


def server_name(i: int) -> str:
    servers = livemcpbench_servers()
    return f"{servers[i % len(servers)].k8s_name[:50]}-{i:03d}"


def farm_child(count: int) -> None:
    """Serve ``count`` MCP servers from this process until stdin closes."""
    from mcp_optimizer.testing.mcp_servers import McpTestServerFarm

    farm = McpTestServerFarm({server_name(i): farm_tools(i) for i in range(count)})
    farm.start()
    print(json.dumps({"base": farm.base_url}), flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us
    farm.stop()


class Farm:
    """The child process serving every MCP server."""

    def __init__(self, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.operator", "--farm-child", "--servers", str(count)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the MCP server farm did not start")
        self.base = json.loads(line)["base"]

    def url(self, i: int) -> str:
        return f"{self.base}/s/{server_name(i)}/mcp"

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------------ control plane


class ControlPlane:
    """``scripts/control-plane`` in a temporary state directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-bench-cp-"))
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "control-plane"), "start", str(self.dir)],
                                capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"scripts/control-plane start failed:\n{result.stderr}")
        self.kubeconfig = result.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        subprocess.run([sys.executable, str(REPO / "scripts" / "control-plane"), "stop", str(self.dir)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)  # stop keeps the logs; a benchmark does not need them


def install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD_FILE.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
            return
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.1)
    raise TimeoutError("the MCPServer CRD was not served within 60 s")


def pod_status(phase: str, *, ready: bool = True, waiting: str | None = None) -> dict[str, Any]:
    """A pod ``status`` as the kubelet reports it (the control plane has no kubelet): Running and
    Ready, or Running with its container waiting in ``waiting`` (e.g. CrashLoopBackOff)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = phase == "Running" and waiting is None
    is_ready = ready and started
    state: dict[str, Any] = ({"waiting": {"reason": waiting, "message": f"simulated {waiting}"}} if waiting
                             else {"running": {"startedAt": now}})
    container = {"name": "mcp", "ready": is_ready, "started": started, "restartCount": 3 if waiting else 0,
                 "image": "simulated", "imageID": "", "state": state}
    conditions = [{"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
                  for kind, ok in (("PodScheduled", True), ("Initialized", True), ("ContainersReady", is_ready),
                                   ("Ready", is_ready))]
    return {"status": {"phase": phase, "conditions": conditions, "containerStatuses": [container],
                       "startTime": now}}


# ------------------------------------------------------------------------------ operator


class OperatorThread:
    """``run_operator`` in its own thread and event loop (what ``mcp-optimizer run`` runs)."""

    def __init__(self, settings: Settings, kubeconfig: str, embedder: Any) -> None:
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                asyncio.run(run_operator(settings, kubeconfig=kubeconfig, embedder=embedder,
                                         stop_flag=self.stop_flag, ready_flag=self.ready_flag))
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name="operator", daemon=True)
        self.thread.start()
        if not self.ready_flag.wait(120) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(60)


async def indexed_counts(engine: Any) -> tuple[int, int]:
    """(RUNNING workloads with their tools, RUNNING tools) in the index."""
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT count(DISTINCT s.id), count(t.id) FROM mcpservers_workload s "
            "JOIN tools_workload t ON t.server_id = s.id WHERE s.status = 'RUNNING'"))).one()
    return int(row[0]), int(row[1])


async def visible(search: ToolSearch, workload: str, query: str) -> bool:
    return bool(await search.find_tools(query, server=workload, limit=1))


async def _create_and_index(core: Any, objects: Any, ns: str, farm: Farm, count: int, engine: AsyncEngine,
                            embedder: Any, report: Report) -> None:
    """``count`` MCPServers with a Running pod each, timed until all their tools are indexed."""
    expected_tools = sum(len(farm_tools(i)) for i in range(count))

    def create(i: int) -> None:
        name = server_name(i)
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MCPServer", "metadata": {"name": name},
            "spec": {"image": f"ghcr.io/livemcpbench/{name}:1.0", "endpoint": farm.url(i)},
        })
        core.create_namespaced_pod(ns, {
            "metadata": {"name": f"{name}-0", "labels": {INSTANCE_LABEL: name}},
            "spec": {"containers": [{"name": "mcp", "image": "example/mcp:1"}]},
        })
        core.patch_namespaced_pod_status(f"{name}-0", ns, pod_status("Running"), _content_type=MERGE_PATCH)

    seconds_before = embedder.seconds_embedding
    texts_before = embedder.texts_embedded
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        creating = [loop.run_in_executor(pool, create, i) for i in range(count)]
        await asyncio.gather(*creating)
        created = time.perf_counter() - start
        print(f"created {count} MCPServers and their Running pods in {created:.1f} s", flush=True)
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
    report.add(f"creation -> all indexed: {count} MCPServers ({expected_tools} tools) on the control plane",
               f"{total:.1f} s ({count / total:.1f} servers/s; create calls done at {created:.1f} s); "
               f"the model ran {busy:.1f} s of it = {busy / total:.0%} "
               f"({embedder.texts_embedded - texts_before} texts; {in_model:.1f} s summed over concurrent calls)")


async def _pod_phase_changes(core: Any, ns: str, engine: AsyncEngine, embedder: Any, count: int, changes: int,
                             report: Report) -> None:
    """Pod phase changes (out, then back) timed until find_tool follows them."""
    search = ToolSearch(engine, embedder)
    samples: dict[str, list[float]] = {"out (CrashLoopBackOff)": [], "back (Running)": []}
    for n in range(changes):
        i = (n * 37) % count
        name, wl = server_name(i), workload_name(ns, server_name(i))
        tool = farm_tools(i)[0]
        query = f"{tool['name']} {tool.get('description') or ''}"[:200]
        assert await visible(search, wl, query), wl
        for label, body, want in (
            ("out (CrashLoopBackOff)", pod_status("Running", ready=False, waiting="CrashLoopBackOff"), False),
            ("back (Running)", pod_status("Running"), True),
        ):
            t0 = time.perf_counter()
            core.patch_namespaced_pod_status(f"{name}-0", ns, body, _content_type=MERGE_PATCH)
            while await visible(search, wl, query) != want:
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError(f"{wl}: search did not follow the pod within 30 s")
                await asyncio.sleep(0.005)
            samples[label].append(time.perf_counter() - t0)
    both = [s for values in samples.values() for s in values]
    report.add("pod phase change -> visible in find_tool (both directions)", ms_summary(both),
               "p99 < 1 s", percentile(both, 99) < 1.0)
    for label, values in samples.items():
        print(f"    {label}: {ms_summary(values)}")


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--servers", type=int, help="MCPServers (default 500; --quick 100)")
    parser.add_argument("--changes", type=int, help="pod phase changes timed (default 100; --quick 20)")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    parser.add_argument("--log", help="write the operator's log to this file")
    parser.add_argument("--toolhive", action="store_true", help="ToolHive's MCPServers instead of ours")
    parser.add_argument("--farm-child", action="store_true", help=argparse_hidden())
    args = parser.parse_args()
    count = args.servers or (100 if args.quick else 500)
    if args.farm_child:
        farm_child(count)
        return
    changes = args.changes or (20 if args.quick else 100)
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kind = "ToolHive MCPServers" if args.toolhive else "MCPServers"
    print_header(f"Operator: {count} {kind} on a real control plane", args)
    report = Report()
    plane = None if args.kubeconfig else ControlPlane()
    kubeconfig = args.kubeconfig or (plane.kubeconfig if plane else "")
    farm = Farm(count)
    tmp = tempfile.TemporaryDirectory(prefix="mcp-bench-op-")
    operator: OperatorThread | None = None
    try:
        api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
        install_crd(api)
        if args.toolhive:
            await toolhive_run(api, kubeconfig, farm, count, changes, Path(tmp.name), report)
            report.print_table()
            return
        ns = f"mcp-bench-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
        embedder = load_embedder()
        # The farm's servers are on loopback, which the operator refuses unless it is admitted.
        settings = Settings(db_path=Path(tmp.name) / "index.db", embedding_model_path=embedder.model_path,
                            namespaces=(ns,), resync_interval=3600.0, allowed_destinations=LOOPBACK)
        operator = OperatorThread(settings, kubeconfig, embedder)
        engine = create_engine(settings.db_path, mmap_size=settings.sqlite_mmap_size)
        await _create_and_index(core, objects, ns, farm, count, engine, embedder, report)
        await _pod_phase_changes(core, ns, engine, embedder, count, changes, report)
        peak = peak_rss_mib()
        report.add("peak RSS of this process (operator + model + index + the benchmark's clients)",
                   f"{peak:.0f} MiB")
        await engine.dispose()
        core.delete_namespace(ns)
    finally:
        if operator is not None:
            operator.stop()
        farm.stop()
        if plane is not None:
            plane.stop()
        tmp.cleanup()
    report.print_table()


async def toolhive_run(
    api: client.ApiClient, kubeconfig: str, farm: Farm, count: int, changes: int, tmp: Path, report: Report
) -> None:
    """``--toolhive``: the same two figures with ToolHive's MCPServers, phase changes on the object."""
    toolhive.install_crds(api)
    core = client.CoreV1Api(api)
    ns = f"mcp-bench-th-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
    embedder = load_embedder()
    settings = Settings(db_path=tmp / "index.db", embedding_model_path=embedder.model_path,
                        namespaces=(ns,), resync_interval=3600.0, allowed_destinations=LOOPBACK)
    operator = OperatorThread(settings, kubeconfig, embedder)
    try:
        await _toolhive_figures(api, ns, farm, count, changes, settings, embedder, report)
    finally:
        operator.stop()
    core.delete_namespace(ns)


async def _toolhive_figures(
    api: client.ApiClient, ns: str, farm: Farm, count: int, changes: int, settings: Settings, embedder: Any,
    report: Report,
) -> None:
    expected_tools = sum(len(farm_tools(i)) for i in range(count))
    engine = create_engine(settings.db_path, mmap_size=settings.sqlite_mmap_size)

    def create(i: int) -> None:
        name = server_name(i)
        toolhive.apply(api, ns, {
            "apiVersion": "toolhive.stacklok.dev/v1beta1", "kind": "MCPServer", "metadata": {"name": name},
            "spec": {"image": f"ghcr.io/livemcpbench/{name}:1.0", "transport": "streamable-http", "proxyPort": 8080},
        })
        toolhive.set_status(api, "MCPServer", ns, name, phase="Ready", url=farm.url(i))

    seconds_before = embedder.seconds_embedding
    texts_before = embedder.texts_embedded
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, create, i) for i in range(count)))
        created = time.perf_counter() - start
        print(f"created {count} ToolHive MCPServers, each Ready with its proxy URL, in {created:.1f} s", flush=True)
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
    report.add(f"creation -> all indexed: {count} ToolHive MCPServers ({expected_tools} tools)",
               f"{total:.1f} s ({count / total:.1f} servers/s; create + status calls done at {created:.1f} s); "
               f"the model ran {busy:.1f} s of it = {busy / total:.0%} "
               f"({embedder.texts_embedded - texts_before} texts; {in_model:.1f} s summed over concurrent calls)")

    search = ToolSearch(engine, embedder)
    samples: dict[str, list[float]] = {"out (Failed)": [], "back (Ready)": []}
    for n in range(changes):
        i = (n * 37) % count
        name = server_name(i)
        wl = workload_name(ns, name, "MCPServer")
        tool = farm_tools(i)[0]
        query = f"{tool['name']} {tool.get('description') or ''}"[:200]
        assert await visible(search, wl, query), wl
        for label, phase, want in (("out (Failed)", "Failed", False), ("back (Ready)", "Ready", True)):
            t0 = time.perf_counter()
            toolhive.set_status(api, "MCPServer", ns, name, phase=phase)
            while await visible(search, wl, query) != want:
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError(f"{wl}: search did not follow the phase within 30 s")
                await asyncio.sleep(0.005)
            samples[label].append(time.perf_counter() - t0)
    both = [s for values in samples.values() for s in values]
    report.add("ToolHive phase change -> visible in find_tool (both directions)", ms_summary(both),
               "p99 < 1 s", percentile(both, 99) < 1.0)
    for label, values in samples.items():
        print(f"    {label}: {ms_summary(values)}")
    report.add("peak RSS of this process (operator + model + index + the benchmark's clients)",
               f"{peak_rss_mib():.0f} MiB")
    await engine.dispose()


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    if "--farm-child" in sys.argv:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
