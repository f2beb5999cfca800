"""Hostile MCP servers against the operator: its peak RSS and other tenants' find_tool latency.

Setup, all real: a control plane (``scripts/control-plane``, or ``--kubeconfig``); ``mcp-optimizer
run`` as its own process (operator and MCP endpoint, as deployed; loopback admitted with
``MCP_OPTIMIZER_ALLOWED_DESTINATIONS`` because every server here runs on 127.0.0.1, remote
servers probed every 10 s); one child process serving the 70 LiveMCPBench servers (527 real
tools) as the other tenants' remote MCPServers, and every hostile server of
:class:`~mcp_optimizer.testing.mcp_servers.Hostility`, each on its own port.

For each hostile server, one after the other: ``find_tool`` p50 of the other tenants (one MCP
session on the endpoint, unscoped: it sees every running tool, the hostile server's too) just
before; then the hostile MCPServer is created in its own namespace and, once its status says what
happened, the same queries again while the operator keeps re-probing it (and, for the huge call
result, calls its tool through the endpoint); the operator process's peak RSS over that phase
(``VmHWM``, reset at the start of the phase through ``/proc/<pid>/clear_refs``). Targets (SC-16):
peak RSS < 600 MB, p50 within 1.5x of the p50 just before.

``--why`` adds the diagnosis of the slowdown the issue reported (a 20 MB tool made everyone's
find_tool several times slower), in-process and without bounds: one 20 MB description stored
directly in an index of the 527 real tools, and the cost of each part of ``find_tool``.

The pod flip -> search latency during a 5,000-entry catalog load (issue 10, part C) is a module of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from mcp.client.client import Client
from sqlalchemy import text

from bench.common import (
    REPO,
    Report,
    base_parser,
    livemcpbench_servers,
    load_embedder,
    model_path,
    percentile,
    print_header,
    temp_index,
)
from bench.harness import (
    ChildServers,
    announce_and_wait,
    cluster,
    console_script,
    create_mcpserver,
    mcp_session,
    proc_memory,
    reset_peak,
    stop_process,
)
from bench.search import query_sets
from mcp_optimizer.db.engine import create_engine
from mcp_optimizer.db.models import TOOL_TOKENS_SQL, WorkloadStatus
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.ingest import WorkloadSpec
from mcp_optimizer.mcp.scope import AccessScope
from mcp_optimizer.mcp.tokens import running_tools_tokens
from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION
from mcp_optimizer.testing.mcp_servers import LOOPBACK, Hostility
from tests.support.ports import free_port

MIB = 1024 * 1024
TARGET_RSS_MB = 600
TARGET_RATIO = 1.5

#: Every hostile server of the run, by the name the report uses.
HOSTILE: dict[str, Callable[[], Hostility]] = {
    "50 MB description": lambda: Hostility.huge_description(50 * MIB),
    "20 MB inputSchema": lambda: Hostility.huge_schema(20 * MIB),
    "100,000 tools in one page": lambda: Hostility.many_tools(100_000),
    "100,000 tools in pages of 400": lambda: Hostility.many_tools(100_000, page_size=400),
    "a page without end": Hostility.endless_page,
    "pages without end": Hostility.endless_pages,
    "bytes trickling in, one every 0.2 s": lambda: Hostility.trickle(0.2),
    "gzip-compressed answer": Hostility.compressed,
    # Each of them is embedded (600 characters of it), which on 2 busy cores takes minutes.
    "300 tools at the bounds (indexed, clipped)": lambda: Hostility.bounded_but_big(tools=300),
    "50 MB call result": lambda: Hostility.huge_result(50 * MIB),
    # Just under the page bound, so each listing is parsed whole before the tool count fails it
    # (27 MiB at its peak): eight at once is what MCP_OPTIMIZER_MAX_CONCURRENT_LARGE_LISTS bounds.
    "12,000 tiny tools in one page, 8 MCPServers at once": lambda: Hostility.many_tools(12_000),
}
#: How many MCPServers of a tenant point at the hostile server (1 unless named here).
COPIES = {"12,000 tiny tools in one page, 8 MCPServers at once": 8}
QUICK = ("50 MB description", "100,000 tools in pages of 400", "300 tools at the bounds (indexed, clipped)",
         "50 MB call result", "12,000 tiny tools in one page, 8 MCPServers at once")


# ------------------------------------------------------------------------------ servers


def servers_child() -> None:
    """Serve the tenants' servers and every hostile server until stdin closes."""
    from mcp_optimizer.testing.mcp_servers import HostileMcpServer, McpTestServerFarm

    farm = McpTestServerFarm({server.k8s_name: server.tools for server in livemcpbench_servers()})
    farm.start()
    hostile = {name: HostileMcpServer(make()).start() for name, make in HOSTILE.items()}
    announce_and_wait({"farm": farm.urls, "hostile": {name: s.url for name, s in hostile.items()}})
    for server in hostile.values():
        server.stop()
    farm.stop()


