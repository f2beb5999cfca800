"""The integrity check at start (issue 10, point 6): ``PRAGMA quick_check`` against
``PRAGMA integrity_check`` on a large index.

Builds (once, cached in ``~/.cache/mcp-optimizer/bench``; ``--rebuild`` builds again) an index of
``--entries`` registry servers (default 5,000; the scale catalog of :mod:`bench.common`, 4 tool
names each) and ``--tools`` workload tools (default 20,000; the LiveMCPBench replicas of
:mod:`bench.search`), then times, ``--runs`` times each (median and max):

* ``inspect_file(mode=...)``: what ``mcp-optimizer run`` does before opening the index (open,
  the check, the schema version), for ``quick`` and ``full``;
* the bare pragmas on an open connection, to show where the time goes;
* cold: with the file's pages evicted from the page cache first (``posix_fadvise(DONTNEED)``), as
  after a node restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.common import (
    Report,
    base_parser,
    build_replica_index,
    cache_dir,
    load_embedder,
    print_header,
    scale_catalog,
    temp_index,
)
from mcp_optimizer.db.engine import connect_sync
from mcp_optimizer.db.health import inspect_file


def timed(fn: object, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
        if result not in (None, ["ok"]):
            raise SystemExit(f"the benchmark index failed its check: {result}")
    return samples


def evict(path: Path) -> None:
    """Drop this file's pages from the page cache (only this file: the machine is shared)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def summary(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms (n={len(samples)})"


async def build(path: Path, entries: int, tools: int) -> None:
    embedder = load_embedder()
    catalog = [e.model_copy(update={"tools": e.tools[:4]}) for e in scale_catalog(entries)]
    async with temp_index(embedder, path) as indexer:
        started = time.perf_counter()
        await indexer.load_catalog("bench", catalog)
        workloads, indexed, _ = await build_replica_index(indexer, tools)
        print(f"built {path}: {entries} registry entries, {workloads} workloads with {indexed} tools "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
    conn = connect_sync(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--entries", type=int, help="registry entries (default 5000; --quick 500)")
    parser.add_argument("--tools", type=int, help="workload tools (default 20000; --quick 2000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each check (5)")
    parser.add_argument("--rebuild", action="store_true", help="build the index again")
    args = parser.parse_args()
    entries = args.entries or (500 if args.quick else 5000)
    tools = args.tools or (2000 if args.quick else 20_000)
    print_header(f"Index check at start: quick_check vs integrity_check ({entries} entries, {tools} tools)", args)
    cached = cache_dir() / f"index-check-{entries}-{tools}.db"
    if args.rebuild or not cached.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cached}{suffix}").unlink(missing_ok=True)
        asyncio.run(build(cached, entries, tools))
    # Work on a copy: a check never writes, but the open (WAL mode) may create -wal/-shm files.
    work = cache_dir() / "index-check-work.db"
    shutil.copyfile(cached, work)
    report = Report()
    size_mb = work.stat().st_size / 1e6
    report.add("index file", f"{size_mb:.1f} MB ({entries} registry entries, {tools} workload tools)")
    for mode in ("quick", "full"):
        report.add(f"inspect_file(mode={mode!r}) warm", summary(timed(lambda m=mode: inspect_file(work, mode=m),
                                                                          args.runs)))
    conn = connect_sync(work)
    try:
        for pragma in ("quick_check", "integrity_check"):
            report.add(f"PRAGMA {pragma} alone, warm",
                       summary(timed(lambda p=pragma: [r[0] for r in conn.execute(f"PRAGMA {p}")], args.runs)))
    finally:
        conn.close()
    for mode in ("quick", "full"):
        cold = []
        for _ in range(args.runs):
            evict(work)
            cold += timed(lambda m=mode: inspect_file(work, mode=m), 1)
        report.add(f"inspect_file(mode={mode!r}) cold (the file's pages evicted first)", summary(cold))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    report.print_table()


if __name__ == "__main__":
    main()
