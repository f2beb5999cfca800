"""Abandoned MCP sessions: memory of the serving process and a new caller's initialize.

Starts ``mcp-optimizer serve`` on a small index with static tokens (52 callers) as a separate
process, once with the session bounds out of reach ("unbounded": what every abandoned session
costs) and once with the defaults ("bounded": idle 300 s, 64 sessions per caller, 1,000 in all).
In each run hostile clients open sessions with one raw ``initialize`` each and walk away:

1. one caller opens ``--sessions`` sessions (default 10,000, the figure of issue 10);
2. 50 other callers open 60 each (3,000 more: past the 1,000 cap, so the bounded run closes the
   largest holders' idle sessions);

then a new caller's ``initialize`` is timed (20 samples). RSS is ``VmRSS`` of the serve process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx2

from bench.common import (
    Report,
    base_parser,
    load_embedder,
    ms_summary,
    print_header,
    real_tools,
    temp_index,
    unique_by_name,
)
from bench.harness import proc_memory, start_serve, stop_process, wait_for_port
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import WorkloadSpec
from tests.support.ports import free_port

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}
CALLERS = 52
UNBOUNDED = {"SESSIONS_PER_IDENTITY": "1000000", "MAX_SESSIONS": "1000000", "SESSION_IDLE_TIMEOUT": "1800"}


def token(i: int) -> str:
    return f"bench-token-{i:03d}-0123456789abcdef"


def start_limited_serve(db: Path, port: int, limits: dict[str, str]) -> subprocess.Popen[bytes]:
    """``mcp-optimizer serve`` with a token for each caller and the session ``limits``."""
    document = json.dumps({"tokens": [{"name": f"caller-{i}", "token": token(i)} for i in range(CALLERS)]})
    return start_serve(db, port, {"MCP_OPTIMIZER_AUTH_TOKENS": document,
                                  **{f"MCP_OPTIMIZER_{k}": v for k, v in limits.items()}})


async def abandon(http: httpx2.AsyncClient, url: str, caller: int, count: int) -> Counter[int]:
    """``count`` initialize requests as ``caller``, 50 at a time; the sessions are never closed."""
    statuses: Counter[int] = Counter()
    headers = {**HEADERS, "Authorization": f"Bearer {token(caller)}"}
    for start in range(0, count, 50):
        answers = await asyncio.gather(
            *(http.post(url, json=INIT, headers=headers) for _ in range(min(50, count - start)))
        )
        statuses.update(a.status_code for a in answers)
    return statuses


async def run(db: Path, label: str, limits: dict[str, str], sessions: int, report: Report) -> None:
    port = free_port()
    process = start_limited_serve(db, port, limits)
    try:
        wait_for_port(port, process)
        pid = process.pid
        url = f"http://127.0.0.1:{port}/mcp"
        limits_ = httpx2.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx2.AsyncClient(timeout=60, limits=limits_) as http:
            await abandon(http, url, CALLERS - 1, 1)  # warm up the first session's code paths
            base = proc_memory(pid)["VmRSS"]
            started = time.perf_counter()
            hog = await abandon(http, url, 0, sessions)
            hog_seconds = time.perf_counter() - started
            after_hog = proc_memory(pid)["VmRSS"]
            others: Counter[int] = Counter()
            for caller in range(1, 51):
                others += await abandon(http, url, caller, 60)
            after_all = proc_memory(pid)["VmRSS"]
            newcomer = []
            answered: Counter[int] = Counter()
            for _ in range(20):
                t0 = time.perf_counter()
                answer = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token(51)}"})
                newcomer.append(time.perf_counter() - t0)
                answered[answer.status_code] += 1
        opened_hog = hog[200]
        report.add(
            f"{label}: one caller opens {sessions} sessions",
            f"{dict(hog)} in {hog_seconds:.1f} s; RSS {base:.0f} → {after_hog:.0f} MiB "
            f"(+{after_hog - base:.0f} MiB, {(after_hog - base) * 1024 / max(opened_hog, 1):.1f} KiB per open session)",
        )
        report.add(
            f"{label}: then 50 callers open 60 each",
            f"{dict(others)}; RSS {after_all:.0f} MiB (+{after_all - base:.0f} MiB over the start)",
        )
        report.add(
            f"{label}: a new caller's initialize afterwards",
            f"{dict(answered)}; {ms_summary(newcomer)}",
            "200, every time",
            answered == Counter({200: 20}),
        )
    finally:
        stop_process(process)


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sessions", type=int, help="sessions the first caller opens (default 10000; --quick 1000)")
    args = parser.parse_args()
    sessions = args.sessions or (1000 if args.quick else 10_000)
    print_header("Abandoned MCP sessions: memory and a new caller's initialize", args)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="mcp-bench-sessions-") as tmp:
        db = Path(tmp) / "index.db"
        async with temp_index(load_embedder(), db) as indexer:
            await indexer.apply_workload(
                WorkloadSpec("team/tools", "tools", url="https://tools.example.com/mcp", namespace="team",
                             status=WorkloadStatus.RUNNING, tools=unique_by_name(real_tools())[:20])
            )
        await run(db, "unbounded", UNBOUNDED, sessions, report)
        await run(db, "bounded (defaults)", {}, sessions, report)
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
