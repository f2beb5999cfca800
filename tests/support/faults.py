"""Real faults of an index file, for tests and benchmarks (nothing here is a mock).

* :func:`corrupt_header`: garbage over the first 100 bytes (the SQLite header): "file is not a
  database" on open.
* :func:`corrupt_pages`: garbage over the root page of every table and index after a checkpoint,
  so the next read of them fails with SQLITE_CORRUPT ("database disk image is malformed"); page 1
  (the schema) is left alone so the file still opens, and the header is then rewritten through
  SQLite so that open connections drop the pages they cached.
* :func:`not_a_database`, :func:`wrong_schema`: a text file; a database of another program, or of
  an index revision this version does not know.
* :class:`FullDisk`: a directory whose file system can be filled and freed again: a real
  ``tmpfs`` when this process may mount one (root), otherwise an ordinary directory where the
  index is capped with ``MCP_OPTIMIZER_INDEX_MAX_BYTES`` (SQLite's ``max_page_count``) and filled
  with a ballast table. Either way the index gets a real SQLITE_FULL from real SQLite.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mcp_optimizer.db.engine import connect_sync

#: Bytes of the SQLite header (https://sqlite.org/fileformat.html).
HEADER_BYTES = 100


def checkpoint(path: Path) -> None:
    """Move everything from the WAL into the database file (so that damage to the file is seen)."""
    conn = connect_sync(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def corrupt_header(path: Path, *, seed: int = 1) -> None:
    checkpoint(path)
    garbage = random.Random(seed).randbytes(HEADER_BYTES)
    with path.open("r+b") as f:
        f.write(garbage)


def corrupt_pages(path: Path, *, seed: int = 2) -> int:
    """Overwrite the root page of every table and index (the schema on page 1 stays readable, so
    the file opens and every query of the data fails); returns how many pages were damaged."""
    checkpoint(path)
    conn = connect_sync(path)
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        roots = sorted({int(row[0]) for row in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE rootpage > 1")})
    finally:
        conn.close()
    rng = random.Random(seed)
    with path.open("r+b") as f:
        for page in roots:
            f.seek((page - 1) * page_size)
            f.write(rng.randbytes(page_size))
    _bump_change_counter(path)
    return len(roots)


def _bump_change_counter(path: Path) -> None:
    """Write page 1 only (the header's user_version): every connection's next read transaction
    sees a new database and reads pages from the file again instead of its cache."""
    conn = connect_sync(path)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.commit()
    finally:
        conn.close()


def not_a_database(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_text("this is not a database\n" * 200)


def wrong_schema(path: Path, *, revision: str | None = None) -> None:
    """Replace the file by another program's database, or (``revision``) stamp an unknown schema
    revision into it, as a newer version of this program would have written."""
    if revision is not None:
        conn = connect_sync(path)
        try:
            conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
            conn.commit()
        finally:
            conn.close()
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = connect_sync(path)
    try:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        conn.execute("INSERT INTO invoices (customer, total) VALUES ('acme', 12.5)")
        conn.commit()
    finally:
        conn.close()


def remove_index(path: Path) -> None:
    """Delete the index file and its WAL and shared-memory files (under a running process)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def can_mount_tmpfs(probe_dir: Path) -> bool:
    probe_dir.mkdir(parents=True, exist_ok=True)
    target = probe_dir / "tmpfs-probe"
    target.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)],
                             capture_output=True, check=False).returncode == 0
    if mounted:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)
    target.rmdir()
    return mounted


class FullDisk:
    """A directory for an index whose file system can be filled (:meth:`fill`) and freed (:meth:`free`).

    ``kind`` ``"tmpfs"``: a real tmpfs of ``size`` bytes; filling writes a ballast file over all
    free space. ``kind`` ``"page-limit"``: the index is capped at ``size`` bytes (pass
    :attr:`settings` / :attr:`env` to the operator) and filling adds a ballast table to the index
    file up to the cap. ``kind`` None picks tmpfs when this process can mount one.
    """

    def __init__(self, base: Path, *, size: int = 64 * 1024 * 1024, kind: str | None = None) -> None:
        self.base = base
        self.size = size
        self.kind = kind or ("tmpfs" if can_mount_tmpfs(base) else "page-limit")
        self.dir = base / "disk"
        self._mounted = False

    @property
    def settings(self) -> dict[str, Any]:
        """Settings changes the index needs on this disk."""
        return {"index_max_bytes": self.size} if self.kind == "page-limit" else {}

    @property
    def env(self) -> dict[str, str]:
        return {"MCP_OPTIMIZER_INDEX_MAX_BYTES": str(self.size)} if self.kind == "page-limit" else {}

    def __enter__(self) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.dir)],
                           check=True, capture_output=True)
            self._mounted = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.dir)], check=False, capture_output=True)
            self._mounted = False

    def fill(self, index: Path) -> None:
        """Leave (almost) no room for the index to grow.

        The WAL is emptied first: SQLite reuses a WAL file's space after a checkpoint, so without
        this the next writes could still fit in space taken before the disk filled up.
        """
        checkpoint(index)
        if self.kind == "tmpfs":
            stat = os.statvfs(self.dir)
            free = stat.f_bavail * stat.f_frsize
            with (self.dir / "ballast").open("wb") as f:
                chunk = b"\0" * (1024 * 1024)
                while free > 0:
                    try:
                        written = f.write(chunk[: min(len(chunk), free)])
                        f.flush()
                    except OSError:
                        break
                    free -= written
            return
        conn = connect_sync(index)  # no cap on this connection: it grows the file up to the cap
        try:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute("CREATE TABLE IF NOT EXISTS ballast (payload BLOB)")
            while int(conn.execute("PRAGMA page_count").fetchone()[0]) * page_size < self.size:
                conn.execute("INSERT INTO ballast VALUES (zeroblob(262144))")
                conn.commit()
        finally:
            conn.close()

    def free(self, index: Path) -> None:
        """Give the room back."""
        if self.kind == "tmpfs":
            (self.dir / "ballast").unlink(missing_ok=True)
            return
        conn = connect_sync(index)
        try:
            conn.execute("DROP TABLE IF EXISTS ballast")
            conn.commit()
        finally:
            conn.close()
