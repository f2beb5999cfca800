"""``find_tool`` throughput with 1, 2 and 3 reader processes over one shared index (issue 13).

One index file (LiveMCPBench's servers deployed in many namespaces, see
:func:`bench.common.replica_specs`) is served by 1, 2, then 3 ``mcp-optimizer serve`` processes
(what a reader replica runs: the endpoint over the shared index, model loaded in each), behind
:class:`~tests.support.balancer.ReadyBalancer` (a Service: each new connection to a
ready replica, round robin). ``--clients`` MCP clients each hold one session (pinned to one
replica, as with a Service's ClientIP affinity) and call ``find_tool`` with LiveMCPBench's
short requests in turn for ``--seconds``. Printed: calls per second and latency per process
count.

The clients run in this process and share the machine with the servers: on a 2-core host three
servers and the clients compete for the same cores, so this measures how far processes scale
here, not on a cluster where each replica has its own node.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Report, base_parser, build_replica_index, load_embedder, ms_summary, print_header, temp_index
from bench.harness import mcp_session
from bench.search import query_sets
from tests.support.balancer import Backend, ReadyBalancer
from tests.support.ports import free_port
from tests.support.shared import model_path


async def _start_readers(count: int, index: Path, model_path: Path, logs: Path) -> list[asyncio.subprocess.Process]:
    env = {**os.environ, "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path), "MCP_OPTIMIZER_AUTH_MODE": "none",
           "MCP_OPTIMIZER_SEARCH_MODE": "hybrid"}
    processes = []
    for i in range(count):
        port = free_port()
        log = (logs / f"reader-{i}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcp_optimizer", "--db", str(index), "serve", "--port", str(port),
            env=env, stdout=log, stderr=log)
        process.port = port  # type: ignore[attr-defined]
        processes.append(process)
    return processes


async def _client(url: str, queries: list[str], offset: int, until: float, latencies: list[float]) -> int:
    calls = 0
    async with mcp_session(url, timeout=30.0) as client:
        i = offset
        while time.monotonic() < until:
            start = time.perf_counter()
            result = await client.call_tool("find_tool", {"tool_description": queries[i % len(queries)]})
            latencies.append(time.perf_counter() - start)
            assert not result.is_error, result
            calls += 1
            i += 1
    return calls


async def measure(readers: int, index: Path, model_path: Path, queries: list[str], clients: int,
                  seconds: float, logs: Path) -> tuple[float, list[float]]:
    processes = await _start_readers(readers, index, model_path, logs)
    balancer = ReadyBalancer(interval=0.5)
    for i, process in enumerate(processes):
        port = process.port  # type: ignore[attr-defined]
        balancer.add(Backend(f"reader-{i}", port, f"http://127.0.0.1:{port}/healthz"))
    await balancer.start()
    try:
        deadline = time.monotonic() + 180
        while len(balancer.ready()) < readers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"readers not ready; see {logs}")
            await asyncio.sleep(0.5)
        url = f"http://127.0.0.1:{balancer.port}/mcp"
        await _client(url, queries, 0, time.monotonic() + 2, [])  # warm-up: first ONNX runs, cold pages
        latencies: list[float] = []
        until = time.monotonic() + seconds
        start = time.perf_counter()
        calls = await asyncio.gather(*(_client(url, queries, 7 * c, until, latencies) for c in range(clients)))
        return sum(calls) / (time.perf_counter() - start), latencies
    finally:
        await balancer.stop()
        for process in processes:
            process.terminate()
        await asyncio.gather(*(p.wait() for p in processes))


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tools", type=int, help="indexed tools (default 20000; --quick 2000)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, help="seconds of calls per process count (default 30; --quick 8)")
    args = parser.parse_args()
    tool_target = args.tools or (2000 if args.quick else 20_000)
    seconds = args.seconds or (8 if args.quick else 30)
    print_header(f"find_tool throughput, 1-3 reader processes, {tool_target} tools", args)
    embedder = load_embedder()
    queries = query_sets()["short"]
    report = Report()
    with tempfile.TemporaryDirectory(prefix="mcp-bench-replicas-") as tmp:
        index = Path(tmp) / "index.db"
        async with temp_index(embedder, index) as indexer:
            workloads, tools, _ = await build_replica_index(indexer, tool_target)
        print(f"indexed {tools} tools of {workloads} workloads\n")
        for readers in (1, 2, 3):
            qps, latencies = await measure(readers, index, model_path(), queries, args.clients, seconds, Path(tmp))
            report.add(f"find_tool, {readers} reader process{'es' if readers > 1 else ''}, {args.clients} clients",
                       f"{qps:.0f} calls/s; latency {ms_summary(latencies)}")
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