class Servers(ChildServers):
    """The child process of :func:`servers_child`: the tenants' servers and the hostile ones."""

    def __init__(self) -> None:
        super().__init__("bench.hostile", "--servers-child")
        self.farm: dict[str, str] = self.urls["farm"]
        self.hostile: dict[str, str] = self.urls["hostile"]

    def __enter__(self) -> Servers:
        return self


# ------------------------------------------------------------------------------ operator


class OperatorProcess:
    """``mcp-optimizer run``: the operator and the MCP endpoint in one process, as deployed."""

    def __init__(self, kubeconfig: str, db: Path, namespaces: list[str], log: Path) -> None:
        self.mcp_port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "MCP_OPTIMIZER_DB": str(db),
            "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path()),
            "MCP_OPTIMIZER_NAMESPACES": ",".join(namespaces),
            "MCP_OPTIMIZER_ALLOWED_DESTINATIONS": ",".join(LOOPBACK),
            # The tenants' find_tool calls come from this process over loopback, without tokens.
            "MCP_OPTIMIZER_AUTH_MODE": "none",
            "MCP_OPTIMIZER_MCP_HOST": "127.0.0.1",
            "MCP_OPTIMIZER_MCP_PORT": str(self.mcp_port),
            "MCP_OPTIMIZER_METRICS_PORT": str(self.metrics_port),
            "MCP_OPTIMIZER_RESYNC_INTERVAL": "3600",
            "MCP_OPTIMIZER_REMOTE_PROBE_INTERVAL": "10",
        }
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen([console_script(), "run", "--kubeconfig", kubeconfig], env=env, cwd=REPO,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mcp-optimizer run did not get ready; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mcp_port}/mcp"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def memory(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak since the last reset) in MiB."""
        return proc_memory(self.process.pid)

    def reset_peak(self) -> None:
        reset_peak(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)
        self._log_file.close()


# ------------------------------------------------------------------------------ measuring


class Tenant:
    """Another tenant's MCP session on the endpoint."""

    def __init__(self, session: Client, queries: list[str]) -> None:
        self.session = session
        self.queries = queries

    async def find_tool_ms(self, rounds: int, *, between: Callable[[], Any] | None = None) -> list[float]:
        samples = []
        for i in range(rounds):
            query = self.queries[i % len(self.queries)]
            start = time.perf_counter()
            result = await self.session.call_tool("find_tool", {"tool_description": query, "limit": 10})
            samples.append((time.perf_counter() - start) * 1000)
            assert not result.is_error, result
            if between is not None and i % 10 == 9:
                await between()
        return samples


def create_server(objects: client.CustomObjectsApi, ns: str, name: str, url: str) -> None:
    create_mcpserver(objects, ns, name, {"url": url})


def ready_condition(objects: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    body = cast(dict[str, Any], objects.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
    for condition in (body.get("status") or {}).get("conditions") or ():
        if condition["type"] == "Ready" and condition["reason"] not in ("Pending", "NotRead"):
            return dict(condition)
    return {}


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def running_counts(engine: Any, namespace: str) -> tuple[int, int]:
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT count(DISTINCT s.id), count(t.id) FROM mcpservers_workload s JOIN tools_workload t "
                "ON t.server_id = s.id WHERE s.status = 'RUNNING' AND s.namespace = :ns"), {"ns": namespace})).one()
    except Exception:  # the operator has not created the tables yet
        return 0, 0
    return int(row[0]), int(row[1])


