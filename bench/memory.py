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
import signal
import sys
import tempfile
from pathlib import Path

from bench.common import Report, base_parser, build_replica_index, load_embedder, print_header, temp_index
from bench.harness import mcp_session, proc_memory, start_serve, stop_process, wait_for_port
from bench.search import query_sets
from tests.support.ports import free_port

TARGET_MB = 600


async def ask(url: str, queries: list[str], clients: int) -> int:
    """Send ``find_tool`` for every query from ``clients`` concurrent MCP sessions."""
    answered = 0

    async def client(mine: list[str]) -> None:
        nonlocal answered
        async with mcp_session(url) as session:
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
        process = start_serve(db, port, {"MCP_OPTIMIZER_SEARCH_MODE": "bm25" if args.keyword_only else "hybrid"})
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
