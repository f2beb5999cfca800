"""Peak memory (RSS) of the serving process with the model loaded and 20,000 tools indexed.

Builds the 20,026-tool index of :func:`bench.common.replica_specs` in a temporary file, starts
``mcp-optimizer serve`` on it as a separate process (the MCP endpoint: model, index, HTTP
server; ``mcp-optimizer run`` adds the operator on top and is measured by ``bench.operator``),
sends ``find_tool`` over MCP from 8 concurrent clients, and reads the process's peak resident
set (``VmHWM`` in ``/proc/<pid>/status``) at start, after the queries, and at the end.
``--keyword-only`` does the same with ``MCP_OPTIMIZER_SEARCH_MODE=bm25``: the index is built
without a model (no vectors) and ``serve`` loads none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from bench.common import (
    REPO,
    Report,
    base_parser,
    build_replica_index,
    load_embedder,
    model_path,
    print_header,
    temp_index,
)
from bench.search import query_sets
from tests.support.ports import free_port

TARGET_MB = 600


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values



def start_serve(db: Path, port: int, *, keyword_only: bool = False) -> subprocess.Popen[bytes]:
    """``mcp-optimizer serve`` on ``db`` in its own process (the console script of this venv)."""
    exe = Path(sys.executable).with_name("mcp-optimizer")
    command = [str(exe), "--db", str(db), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path()),
           "MCP_OPTIMIZER_SEARCH_MODE": "bm25" if keyword_only else "hybrid"}
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mcp-optimizer serve exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"mcp-optimizer serve did not listen on {port} within {timeout} s")


async def ask(url: str, queries: list[str], clients: int) -> int:
    """Send ``find_tool`` for every query from ``clients`` concurrent MCP sessions."""
    answered = 0

    async def client(mine: list[str]) -> None:
        nonlocal answered
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(60.0)) as http,
            Client(streamable_http_client(url, http_client=http), cache=None) as session,
        ):
            for query in mine:
                result = await session.call_tool("find_tool", {"tool_description": query, "limit": 10})
                answered += not result.is_error

    await asyncio.gather(*(client(queries[i::clients]) for i in range(clients)))
    return answered


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tools", type=int, help="indexed tools (default 20000; --quick 5000)")
    parser.add_argument("--keyword-only", action="store_true", help="no model: index and serve with bm25 mode")
    args = parser.parse_args()
    tool_target = args.tools or (5000 if args.quick else 20_000)
    what = "keyword-only (no model)" if args.keyword_only else "the model"
    print_header(f"Peak RSS of mcp-optimizer serve with {what} and {tool_target} tools", args)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="mcp-bench-mem-") as tmp:
        db = Path(tmp) / "index.db"
        embedder = None if args.keyword_only else load_embedder()
        async with temp_index(embedder, db) as indexer:
            workloads, tools, seconds = await build_replica_index(indexer, tool_target)
        print(f"indexed {tools} tools of {workloads} workloads in {seconds:.1f} s; index file "
              f"{db.stat().st_size / 1024 / 1024:.0f} MiB\n")
        port = free_port()
        process = start_serve(db, port, keyword_only=args.keyword_only)
        try:
            wait_for_port(port, process)
            started = proc_memory(process.pid)
            report.add(f"serve started ({'no model' if args.keyword_only else 'model loaded'}, index open)",
                       f"RSS {started['VmRSS']:.0f} MiB")
            url = f"http://127.0.0.1:{port}/mcp"
            queries = [q for qs in query_sets().values() for q in qs]
            answered = await ask(url, queries, 8)
            after = proc_memory(process.pid)
            report.add(f"after {answered} find_tool calls from 8 concurrent MCP clients",
                       f"RSS {after['VmRSS']:.0f} MiB, peak {after['VmHWM']:.0f} MiB",
                       f"peak < {TARGET_MB} MB", after["VmHWM"] * 1.048576 < TARGET_MB)
        finally:
            stop_process(process)
            if process.returncode not in (0, -signal.SIGTERM) and process.stderr is not None:
                print(process.stderr.read().decode()[-2000:], file=sys.stderr)
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