async def hostile_servers(args: Any, report: Report) -> None:
    names = [name for name in (QUICK if args.quick else HOSTILE) if not args.only or args.only in name]
    rounds = 30 if args.quick else 100
    with (
        cluster(args.kubeconfig) as kube,
        Servers() as servers,
        tempfile.TemporaryDirectory(prefix="mcp-bench-hostile-") as tmp,
    ):
        tenants, attackers = kube.create_namespace("tenants"), kube.create_namespace("hostile")
        db = Path(tmp) / "index.db"
        operator = OperatorProcess(kube.kubeconfig, db, [tenants, attackers], Path(tmp) / "operator.log")
        try:
            for name, url in servers.farm.items():
                create_server(kube.objects, tenants, name, url)
            engine = create_engine(db)
            expected = (len(servers.farm), sum(len(s.tools) for s in livemcpbench_servers()))
            start = time.perf_counter()
            await wait_for(lambda: _equals(running_counts(engine, tenants), expected), "the tenants' servers", 600)
            memory = operator.memory()
            report.add(f"operator with the other tenants indexed ({expected[0]} servers, {expected[1]} tools, "
                       f"{time.perf_counter() - start:.0f} s)", f"RSS {memory['VmRSS']:.0f} MiB, "
                       f"peak so far {memory['VmHWM']:.0f} MiB")
            queries = query_sets()["short"]
            async with mcp_session(operator.url) as session:
                tenant = Tenant(session, queries)
                await tenant.find_tool_ms(20)  # warm-up
                arena = _Arena(kube.objects, attackers, servers, operator, session, engine, tenant, rounds)
                for n, name in enumerate(names):
                    await _attack(arena, n, name, report)
            await engine.dispose()
            for ns in (tenants, attackers):
                kube.core.delete_namespace(ns)
        except BaseException:
            kept = Path(tempfile.gettempdir()) / f"mcp-bench-hostile-operator-{os.getpid()}.log"
            kept.write_text(operator.log.read_text())
            print(f"the operator's log: {kept}", file=sys.stderr)
            raise
        finally:
            operator.stop()


@dataclass
class _Arena:
    """Where the hostile servers are let loose: the cluster, the operator and a tenant measuring."""

    objects: Any
    attackers: str
    servers: Servers
    operator: OperatorProcess
    session: Client
    engine: Any
    tenant: Tenant
    rounds: int


async def _attack(arena: _Arena, n: int, name: str, report: Report) -> None:
    """One hostile server (or its copies) created, indexed and removed, the tenant measured
    before, during and after; one line in the report."""
    objects, attackers, operator, tenant, rounds = (
        arena.objects, arena.attackers, arena.operator, arena.tenant, arena.rounds)
    before = await tenant.find_tool_ms(rounds)
    operator.reset_peak()
    copies = [f"hostile-{n}-{i}" for i in range(COPIES.get(name, 1))]
    for server in copies:
        create_server(objects, attackers, server, arena.servers.hostile[name])
    # Indexing 300 tools runs the model 300 times: minutes on a loaded machine.
    conditions = [
        await wait_for(functools.partial(ready_condition, objects, attackers, server), name, 1800)
        for server in copies
    ]
    condition = conditions[0]
    between = None
    if name == "50 MB call result":
        async def between(s: str = copies[0]) -> None:
            result = await arena.session.call_tool("call_tool", {
                "server_name": f"{attackers}/{s}", "tool_name": "dump", "parameters": {}})
            assert result.is_error, "a 50 MB result must be refused"
    during = await tenant.find_tool_ms(rounds, between=between)
    peak = operator.memory()["VmHWM"]
    for server in copies:
        objects.delete_namespaced_custom_object(GROUP, VERSION, attackers, PLURAL, server)
    for server in copies:
        await wait_for(functools.partial(_gone, arena.engine, f"{attackers}/{server}"), f"{server} removed")
    after = await tenant.find_tool_ms(rounds)
    # Normal is the p50 of the phases just before and just after: the machine's load
    # drifts, and a ratio against one of them alone would carry that drift.
    normal = statistics.median(before + after)
    p50_during = statistics.median(during)
    ratio = p50_during / normal
    report.add(
        f"{name}: status {condition['reason']}",
        f"peak RSS {peak:.0f} MiB; other tenants' find_tool p50 {p50_during:.1f} ms vs "
        f"{normal:.1f} ms normal = {ratio:.2f}x (p99 {percentile(during, 99):.0f} vs "
        f"{percentile(before + after, 99):.0f} ms)",
        f"RSS < {TARGET_RSS_MB} MB, p50 <= {TARGET_RATIO}x",
        peak * 1.048576 < TARGET_RSS_MB and ratio <= TARGET_RATIO,
    )
    print(f"    {condition['message'][:300]}", flush=True)


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _gone(engine: Any, workload: str) -> bool:
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT 1 FROM mcpservers_workload WHERE workload_name = :w"),
                                  {"w": workload})).first()
    return row is None


