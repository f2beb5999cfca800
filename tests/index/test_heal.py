"""The index as a cache: damaged, full or vanished files are recognised, reported and replaced.

Every fault is real (see :mod:`tests.support.faults`): garbage written into the file, a
text file, another program's database, a full tmpfs (or SQLite's page cap where this process
cannot mount one), a file deleted under the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from mcp_optimizer.config import Settings
from mcp_optimizer.db.health import (
    FaultKind,
    IndexDamagedError,
    classify,
    damaged_copies,
    inspect_file,
    move_aside,
)
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import SearchMode, ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.ingest import Indexer
from tests.support import faults
from tests.support.backends import sqlite_only
from tests.support.shared import model_path

from .helpers import entry, tool, workload

# Damaged pages, a bad header, a full disk, a file deleted or moved aside: the SQLite file's
# faults. On PostgreSQL the database is the DBA's (no file to check or move); what the operator
# does there is tested in test_postgres.py.
pytestmark = sqlite_only

TOOLS = [tool("create_issue", "Create a new issue in a GitHub repository"),
         tool("list_pulls", "List the pull requests of a repository")]


async def filled(settings: Settings, embedder: Embedder) -> None:
    """An index with a catalog and a running workload, closed again."""
    indexer = await Indexer.open(settings, embedder)
    await indexer.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server",
                                           tools=["create_issue"])])
    await indexer.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v1", tools=TOOLS))
    await indexer.close()


DAMAGES: dict[str, Callable[[Path], object]] = {
    "bad header": faults.corrupt_header,
    "corrupt pages": faults.corrupt_pages,
    "not a database": faults.not_a_database,
    "another program's database": faults.wrong_schema,
    "a newer schema revision": lambda path: faults.wrong_schema(path, revision="9999_from_the_future"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
async def test_check_recognises_each_damage(settings: Settings, embedder: Embedder, damage: str) -> None:
    await filled(settings, embedder)
    assert inspect_file(settings.db_path) is None
    DAMAGES[damage](settings.db_path)
    fault = inspect_file(settings.db_path)
    assert fault is not None and fault.kind is FaultKind.CORRUPT, fault
    assert fault.kind.needs_rebuild


@pytest.mark.parametrize("damage", list(DAMAGES))
async def test_open_with_repair_moves_the_file_aside_and_starts_anew(
    settings: Settings, embedder: Embedder, damage: str
) -> None:
    await filled(settings, embedder)
    DAMAGES[damage](settings.db_path)
    damaged_bytes = settings.db_path.read_bytes()

    indexer = await Indexer.open(settings, embedder, repair=True)
    try:
        assert indexer.repaired is not None and indexer.repaired.fault.kind is FaultKind.CORRUPT
        # Kept for forensics, byte for byte.
        moved = indexer.repaired.moved_to
        assert moved is not None and moved.read_bytes() == damaged_bytes
        assert damaged_copies(settings.db_path) == [moved]
        # The new index is empty and fully usable.
        assert await indexer.workload_names() == set()
        await indexer.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v1", tools=TOOLS))
        hits = await ToolSearch(indexer.engine, embedder).find_tools("open an issue on github")
        assert hits and hits[0].tool == "create_issue"
    finally:
        await indexer.close()
    assert inspect_file(settings.db_path) is None


@pytest.mark.parametrize("damage", ["bad header", "another program's database", "a newer schema revision"])
async def test_open_without_repair_refuses_with_one_clear_line(
    settings: Settings, embedder: Embedder, damage: str
) -> None:
    await filled(settings, embedder)
    DAMAGES[damage](settings.db_path)
    before = settings.db_path.read_bytes()
    with pytest.raises(IndexDamagedError) as caught:
        await Indexer.open(settings, embedder)
    message = str(caught.value)
    assert str(settings.db_path) in message and "\n" not in message
    assert settings.db_path.read_bytes() == before  # nothing touched: the CLI's index is a person's
    assert damaged_copies(settings.db_path) == []


def test_only_the_newest_damaged_copies_are_kept(tmp_path: Path) -> None:
    index = tmp_path / "index.db"
    kept = []
    for n in range(4):
        index.write_bytes(f"damaged {n}".encode())
        Path(f"{index}-wal").write_bytes(b"wal")
        moved = move_aside(index, keep=2)
        assert moved is not None and not index.exists() and not Path(f"{index}-wal").exists()
        kept.append(moved)
    assert damaged_copies(index) == kept[-2:]
    assert [p.read_bytes() for p in kept[-2:]] == [b"damaged 2", b"damaged 3"]
    assert all(Path(f"{p}-wal").exists() for p in kept[-2:])
    assert not any(Path(f"{p}-wal").exists() for p in kept[:2])
    index.write_bytes(b"damaged 4")
    assert move_aside(index, keep=0) is None
    assert damaged_copies(index) == [] and not index.exists()


async def test_corruption_at_run_time_is_reported_and_rebuild_replaces_the_file(
    settings: Settings, embedder: Embedder
) -> None:
    await filled(settings, embedder)
    indexer = await Indexer.open(settings, embedder, repair=True)
    search = ToolSearch(indexer.engine, embedder)
    try:
        assert await search.find_tools("open an issue on github")
        assert indexer.health.healthy
        faults.corrupt_pages(settings.db_path)
        with pytest.raises(DBAPIError) as caught:
            await search.find_tools("list pull requests")
        assert classify(caught.value) is not None
        fault = indexer.health.fault
        assert fault is not None and fault.kind is FaultKind.CORRUPT
        # SQLite's words, no SQL. Which words depends on the page hit: a damaged b-tree page is
        # "malformed", a damaged FTS5 shadow table fails the "vtable constructor".
        assert any(words in fault.message for words in ("malformed", "vtable constructor failed"))
        assert "SELECT" not in fault.message

        repair = await indexer.rebuild(fault)
        assert repair.moved_to is not None and repair.moved_to.exists()
        assert inspect_file(settings.db_path) is None
        indexer.health.clear()
        # The new file is empty and works; errors of connections to the old file are not reported.
        assert await search.find_tools("open an issue on github") == []
        await indexer.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v1", tools=TOOLS))
        assert [h.tool for h in await search.find_tools("open an issue on github")][:1] == ["create_issue"]
        assert indexer.health.healthy
    finally:
        await indexer.close()


@pytest.mark.parametrize("mode", ["bm25", "vector", "hybrid"])
async def test_each_retriever_reports_a_damaged_index_as_corrupt(
    settings: Settings, embedder: Embedder, mode: SearchMode
) -> None:
    """FTS5 says SQLITE_CORRUPT, sqlite-vec a plain SQLITE_ERROR in its own words ("chunks iter
    error"): either way the fault is recognised, so the endpoint says the index cannot be read
    (not "internal error") and the operator repairs it. Hybrid search runs both at once, so which
    one fails first varies: all three modes must be recognised."""
    await filled(settings, embedder)
    indexer = await Indexer.open(settings, embedder, repair=True)
    search = ToolSearch(indexer.engine, embedder)
    try:
        assert await search.find_tools("open an issue on github", mode=mode)
        faults.corrupt_pages(settings.db_path)
        with pytest.raises(DBAPIError) as caught:
            await search.find_tools("list pull requests", mode=mode)
        fault = classify(caught.value)
        assert fault is not None and fault.kind is FaultKind.CORRUPT, caught.value
    finally:
        await indexer.close()


async def test_a_file_deleted_under_the_process_is_noticed(settings: Settings, embedder: Embedder) -> None:
    await filled(settings, embedder)
    indexer = await Indexer.open(settings, embedder, repair=True)
    try:
        assert indexer.file_fault() is None
        faults.remove_index(settings.db_path)
        # SQLite itself notices nothing: writes go on into the deleted file...
        assert await indexer.set_workload_status("ns/gh", WorkloadStatus.STOPPED)
        fault = indexer.file_fault()
        assert fault is not None and fault.kind is FaultKind.REPLACED and "deleted" in fault.message
        # ... and a file put in its place is not the one opened either.
        settings.db_path.write_bytes(b"")
        fault = indexer.file_fault()
        assert fault is not None and "replaced" in fault.message
        await indexer.rebuild(fault)
        assert indexer.file_fault() is None
        assert await indexer.workload_names() == set()
    finally:
        await indexer.close()


def _full_disk_kinds() -> list[str]:
    """Both ways of filling a disk where this process can mount a tmpfs, else the page cap."""
    return ["tmpfs", "page-limit"] if faults.can_mount_tmpfs(Path(os.environ.get("TMPDIR", "/tmp"))) else ["page-limit"]


@pytest.mark.parametrize("kind", _full_disk_kinds())
async def test_a_full_disk_fails_writes_and_recovers_when_space_returns(
    tmp_path: Path, settings: Settings, embedder: Embedder, kind: str
) -> None:
    with faults.FullDisk(tmp_path, size=16 * 1024 * 1024, kind=kind) as disk:
        settings = replace(settings, db_path=disk.dir / "index.db", **disk.settings)
        indexer = await Indexer.open(settings, embedder, repair=True)
        try:
            await indexer.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server",
                                                   tools=["create_issue"])])
            await indexer.apply_workload(workload("ns/a", package="ghcr.io/acme/a:1", tools=TOOLS[:1]))
            disk.fill(settings.db_path)
            big = [tool(f"tool_{i}", "A tool whose description is long " * 40) for i in range(200)]
            with pytest.raises(DBAPIError) as caught:
                await indexer.apply_workload(workload("ns/b", package="ghcr.io/acme/b:1", tools=big))
            assert classify(caught.value) is not None and classify(caught.value).kind is FaultKind.FULL  # type: ignore[union-attr]
            assert indexer.health.fault is not None and indexer.health.fault.kind is FaultKind.FULL
            # Nothing half-written, nothing else lost.
            assert await indexer.workload_names() == {"ns/a"}
            assert await indexer.catalog_names() == {"c"}

            disk.free(settings.db_path)
            # The same engine and connections work again: no restart, no reopen.
            result = await indexer.apply_workload(workload("ns/b", package="ghcr.io/acme/b:1", tools=big))
            assert result.tool_count == 200
            assert await indexer.workload_names() == {"ns/a", "ns/b"}
        finally:
            await indexer.close()


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCP_OPTIMIZER_DB": str(db), "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path())}
    return subprocess.run([sys.executable, "-m", "mcp_optimizer", *args], capture_output=True, text=True,
                          env=env, timeout=300)


async def test_cli_reports_a_damaged_index_in_one_line(settings: Settings, embedder: Embedder, tmp_path: Path) -> None:
    await filled(settings, embedder)
    ok = _cli(settings.db_path, "db", "check")
    assert ok.returncode == 0 and "ok (quick check" in ok.stdout
    faults.corrupt_pages(settings.db_path)
    check = _cli(settings.db_path, "db", "check", "--full")
    assert check.returncode == 1 and ": corrupt: " in check.stdout and "full check" in check.stdout
    search = _cli(settings.db_path, "search", "open an issue")
    assert search.returncode == 1
    assert search.stderr.startswith("error: ") and len(search.stderr.strip().splitlines()) == 1
    assert "Traceback" not in search.stderr and "malformed" in search.stderr
    faults.corrupt_header(settings.db_path)
    servers = _cli(settings.db_path, "servers")
    assert servers.returncode == 1 and "Traceback" not in servers.stderr
    assert "cannot be used (file is not a database)" in servers.stderr
