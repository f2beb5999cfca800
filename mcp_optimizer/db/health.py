"""The index is a cache of the cluster: telling when its file is damaged, full or gone.

Everything the index holds can be rebuilt (catalogs from their ConfigMaps, workloads from their
MCPServers and a ``tools/list``), so the operator never stops for a bad file: it moves the file
aside for forensics and starts a new one. This module is the database side of that:

* :func:`classify` turns an SQLite error into an :class:`IndexFault` of one of four kinds, by
  SQLite's own result code (never by the SQL text, which is never shown: its parameters are
  user data);
* :func:`inspect_file` checks a file before it is used: it opens, passes ``PRAGMA quick_check``
  (or ``integrity_check``) and holds this program's schema;
* :func:`move_aside` renames a damaged file (with its ``-wal`` and ``-shm``) to
  ``<name>.damaged-<UTC time>``, keeping only the newest few;
* :class:`IndexHealth` is what the process knows right now: healthy, or the fault last seen.
  :func:`watch_engine` reports every classified error that passes through the engine.

What happens next (rebuild, wait for space, readiness) is the operator's business:
:mod:`mcp_optimizer.operator.healing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_optimizer.db.engine import IndexOpenError, connect_sync

logger = logging.getLogger(__name__)

#: SQLite primary result codes (the low byte of an extended code), https://sqlite.org/rescode.html
SQLITE_ERROR = 1
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

#: How ``inspect_file`` checks a file: ``quick`` (``PRAGMA quick_check``: every page and b-tree,
#: not whether indexes match their tables) or ``full`` (``integrity_check``), or ``off``. On a
#: 223 MB index (5,000 catalog entries, 20,000 workload tools) quick took 0.57 s warm and 2.2 s
#: with the file out of the page cache, full 0.88 s and 3.1 s (``python -m bench.index_check``).
CHECK_MODES = ("quick", "full", "off")
#: The suffix of moved-aside files: ``index.db.damaged-20261201T101500.123456Z``.
DAMAGED_SUFFIX = ".damaged-"


class FaultKind(StrEnum):
    """What went wrong with the index file, by what it takes to recover."""

    #: Damaged pages, a bad header, not a database, a wrong schema: only a new file helps.
    CORRUPT = "corrupt"
    #: The file was deleted or replaced under the process: writes go to a file nobody will see.
    REPLACED = "replaced"
    #: No space (the disk, or the index's size limit): recovers once space is freed.
    FULL = "full"
    #: Input/output errors, a read-only file or directory: recovers once the cause goes away.
    IO = "io"

    @property
    def needs_rebuild(self) -> bool:
        return self in (FaultKind.CORRUPT, FaultKind.REPLACED)


@dataclass(frozen=True)
class IndexFault:
    """A fault of the index file: its kind and a message that is safe to show anywhere (SQLite's
    own text, or ours; never SQL or its parameters)."""

    kind: FaultKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


class IndexDamagedError(IndexOpenError):
    """The index file cannot be used as it is (raised where nothing may repair it: the CLI)."""

    def __init__(self, path: Path, fault: IndexFault) -> None:
        self.path = path
        self.fault = fault
        super().__init__(
            f"index {path} cannot be used ({fault.message}); it is a cache: move it aside or delete it, "
            "then load the catalogs and workloads again"
        )


_BY_CODE = {
    SQLITE_CORRUPT: FaultKind.CORRUPT,
    SQLITE_NOTADB: FaultKind.CORRUPT,
    SQLITE_FULL: FaultKind.FULL,
    SQLITE_IOERR: FaultKind.IO,
    SQLITE_CANTOPEN: FaultKind.IO,
    SQLITE_READONLY: FaultKind.IO,
}
#: For DB-API modules that do not expose result codes (Python < 3.11's sqlite3).
_BY_MESSAGE = (
    ("malformed", FaultKind.CORRUPT),
    ("not a database", FaultKind.CORRUPT),
    ("disk is full", FaultKind.FULL),
    ("disk i/o error", FaultKind.IO),
    ("unable to open database", FaultKind.IO),
    ("readonly database", FaultKind.IO),
)
#: sqlite-vec reports a damaged shadow table (its chunks, vectors or metadata) as a plain
#: SQLITE_ERROR in its own words. Measured: every root page overwritten (``faults.corrupt_pages``)
#: fails a KNN query with "chunks iter error" (code 1), while FTS5 and the base tables say
#: SQLITE_CORRUPT. Only errors of reading stored rows are listed: they mean damage, not a bug.
_VEC0_DAMAGE = ("chunks iter error", "could not fetch vector data", "could not extract metadata value")


def classify(exc: BaseException) -> IndexFault | None:
    """The index fault an exception shows, or None when it is not one (a constraint, a bug, ...)."""
    original: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = str(original.args[0]) if original.args else type(original).__name__
    code = getattr(original, "sqlite_errorcode", None)
    if isinstance(code, int):
        kind = _BY_CODE.get(code & 0xFF)
        if kind is None and code & 0xFF == SQLITE_ERROR and any(n in message.lower() for n in _VEC0_DAMAGE):
            kind = FaultKind.CORRUPT
        return IndexFault(kind, message) if kind is not None else None
    if type(original).__module__.split(".")[0] not in ("sqlite3", "pysqlite3"):
        return None
    lowered = message.lower()
    for needle, kind in _BY_MESSAGE:
        if needle in lowered:
            return IndexFault(kind, message)
    return None


def describe(exc: BaseException) -> str:
    """A one-line description of a database error without its SQL or parameters."""
    fault = classify(exc)
    if fault is not None:
        return fault.message
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(original).__name__}: {original.args[0] if original.args else ''}".rstrip(": ")


# ------------------------------------------------------------------------------ the file


def expected_tables(side_tables: set[str] | None = None) -> set[str]:
    """Tables this program's schema has at the head revision: the base tables and the
    ``side_tables`` beside them (default: SQLite's virtual tables; see ``Backend.side_tables``)."""
    from mcp_optimizer.db.models import Base
    from mcp_optimizer.db.virtual import VIRTUAL_TABLES

    side = set(VIRTUAL_TABLES) if side_tables is None else side_tables
    return set(Base.metadata.tables) | side | {"alembic_version"}


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from mcp_optimizer.db.migrate import alembic_config

    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def inspect_file(path: Path, *, mode: str = "quick") -> IndexFault | None:
    """Whether the file at ``path`` can be used as the index: None when it can (or does not exist
    yet), else the fault. Blocking: call it in a thread."""
    if mode not in CHECK_MODES:
        raise ValueError(f"index check mode must be one of {', '.join(CHECK_MODES)}, got {mode!r}")
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        conn = connect_sync(path)
    except IndexOpenError:
        raise  # sqlite-vec cannot load: not the file's fault
    except Exception as exc:
        return classify(exc) or IndexFault(FaultKind.CORRUPT, f"cannot be opened: {describe(exc)}")
    try:
        if mode != "off":
            pragma = "integrity_check" if mode == "full" else "quick_check"
            rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}(5)").fetchall()]
            if rows != ["ok"]:
                return IndexFault(FaultKind.CORRUPT, f"{pragma} failed: {'; '.join(rows)[:300]}")
        return _schema_fault(conn)
    except Exception as exc:
        return classify(exc) or IndexFault(FaultKind.CORRUPT, f"cannot be read: {describe(exc)}")
    finally:
        conn.close()