# ------------------------------------------------------------------------------ why


async def why_find_tool_slowed(args: Any, report: Report) -> None:
    """Without bounds (stored directly): what a 20 MB description costs each part of find_tool."""
    embedder = load_embedder()
    rounds = 20 if args.quick else 40
    queries = query_sets()["short"][:rounds]
    everyone = AccessScope.of("everyone", None, None)
    with tempfile.TemporaryDirectory(prefix="mcp-bench-why-") as tmp:
        async with temp_index(embedder, Path(tmp) / "index.db") as indexer:
            for server in livemcpbench_servers():
                await indexer.apply_workload(WorkloadSpec(
                    workload_name=f"tenants/{server.k8s_name}", name=server.k8s_name,
                    url=f"http://{server.k8s_name}.example/mcp", status=WorkloadStatus.RUNNING,
                    namespace="tenants", tools=server.tools))
            search = ToolSearch(indexer.engine, embedder)
            old_tokens = text(
                f"SELECT coalesce(sum({TOOL_TOKENS_SQL.replace('details', 't.details')}), 0) FROM tools_workload t "
                "JOIN mcpservers_workload s ON s.id = t.server_id WHERE s.status = 'RUNNING'")

            async def timings() -> dict[str, float]:
                parts: dict[str, list[float]] = {
                    "search": [], "search matching it": [], "tokens (stored)": [], "tokens (from JSON)": []
                }
                for query in queries:
                    t0 = time.perf_counter()
                    await search.find_tools("send an email message to a colleague", limit=10)
                    parts["search matching it"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await search.find_tools(query, limit=10)
                    t1 = time.perf_counter()
                    await running_tools_tokens(indexer.engine, everyone)
                    t2 = time.perf_counter()
                    async with indexer.engine.connect() as conn:
                        await conn.execute(old_tokens)
                    t3 = time.perf_counter()
                    parts["search"].append(t1 - t0)
                    parts["tokens (stored)"].append(t2 - t1)
                    parts["tokens (from JSON)"].append(t3 - t2)
                return {k: statistics.median(v) * 1000 for k, v in parts.items()}

            normal = await timings()
            huge = {"name": "huge", "inputSchema": {"type": "object"},
                    "description": "send an email message " * (20 * MIB // 22)}
            await indexer.apply_workload(WorkloadSpec(
                workload_name="hostile/x", name="x", url="http://x.example/mcp", status=WorkloadStatus.RUNNING,
                namespace="hostile", tools=[huge]))
            hostile = await timings()
    for part in normal:
        report.add(f"why: find_tool's {part}, 527 tools + one 20 MB description stored unbounded",
                   f"p50 {hostile[part]:.1f} ms vs {normal[part]:.1f} ms without it = "
                   f"{hostile[part] / normal[part]:.1f}x")


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    parser.add_argument("--why", action="store_true", help="also measure why an unbounded 20 MB tool slowed find_tool")
    parser.add_argument("--only", help="only the hostile servers whose name contains this")
    parser.add_argument("--write-fairness", action="store_true",
                        help="also time pod flip -> find_tool during a 5,000-entry catalog load and delete "
                             "(bench.write_fairness; --quick: 1,000 entries)")
    parser.add_argument("--servers-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.servers_child:
        servers_child()
        return
    print_header("Hostile MCP servers: the operator's peak RSS and other tenants' find_tool latency", args)
    print("Latency is measured on a machine shared with other work: compare each phase with the one just "
          "before it, not across runs.\n", flush=True)
    report = Report()
    if args.why:
        await why_find_tool_slowed(args, report)
    await hostile_servers(args, report)
    if args.write_fairness:
        from bench.write_fairness import measure

        await measure(entries=1000 if args.quick else 5000, kubeconfig=args.kubeconfig, report=report)
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
