"""Opening the index: an async SQLAlchemy engine over SQLite with sqlite-vec loaded, or over
PostgreSQL with pgvector when the index is given as a database URL (:func:`create_engine`).

The standard library's ``sqlite3`` is often built without extension loading (pyenv's, macOS
system Pythons); then the ``pysqlite3`` module (from ``pysqlite3-binary``) provides one that
can. SQLAlchemy's ``async_creator`` hands aiosqlite a connection made by whichever module
works, and :class:`_AiosqliteDbapi` makes SQLAlchemy recognise that module's exceptions so
integrity errors still arrive as :class:`sqlalchemy.exc.IntegrityError`.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any

import aiosqlite
import sqlite_vec
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from mcp_optimizer.errors import McpOptimizerError
from mcp_optimizer.redaction import redact_url

#: What the layers above pass around without importing SQLAlchemy (only db/ may: .importlinter):
#: the index's engine, a connection (a transaction the Indexer spans several ops calls with),
#: and the error any statement may raise (a full disk, a damaged file, a server gone).
Engine = AsyncEngine
Connection = AsyncConnection
DatabaseError = DBAPIError

BUSY_TIMEOUT_MS = 10_000
#: Execution option marking a transaction that will write: see ``_begin`` in :func:`create_engine`.
WRITE_OPTION = "mcp_optimizer_write"


class IndexOpenError(McpOptimizerError, RuntimeError):
    """The index file cannot be opened or sqlite-vec cannot be loaded (or, on PostgreSQL, the
    URL is not one, or the server does not answer)."""


#: The drivers a PostgreSQL index may be reached with (SQLAlchemy URL schemes).
POSTGRES_DRIVERS = ("postgresql+psycopg", "postgresql+asyncpg")


def is_database_url(location: Path | str) -> bool:
    """Whether ``location`` (``--db``, ``MCP_OPTIMIZER_DB``) is a database URL rather than a file."""
    return isinstance(location, str) and "://" in location


def describe_location(location: Path | str) -> str:
    """How errors and logs name the index: the file, or the URL without its password."""
    if not is_database_url(location):
        return str(location)
    try:
        url = make_url(str(location))
    except ArgumentError:
        return redact_url(str(location))
    host = url.host or (url.query.get("host") or "local socket")
    return f"{url.drivername}://{host if isinstance(host, str) else host[0]}" + (
        f":{url.port}" if url.port else "") + f"/{url.database or ''}"


def postgres_url(location: str) -> URL:
    """The SQLAlchemy URL of a PostgreSQL index, or a clear :class:`IndexOpenError`."""
    try:
        url = make_url(location)
    except ArgumentError:
        # The text may hold a password: never echo it whole.
        raise IndexOpenError(f"the index URL {redact_url(location)!r} is not a database URL") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in POSTGRES_DRIVERS:
        raise IndexOpenError(f"the index URL {describe_location(location)!r} names driver {url.drivername!r}: "
                             f"use one of {', '.join(POSTGRES_DRIVERS)}, or a file path for SQLite")
    if not url.database:
        raise IndexOpenError(f"the index URL {describe_location(location)!r} names no database")
    return url


@functools.cache
def sqlite_module() -> ModuleType:
    """The DB-API module whose connections can load extensions."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        import pysqlite3.dbapi2 as pysqlite3_dbapi
    except ImportError as exc:  # pragma: no cover - depends on the platform
        raise IndexOpenError(
            "this Python's sqlite3 cannot load extensions and pysqlite3 is not installed: "
            "pip install pysqlite3-binary"
        ) from exc
    module: ModuleType = pysqlite3_dbapi
    return module


def connect_sync(path: Path | str, *, mmap_size: int = 0, max_bytes: int = 0) -> Any:
    """A plain DB-API connection with sqlite-vec loaded and the index's pragmas applied.

    ``max_bytes`` > 0 caps the file (``max_page_count``): a write that would grow it past the cap
    fails with SQLITE_FULL, as on a full disk, and the operator waits for space (it never deletes
    what the cluster says to keep).
    """
    module = sqlite_module()
    conn = module.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
    except Exception as exc:
        conn.close()
        raise IndexOpenError(f"cannot load sqlite-vec into SQLite: {exc}") from exc
    # WAL lets searches read while the operator writes; foreign keys are off by default.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if mmap_size > 0:
        # sqlite-vec's KNN scans every vector chunk; through memory-mapped I/O instead of read()
        # it runs about 1.5x faster (20,000 vectors: 11.8 -> 8.0 ms). Off by default: each pooled
        # connection maps the file separately and RSS counts the shared pages once per mapping
        # (a 130 MB index and 8 busy connections read as 800 MB RSS, though the kernel holds
        # one copy).
        conn.execute(f"PRAGMA mmap_size={int(mmap_size)}")
    if max_bytes > 0:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // page_size)}")
    return conn


class _AiosqliteDbapi(AsyncAdapt_aiosqlite_dbapi):
    """aiosqlite's adapter, with exception classes taken from the module that made the connection."""

    def _init_dbapi_attributes(self) -> None:
        super()._init_dbapi_attributes()
        for name in (
            "DatabaseError",
            "Error",
            "IntegrityError",
            "NotSupportedError",
            "OperationalError",
            "ProgrammingError",
            "sqlite_version",
            "sqlite_version_info",
        ):
            setattr(self, name, getattr(self.sqlite, name))


def create_engine(path: Path | str, *, mmap_size: int = 0, max_bytes: int = 0, echo: bool = False) -> AsyncEngine:
    """An async engine on the index file, or on the PostgreSQL database a URL names (not yet
    migrated: see :meth:`mcp_optimizer.ingest.Indexer.open`). ``mmap_size`` and ``max_bytes``
    are SQLite's; a PostgreSQL database's size is the DBA's business (quotas, disk)."""
    if is_database_url(path):
        return create_postgres_engine(str(path), echo=echo)
    path = Path(path)
    if str(path) == ":memory:":
        raise IndexOpenError("the index must be a file: in-memory databases are per-connection")
    if path.parent and not path.parent.exists():
        raise IndexOpenError(f"directory {path.parent} does not exist")

    async def creator() -> aiosqlite.Connection:
        connection = aiosqlite.Connection(
            lambda: connect_sync(path, mmap_size=mmap_size, max_bytes=max_bytes), iter_chunk_size=64
        )
        connection._thread.daemon = True  # never keep the interpreter alive at exit
        return await connection

    engine = create_async_engine(
        "sqlite+aiosqlite://",
        async_creator=creator,
        module=_AiosqliteDbapi(aiosqlite, sqlite_module()),
        echo=echo,
        # The URL names no file (the creator opens it), so say explicitly that this is a real,
        # shareable file database and not the per-connection in-memory one.
        poolclass=AsyncAdaptedQueuePool,
        pool_size=4,
        max_overflow=4,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE) so a concurrent writer in
        # another process waits on busy_timeout instead of failing at once on a lock upgrade;
        # readers use a plain deferred BEGIN and never block anyone under WAL.
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_postgres_engine(location: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine on a PostgreSQL database (with pgvector: the migrations create the extension).

    Transactions are PostgreSQL's own (READ COMMITTED; writers are serialised by the Indexer's
    write scheduler in this process, and by row locks between processes), so ``WRITE_OPTION``
    means nothing here.
    """
    url = postgres_url(location)
    # pool_pre_ping: a pooled connection that the server (or a failover) closed is replaced
    # before use instead of failing one search.
    return create_async_engine(url, echo=echo, pool_size=4, max_overflow=4, pool_pre_ping=True,
                               hide_parameters=True)