def _schema_fault(conn: Any) -> IndexFault | None:
    """A file that is a database but not one this program can migrate: a wrong schema."""
    tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "alembic_version" not in tables:
        ours = expected_tables()
        foreign = sorted(t for t in tables if t not in ours and not t.startswith("sqlite_"))
        if foreign or tables & ours:
            shown = ", ".join(foreign[:5] or sorted(tables & ours)[:5])
            return IndexFault(FaultKind.CORRUPT, f"wrong schema: tables ({shown}) but no schema version")
        return None  # empty: a new index
    revisions = [str(row[0]) for row in conn.execute("SELECT version_num FROM alembic_version")]
    unknown = [r for r in revisions if r not in known_revisions()]
    if len(revisions) != 1 or unknown:
        return IndexFault(FaultKind.CORRUPT, f"wrong schema: revision {', '.join(revisions) or 'none'} is not one "
                          "this version knows (written by a newer version?)")
    return None


def move_aside(path: Path, *, keep: int) -> Path | None:
    """Rename ``path`` (and its ``-wal``, ``-shm``, ``-journal``) to ``<name>.damaged-<UTC time>`` and
    delete all but the newest ``keep`` moved-aside files. ``keep`` 0 deletes at once. Returns the
    new name, or None when nothing was kept."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}")
    moved = False
    for suffix in ("", "-wal", "-shm", "-journal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            if keep > 0:
                os.replace(source, Path(f"{target}{suffix}"))
                moved = True
            else:
                source.unlink()
    prune_damaged(path, keep=keep)
    return target if moved else None


def damaged_copies(path: Path) -> list[Path]:
    """Moved-aside copies of ``path``, oldest first (their names sort by time)."""
    prefix = f"{path.name}{DAMAGED_SUFFIX}"
    return sorted(p for p in path.parent.glob(f"{prefix}*") if not p.name.endswith(("-wal", "-shm", "-journal")))


def prune_damaged(path: Path, *, keep: int) -> None:
    copies = damaged_copies(path)
    for old in copies[: max(0, len(copies) - keep)]:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{old}{suffix}").unlink(missing_ok=True)


@dataclass(frozen=True)
class FileIdentity:
    """Which file a path names (device and inode): a deleted or replaced index changes it."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return cls(stat.st_dev, stat.st_ino)


# ------------------------------------------------------------------------------ the state


class IndexHealth:
    """What the process knows about its index right now: healthy, or the fault last seen.

    ``reports`` counts every fault ever reported, so whoever repairs the index can tell whether a
    new fault happened while it worked. ``epoch`` counts file replacements: connections opened on
    an earlier file report nothing (their errors are about a file no longer in use).
    """

    def __init__(self) -> None:
        self.fault: IndexFault | None = None
        self.reports = 0
        self.epoch = 0
        self.listeners: list[Callable[[IndexFault], None]] = []
        self._changed: asyncio.Event | None = None

    @property
    def healthy(self) -> bool:
        return self.fault is None

    def report(self, fault: IndexFault) -> None:
        """Record a fault; a fault that needs a rebuild outranks one that does not."""
        self.reports += 1
        current = self.fault
        if current is None or (fault.kind.needs_rebuild and not current.kind.needs_rebuild):
            logger.debug("Index fault: %s", fault)  # the repairer logs what it does about it
            self.fault = fault
        for listener in self.listeners:
            listener(fault)
        if self._changed is not None:
            self._changed.set()

    def clear(self) -> None:
        if self.fault is not None:
            logger.info("The index is healthy again (it was %s)", self.fault)
        self.fault = None

    async def wait(self, timeout: float) -> IndexFault | None:
        """The current fault, waiting up to ``timeout`` seconds for one when healthy."""
        if self._changed is None:
            self._changed = asyncio.Event()
        if self.fault is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()
        return self.fault


def watch_engine(engine: AsyncEngine, health: IndexHealth) -> None:
    """Report every index fault raised through ``engine`` (reads, writes, connects) to ``health``."""

    @event.listens_for(engine.sync_engine, "connect")
    def _stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info["index_epoch"] = health.epoch

    @event.listens_for(engine.sync_engine, "handle_error")
    def _report(context: Any) -> None:
        fault = classify(context.original_exception)
        if fault is None:
            return
        connection = context.connection
        if connection is not None and connection.info.get("index_epoch", health.epoch) != health.epoch:
            return  # a connection to a file already replaced
        health.report(fault)
