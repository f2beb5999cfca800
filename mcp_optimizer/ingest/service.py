"""The Indexer: the one entry point that writes the index.

Every write follows the same two phases so that slow embedding never holds the write lock:

1. *plan* without the lock: work out what the index should hold (matches, tool texts) and
   run the texts that are not stored yet through the model, which fills its cache;
2. *apply* under the lock, in one transaction: plan again from the committed state (a catalog
   may have changed meanwhile), embed whatever is still missing (normally nothing: cache
   hits), and write rows, vectors and FTS rows together. A catalog, which can hold thousands
   of entries, is applied in many short transactions instead, each checking that the rows it
   was planned from are still the committed ones (:meth:`Indexer.load_catalog`).

So the final state never depends on the order in which concurrent changes arrived, and a pod
phase change (:meth:`Indexer.set_workload_status`) waits for at most one short transaction:
writes take the lock through a :class:`~mcp_optimizer.ingest.scheduler.WriteScheduler` that
serves status changes first, and a catalog is written in chunks of at most
``catalog_chunk_seconds`` each (see :meth:`Indexer.load_catalog`).

The Indexer also owns the index file's health (:class:`~mcp_optimizer.db.health.IndexHealth`):
every SQLite error through its engine is classified there, :meth:`Indexer.open` can replace a file
that cannot be used, and :meth:`Indexer.rebuild` replaces it at run time.

Without an embedder (keyword-only mode, ``MCP_OPTIMIZER_SEARCH_MODE=bm25``) the same writes
store no new vectors; the index then forgets which model made the vectors it still has, so the
next start with a model re-embeds everything once (:meth:`Indexer.ensure_embedding_model`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcp_optimizer.catalog import CatalogEntry, normalize_image, normalize_url
from mcp_optimizer.config import Settings
from mcp_optimizer.db import migrate
from mcp_optimizer.db.backends import backend_of
from mcp_optimizer.db.base import identifier_keys
from mcp_optimizer.db.engine import (
    WRITE_OPTION,
    Connection,
    DatabaseError,
    Engine,
    IndexOpenError,
    create_engine,
    describe_location,
)
from mcp_optimizer.db.health import (
    FaultKind,
    FileIdentity,
    IndexDamagedError,
    IndexFault,
    IndexHealth,
    classify,
    describe,
    expected_tables,
    inspect_file,
    move_aside,
    watch_engine,
)
from mcp_optimizer.db.meta_ops import IndexMetaOps
from mcp_optimizer.db.records import (
    LinkedWorkload,
    RegistryServerColumns,
    RegistryServerRecord,
    ToolEmbedding,
    ToolRow,
    WorkloadServerColumns,
    WorkloadServerRecord,
)
from mcp_optimizer.db.registry_ops import RegistryServerOps
from mcp_optimizer.db.workload_ops import WorkloadServerOps
from mcp_optimizer.embeddings import Embedder, EmbeddingError, configured_embedder, to_bytes
from mcp_optimizer.embeddings.texts import (
    own_description,
    server_embedding_text,
    text_hash,
    tool_embedding_text,
)
from mcp_optimizer.ingest.errors import (
    DuplicateRegistryServersError,
    IndexError_,
    RegistryNote,
    WorkloadSpecError,
)
from mcp_optimizer.ingest.links import fallbacks, server_vector
from mcp_optimizer.ingest.scheduler import WritePriority, WriteScheduler
from mcp_optimizer.ingest.status import effective_status
from mcp_optimizer.redaction import redact_url, redact_urls
from mcp_optimizer.vocabulary import WorkloadStatus

log = logging.getLogger(__name__)

#: Seconds one catalog write transaction may hold the write lock (``Settings.catalog_chunk_seconds``).
#: Adding an entry of 4 tools runs ~10 statements: 13 ms of SQLite time each on this (heavily
#: loaded) machine, so a chunk writes a handful of entries and a pod change waits ~50 ms at most.
DEFAULT_CHUNK_SECONDS = 0.05
#: Catalog operations whose texts are embedded together, outside the lock, before being written.
_EMBED_BATCH = 64
#: Additions and removals are written in groups, a fixed number of statements per group instead
#: of ~20 per entry (every statement is a round trip to aiosqlite's thread, slow when the CPU is
#: shared). A group is the smallest unit between two commits, so it is kept small: at most 8
#: entries (or 128 tools). Measured on this machine under load average 11-16 (see bench/RESULTS.md,
#: "catalog writes"): 1,000 entries of 4 tools loaded in 57 s one by one, ~15 s in groups.
_GROUP_ENTRIES = 8
_GROUP_TOOLS = 128
#: Times a catalog load plans again when the committed state moved under it (another process).
_REPLANS = 5

TRANSPORTS = ("streamable-http", "sse", "stdio")


@dataclass(frozen=True)
class RegistryRef:
    """A pinned registry entry: skips automatic matching (how users resolve aliases)."""

    catalog: str
    name: str


@dataclass
class WorkloadSpec:
    """What the cluster (or a workloads file) says about one MCP server that runs."""

    workload_name: str
    name: str
    url: str | None = None
    package: str | None = None
    endpoint: str | None = None
    transport: str = "streamable-http"
    #: What the cluster says: pod phase for containers, reachability for remote servers.
    status: WorkloadStatus = WorkloadStatus.STOPPED
    status_reason: str | None = None
    group: str = "default"
    namespace: str | None = None
    registry_ref: RegistryRef | None = None
    #: MCP tool objects (name, description, inputSchema). ``None`` keeps the stored tools.
    tools: list[dict[str, Any]] | None = None

    @property
    def remote(self) -> bool:
        return self.url is not None

    def validate(self) -> None:
        """Raise :class:`WorkloadSpecError` for a spec no amount of retrying can store."""
        where = f"workload {self.workload_name!r}"
        if not self.workload_name or not self.name:
            raise WorkloadSpecError("a workload needs a workload_name and a name")
        if (self.url is None) == (self.package is None):
            raise WorkloadSpecError(f"{where}: exactly one of url (remote) or package (container) is required")
        try:
            if self.url is not None:
                normalize_url(self.url)
            else:
                normalize_image(self.package or "")
        except ValueError as exc:
            raise WorkloadSpecError(f"{where}: {exc}") from exc
        if self.transport not in TRANSPORTS:
            raise WorkloadSpecError(f"{where}: transport must be one of {', '.join(TRANSPORTS)}")
        if self.tools is not None:
            names = [str(t.get("name") or "") for t in self.tools]
            if not all(names):
                raise WorkloadSpecError(f"{where}: every tool needs a name")
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise WorkloadSpecError(f"{where}: duplicate tool names {', '.join(duplicates)}")


def requires_task(tool: dict[str, Any]) -> bool:
    """Whether an MCP tool can only run as a task (``execution.taskSupport: "required"``).

    ``call_tool`` forwards plain ``tools/call`` requests, which such a tool refuses (server-
    everything's ``simulate-research-query`` does), so the index does not offer it.
    """
    execution = tool.get("execution")
    return isinstance(execution, dict) and execution.get("taskSupport") == "required"


@dataclass
class WorkloadResult:
    workload_name: str
    status: WorkloadStatus
    status_reason: str | None
    registry_server_name: str | None
    registry_catalog: str | None
    tool_count: int
    #: Tool texts that went through the model (0 when nothing changed).
    tools_embedded: int = 0
    #: The index-level problem that made status ERROR, if any.
    error: IndexError_ | EmbeddingError | None = None
    #: Why a pinned registry reference is not what the workload links to, if so.
    registry_note: RegistryNote | None = None
    #: Tools that only run as MCP tasks: not stored, as ``call_tool`` cannot run them.
    task_only_tools: list[str] = field(default_factory=list)


@dataclass
class CatalogLoadResult:
    catalog: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    texts_embedded: int = 0
    #: Workloads whose link was re-evaluated because of this change.
    rematched: list[WorkloadResult] = field(default_factory=list)


@dataclass
class _WorkloadPlan:
    """What one workload should look like in the index, before the tool embeddings are known."""

    spec: WorkloadSpec
    tools: list[dict[str, Any]]
    registry: RegistryServerRecord | None
    error: IndexError_ | None
    registry_note: RegistryNote | None
    context: str
    texts: list[str]
    #: Embeddings already stored for unchanged tool texts, by text hash.
    stored: dict[str, bytes]
    task_only: list[str] = field(default_factory=list)

    def missing_texts(self) -> list[str]:
        return [t for t in self.texts if text_hash(t) not in self.stored]

    def texts_to_warm(self) -> list[str]:
        """What the locked phase embeds: the missing tool texts and, for a workload with neither
        tools nor a registry entry (e.g. a server not running yet), its own description."""
        texts = self.missing_texts()
        if self.registry is None and not self.tools:
            texts.append(own_description(self.spec.name, self.tools))
        return texts


def _key_of(remote: bool, url: str | None, package: str | None) -> tuple[bool, str]:
    url_key, package_key = identifier_keys(remote, url, package)
    return remote, (url_key if remote else package_key) or ""


async def _move_aside(path: Path, fault: IndexFault, *, keep: int) -> Path | None:
    try:
        return await asyncio.to_thread(move_aside, path, keep=keep)
    except OSError as exc:
        raise IndexOpenError(f"index {path} cannot be used ({fault.message}) and cannot be moved aside: "
                             f"{exc.strerror or exc}") from exc


async def _migrate(engine: Engine, path: Path) -> None:
    """Bring the file (or database) to the head schema and check that it has every table of it."""
    await migrate.upgrade(engine)
    backend = backend_of(engine)
    async with engine.connect() as conn:
        tables = await backend.table_names(conn)
    missing = sorted(expected_tables(backend.side_tables()) - tables)
    if missing:
        raise IndexDamagedError(path, IndexFault(FaultKind.CORRUPT, f"wrong schema: no table {', '.join(missing)}"))


@dataclass(frozen=True)
class Repair:
    """What :meth:`Indexer.open` or :meth:`Indexer.rebuild` did with a file that could not be used."""

    fault: IndexFault
    #: Where the old file went (None when ``index_damaged_keep`` is 0: it was deleted).
    moved_to: Path | None


class Indexer:
    """Writes the index: catalogs, workloads, status. Searches go through :class:`ToolSearch`."""

    def __init__(
        self,
        engine: Engine,
        embedder: Embedder | None,
        *,
        path: Path | None = None,
        catalog_chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        damaged_keep: int = 2,
    ) -> None:
        self.engine = engine
        #: None in keyword-only mode: nothing is embedded.
        self.embedder = embedder
        self._model_forgotten = False
        self.registry = RegistryServerOps(engine)
        self.registry_tools = self.registry.tools
        self.workloads = WorkloadServerOps(engine)
        self.workload_tools = self.workloads.tools
        self.meta = IndexMetaOps(engine)
        #: The index file (None: unknown, so it cannot be rebuilt).
        self.path = path
        self.catalog_chunk_seconds = catalog_chunk_seconds
        self.damaged_keep = damaged_keep
        self.scheduler = WriteScheduler()
        self.health = IndexHealth()
        watch_engine(engine, self.health)
        #: Which file the index is (a file deleted or replaced under the process changes it).
        self.identity = FileIdentity.of(path) if path is not None else None
        #: Set by :meth:`open` when it had to replace the file.
        self.repaired: Repair | None = None
        self._catalog_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @classmethod
    async def open(cls, settings: Settings, embedder: Embedder | None = None, *, repair: bool = False) -> Indexer:
        """Open (and create or upgrade) the index file named by ``settings``.

        ``repair`` (the operator, which can rebuild everything from the cluster): the file is
        checked first (``settings.index_check``), and one that cannot be used (damaged pages, a
        bad header, not a database, a wrong schema) is moved aside and replaced by a new one;
        ``indexer.repaired`` says so. Without ``repair`` (the CLI: its index holds what a person
        loaded) such a file raises :class:`~mcp_optimizer.db.health.IndexDamagedError`.

        ``embedder`` defaults to the configured model, and is ignored in keyword-only mode. When
        the index's vectors were made by another model, they are all re-embedded now, once
        (:meth:`ensure_embedding_model`).
        """
        if settings.db_url:
            return await cls._open_database(settings, embedder)
        path = settings.db_path
        fault = await asyncio.to_thread(inspect_file, path, mode=settings.index_check if repair else "off")
        if fault is not None and not repair:
            raise IndexDamagedError(path, fault)
        moved_to = None
        if fault is not None:
            moved_to = await _move_aside(path, fault, keep=settings.index_damaged_keep)
        engine = create_engine(path, mmap_size=settings.sqlite_mmap_size, max_bytes=settings.index_max_bytes)
        try:
            await _migrate(engine, path)
        except Exception as exc:
            await engine.dispose()
            late = exc.fault if isinstance(exc, IndexDamagedError) else classify(exc)
            if late is None or not late.kind.needs_rebuild or not repair:
                if isinstance(exc, IndexDamagedError):
                    raise
                raise IndexDamagedError(path, late or IndexFault(FaultKind.CORRUPT, describe(exc))) from exc
            fault = late  # damage the check did not see (it was off): replace the file once
            moved_to = await _move_aside(path, fault, keep=settings.index_damaged_keep)
            engine = create_engine(path, mmap_size=settings.sqlite_mmap_size, max_bytes=settings.index_max_bytes)
            await _migrate(engine, path)
        if settings.keyword_only:
            embedder = None
        elif embedder is None:
            embedder = configured_embedder(settings)
        indexer = cls(engine, embedder, path=path, catalog_chunk_seconds=settings.catalog_chunk_seconds,
                      damaged_keep=settings.index_damaged_keep)
        try:
            # Vectors made by another model are all re-embedded now, once; an EmbeddingError
            # then leaves the index as it was.
            await indexer.ensure_embedding_model()
        except BaseException:
            await engine.dispose()
            raise
        if fault is not None:
            indexer.repaired = Repair(fault, moved_to)
            log.warning("The index %s could not be used (%s) and was replaced by a new one%s", path, fault,
                        f"; the old file is kept as {moved_to}" if moved_to else "")
        return indexer

    @classmethod
    async def _open_database(cls, settings: Settings, embedder: Embedder | None) -> Indexer:
        """:meth:`open` on a PostgreSQL database: no file to check, move or watch. The check is
        that the server answers and the schema reaches head; a server that does not answer is an
        :class:`IndexOpenError` naming the host and database (never the password)."""
        assert settings.db_url is not None
        where = describe_location(settings.db_url)
        engine = create_engine(settings.db_url)
        try:
            await _migrate(engine, Path(where))
        except (DatabaseError, OSError) as exc:
            await engine.dispose()
            # One line (libpq's messages span several), without the URL's password.
            reason = " ".join(redact_urls(describe(exc)).split())
            raise IndexOpenError(f"cannot use the index database {where}: {reason}") from None
        except BaseException:
            await engine.dispose()
            raise
        if settings.keyword_only:
            embedder = None
        elif embedder is None:
            embedder = configured_embedder(settings)
        indexer = cls(engine, embedder, path=None, catalog_chunk_seconds=settings.catalog_chunk_seconds,
                      damaged_keep=0)
        try:
            await indexer.ensure_embedding_model()
            # After it: a change of model recreates the vector tables, and their indexes with them.
            async with engine.begin() as conn:
                await backend_of(engine).tune(conn, hnsw=settings.pg_hnsw)
        except BaseException:
            await engine.dispose()
            raise
        return indexer

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _write(self, priority: WritePriority) -> AsyncIterator[Connection]:
        async with self.scheduler.turn(priority), self.engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            yield conn

    async def rebuild(self, fault: IndexFault) -> Repair:
        """Replace the index file by a new, empty one (the old one is moved aside), at run time.

        Waits for the write in progress, then holds every writer off; searches meanwhile may
        fail once. Connections to the old file are closed (those in use finish on it) and their
        errors are no longer reported. The caller fills the new file again (the operator: a full
        reconcile pass).
        """
        if self.path is None:
            raise RuntimeError("this index was opened without its path: it cannot be rebuilt")
        async with self.scheduler.exclusive():
            self.health.epoch += 1
            await self.engine.dispose()
            moved_to = await _move_aside(self.path, fault, keep=self.damaged_keep)
            await _migrate(self.engine, self.path)
            if self.embedder is not None:
                # The new file's vector tables have the default model's dimension: made this
                # model's, and the model recorded (as ensure_embedding_model does at open).
                async with self.engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
                    await self._replace_vectors(conn, _StoredTexts(), {})
                    await self._record_model(conn)
            self.identity = FileIdentity.of(self.path)
        log.warning("The index %s was replaced by a new one (%s)%s", self.path, fault,
                    f"; the old file is kept as {moved_to}" if moved_to else "")
        return Repair(fault, moved_to)

    async def used_bytes(self) -> int:
        """Bytes of the index file in use (what ``index_max_bytes`` caps). SQLite only."""
        return await self.meta.used_bytes()

    def file_fault(self) -> IndexFault | None:
        """A fault visible from outside SQLite: the file deleted or replaced under the process."""
        if self.path is None or self.identity is None:
            return None
        now = FileIdentity.of(self.path)
        if now is None:
            return IndexFault(FaultKind.REPLACED, f"the index file {self.path} was deleted")
        if now != self.identity:
            return IndexFault(FaultKind.REPLACED, f"the index file {self.path} was replaced by another file")
        return None

    # ----------------------------------------------------------------------------- catalogs

    async def load_catalog(
        self, catalog: str, entries: Sequence[CatalogEntry], warnings: Iterable[str] = ()
    ) -> CatalogLoadResult:
        """Make the catalog's registry servers exactly ``entries`` and re-match affected workloads.

        Unchanged entries (same content hash) are not touched and not embedded. An entry that
        disappears while a new one with the same identifier appears is a rename: the row keeps
        its id and links, and the linked workloads re-embed their tools with the new name.

        The change is planned once, outside the lock, then written in chunks: embed the texts of
        the next :data:`_EMBED_BATCH` operations (no lock), then write them in transactions of at
        most ``catalog_chunk_seconds`` each, so a pod phase change waits for one chunk at most
        (a 5,000-entry catalog in one transaction held the lock for 10-30 s). Each operation is
        checked against the committed row before it is written; if the catalog's rows changed
        under the load (only another process can: loads of one catalog are serialised here),
        the rest is planned again. Every commit point is a valid index (removals, then updates
        and renames, then additions, so names never collide), the final state is exactly
        ``entries`` however the chunks fell, and a load cut short (the process died) is finished
        by the next load of the same catalog, which the operator does at every start.
        """
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"catalog {catalog!r} lists a server name twice")
        result = CatalogLoadResult(catalog, warnings=list(warnings))
        affected: set[str] = set()
        async with self._catalog_locks[catalog]:
            # Hashing 5,000 entries took 1.1 s here: not on the event loop (pod events wait there).
            hashes = await asyncio.to_thread(lambda: {e.name: e.content_hash() for e in entries})
            for _ in range(_REPLANS):
                async with self.engine.connect() as conn:
                    plan = await self._plan_catalog(conn, catalog, entries, hashes)
                if await self._write_catalog(plan, result, affected):
                    break
            else:
                raise RuntimeError(f"catalog {catalog!r} kept changing while it was written; it is loaded again later")
            affected.update(await self.workloads.names_pinned_to(catalog))
        written = {*result.added, *result.updated, *(new for _, new in result.renamed)}
        result.unchanged = [name for name in names if name not in written]
        result.rematched = await self.rematch_workloads(sorted(affected))
        return result

    async def delete_catalog(self, catalog: str) -> CatalogLoadResult:
        """Remove every registry server of a catalog; linked workloads fall back, then re-match."""
        return await self.load_catalog(catalog, [])

    async def delete_registry_servers(self, server_ids: Sequence[str]) -> list[str]:
        """Delete registry servers and their tools in one transaction, unlinking the workloads
        linked to them (they fall back to their own description and the mean of their tool
        vectors: :func:`~mcp_optimizer.ingest.links.fallbacks`); returns those workloads' ids.

        No re-match: this is the write a catalog change makes for its removed entries before it
        re-matches (:meth:`load_catalog`, which the operator calls).
        """
        async with self._write(WritePriority.BULK) as conn:
            return [w.id for w in await self._delete_registry_servers(conn, server_ids)]

    async def unlink_workloads(self, server_ids: Sequence[str]) -> None:
        """Unlink workloads (by id) from their registry servers and fall back, as a registry
        delete does to each (no re-match, no model call)."""
        async with self._write(WritePriority.BULK) as conn:
            await self._unlink(conn, await self.workloads.links_of(server_ids, conn))

    async def _delete_registry_servers(
        self, conn: Connection, server_ids: Sequence[str]
    ) -> Sequence[LinkedWorkload]:
        """Unlink the workloads linked to these registry servers, then delete them; in the
        caller's transaction, so no commit shows a workload linked to a deleted entry or
        carrying its description or vector."""
        if not server_ids:
            return []
        linked = await self.workloads.linked_to(server_ids, conn)
        await self._unlink(conn, linked)
        await self.registry.delete_many(server_ids, conn)
        return linked

    async def _unlink(self, conn: Connection, workloads: Sequence[LinkedWorkload]) -> None:
        if workloads:
            tools = await self.workload_tools.vectors_by_server([w.id for w in workloads], conn)
            await self.workloads.store_fallbacks(fallbacks(workloads, tools), conn)

    async def catalog_names(self) -> set[str]:
        return await self.registry.catalogs()

    async def _plan_catalog(
        self, conn: Connection, catalog: str, entries: Sequence[CatalogEntry], hashes: dict[str, str]
    ) -> _CatalogPlan:
        existing = {row.name: row for row in await self.registry.list(catalog=catalog, conn=conn)}
        plan = await asyncio.to_thread(_diff_catalog, catalog, existing, entries, hashes)
        changed_ids = [op.old.id for op in plan.ops if op.kind in ("update", "rename") and op.old is not None]
        plan.stored.update(await self.registry_tools.stored_embeddings(changed_ids, conn))
        for op in plan.ops:
            old = op.old
            if op.kind in ("update", "rename") and old is not None and old.server_embedding is not None:
                plan.stored[text_hash(server_embedding_text(old.name, old.description, old.tags))] = (
                    old.server_embedding)
        return plan

    async def _write_catalog(self, plan: _CatalogPlan, result: CatalogLoadResult, affected: set[str]) -> bool:
        """Write the plan in chunks; False when an operation no longer fits the committed state."""
        for start in range(0, len(plan.ops), _EMBED_BATCH):
            batch = plan.ops[start:start + _EMBED_BATCH]
            await self._warm(plan.missing_texts(batch))
            position = 0
            while position < len(batch):
                async with self._write(WritePriority.BULK) as conn:
                    deadline = time.monotonic() + self.catalog_chunk_seconds
                    while position < len(batch):
                        ops = _next_group(batch, position)
                        if not await self._still_apply(conn, plan.catalog, ops):
                            return False
                        vectors = await self._embed_map(plan.missing_texts(ops))  # cache hits
                        result.texts_embedded += len(vectors)
                        if self.embedder is None and plan.missing_texts(ops):
                            await self._forget_embedding_model(conn)
                        if ops[0].kind == "remove":
                            await self._remove_entries(conn, ops, result, affected)
                        elif ops[0].kind == "add":
                            await self._add_entries(conn, plan, ops, vectors, result, affected)
                        else:
                            await self._change_entry(conn, plan, ops[0], vectors, result, affected)
                        position += len(ops)
                        if time.monotonic() >= deadline:
                            break
        return True

    async def _still_apply(self, conn: Connection, catalog: str, ops: Sequence[_CatalogOp]) -> bool:
        """Whether the rows ``ops`` were planned from are still the committed ones."""
        olds = {op.old.id: op.old for op in ops if op.old is not None}
        if olds:
            committed = await self.registry.content_versions(list(olds), conn)
            if committed != {id_: (old.name, old.content_hash) for id_, old in olds.items()}:
                return False
        new_names = [op.entry.name for op in ops
                     if op.entry is not None and (op.old is None or op.old.name != op.entry.name)]
        return not (new_names and await self.registry.any_named(catalog, new_names, conn))

    async def _remove_entries(
        self, conn: Connection, ops: Sequence[_CatalogOp], result: CatalogLoadResult, affected: set[str],
    ) -> None:
        """Delete the registry rows of removal ops; add the workloads they may re-link to ``affected``."""
        olds = [op.old for op in ops if op.old is not None]
        unlinked = await self._delete_registry_servers(conn, [old.id for old in olds])
        affected.update(w.workload_name for w in unlinked)
        result.removed.extend(old.name for old in olds)
        await self._touched(conn, {_key_of(old.remote, old.url, old.package) for old in olds}, affected)

    async def _add_entries(
        self, conn: Connection, plan: _CatalogPlan, ops: Sequence[_CatalogOp], vectors: dict[str, bytes],
        result: CatalogLoadResult, affected: set[str],
    ) -> None:
        """Insert the registry rows of addition ops; add the workloads they may link to ``affected``."""
        entries = [op.entry for op in ops if op.entry is not None]
        await self.registry.create_many(plan.catalog, [
            (self._entry_columns(entry, vectors, plan.stored), self._entry_tools(entry, vectors, plan.stored))
            for entry in entries
        ], conn)
        result.added.extend(entry.name for entry in entries)
        await self._touched(conn, {_key_of(e.remote, e.url, e.package) for e in entries}, affected)

    async def _change_entry(
        self, conn: Connection, plan: _CatalogPlan, op: _CatalogOp, vectors: dict[str, bytes],
        result: CatalogLoadResult, affected: set[str],
    ) -> None:
        """Write one planned update or rename (in place: the row keeps its id and links); add the
        workloads it may re-link to ``affected``."""
        assert op.old is not None and op.entry is not None
        old, entry = op.old, op.entry
        affected.update(w.workload_name for w in await self.workloads.list_servers_by_registry(old.id, conn))
        await self.registry.update(old.id, self._entry_columns(entry, vectors, plan.stored), conn)
        await self.registry_tools.bulk_upsert(old.id, self._entry_tools(entry, vectors, plan.stored), conn)
        if op.kind == "rename":
            result.renamed.append((old.name, entry.name))
        else:
            result.updated.append(entry.name)
        await self._touched(conn, {_key_of(old.remote, old.url, old.package),
                                   _key_of(entry.remote, entry.url, entry.package)}, affected)

    async def _touched(self, conn: Connection, keys: set[tuple[bool, str]], affected: set[str]) -> None:
        """Add the workloads whose identifier is one of ``keys`` (unlinked or conflicting ones may
        (re)link now) to ``affected``."""
        affected.update(await self.workloads.names_by_identifier(
            [key for remote, key in keys if remote], [key for remote, key in keys if not remote], conn))

    @staticmethod
    def _entry_columns(
        entry: CatalogEntry, vectors: dict[str, bytes], stored: dict[str, bytes]
    ) -> RegistryServerColumns:
        text = server_embedding_text(entry.name, entry.description, entry.tags)
        return {
            "name": entry.name, "remote": entry.remote, "url": entry.url, "package": entry.package,
            "transport": entry.transport, "description": entry.description, "tags": list(entry.tags),
            "server_embedding": vectors.get(text) or stored.get(text_hash(text)),
            "content_hash": entry.content_hash(),
        }

    @staticmethod
    def _entry_tools(entry: CatalogEntry, vectors: dict[str, bytes], stored: dict[str, bytes]) -> list[ToolRow]:
        rows = []
        for tool in entry.tools:
            details = tool.to_mcp()
            text = tool_embedding_text(entry.name, details)
            digest = text_hash(text)
            rows.append(ToolRow(tool.name, details, vectors.get(text) or stored.get(digest), digest, entry.name))
        return rows

    # ---------------------------------------------------------------------------- workloads

    async def apply_workload(self, spec: WorkloadSpec) -> WorkloadResult:
        """Create or update a workload (in place, keyed by ``workload_name``) and (re-)match it.

        Raises :class:`WorkloadSpecError` before storing anything for an invalid spec, and
        :class:`DuplicateRegistryServersError` *after* storing the workload with status ERROR
        and the reason. An embedding failure does not raise: the workload is stored with status
        ERROR (see ``WorkloadResult.error``). A pin that cannot be honoured is no error: see
        ``WorkloadResult.registry_note``. Tools that only run as MCP tasks are left out.
        """
        spec.validate()
        result = await self._sync_workload(spec.workload_name, spec)
        if isinstance(result.error, DuplicateRegistryServersError):
            raise result.error
        return result

    async def rematch_workloads(self, workload_names: Sequence[str] | None = None) -> list[WorkloadResult]:
        """Re-evaluate the registry link of stored workloads (all when ``None``) with their stored
        tools; errors are reported in each result, never raised."""
        if workload_names is None:
            workload_names = sorted(await self.workload_names())
        results = []
        for name in workload_names:
            try:
                result = await self._sync_workload(name, None)
            except KeyError:
                continue  # deleted meanwhile
            results.append(result)
        return results

    async def set_workload_status(
        self, workload_name: str, status: WorkloadStatus, reason: str | None = None
    ) -> bool:
        """Record what the cluster says about a workload (no tools/list, no embedding).

        Returns False when the workload is not indexed. An index-level error keeps the
        effective status ERROR until it is resolved. Goes before any waiting workload or catalog
        write (:class:`~mcp_optimizer.ingest.scheduler.WriteScheduler`).
        """
        async with self._write(WritePriority.STATUS) as conn:
            row = await self.workloads.get_by_workload_name(workload_name, conn)
            if row is None:
                return False
            effective, effective_reason = effective_status(status, reason, row.index_error)
            await self.workloads.set_status(
                row.id, status=effective.value, runtime_status=status.value, reason=effective_reason, conn=conn,
            )
            return True

    async def delete_workload(self, workload_name: str) -> bool:
        async with self._write(WritePriority.STATUS) as conn:
            row = await self.workloads.get_by_workload_name(workload_name, conn)
            if row is None:
                return False
            await self.workloads.delete(row.id, conn)
            return True

    async def workload_names(self) -> set[str]:
        return await self.workloads.workload_names()

    async def _sync_workload(self, workload_name: str, spec: WorkloadSpec | None) -> WorkloadResult:
        async with self.engine.connect() as conn:
            plan = await self._plan_workload(conn, workload_name, spec)
        # Embedded here, the locked phase finds them in the model's cache: 500 servers created
        # Pending at once otherwise ran 500 model calls one after another under the write lock.
        await self._warm(plan.texts_to_warm())
        async with self._write(WritePriority.WORKLOAD) as conn:
            plan = await self._plan_workload(conn, workload_name, spec)
            return await self._apply_workload(conn, plan)

    async def _plan_workload(
        self, conn: Connection, workload_name: str, spec: WorkloadSpec | None
    ) -> _WorkloadPlan:
        row = await self.workloads.get_by_workload_name(workload_name, conn)
        stored_tools = await self.workload_tools.list_by_server(row.id, conn) if row is not None else []
        if spec is None:
            if row is None:
                raise KeyError(workload_name)
            spec = self._spec_from_row(row)
        tools = spec.tools if spec.tools is not None else [t.details for t in stored_tools]
        task_only = [str(tool["name"]) for tool in tools if requires_task(tool)]
        if task_only:
            tools = [tool for tool in tools if not requires_task(tool)]
        registry, error, note = await self._match(conn, spec)
        context = registry.name if registry is not None else spec.name
        texts = [tool_embedding_text(context, tool) for tool in tools]
        stored = {t.embedding_hash: t.details_embedding for t in stored_tools
                  if t.embedding_hash and t.details_embedding is not None}
        return _WorkloadPlan(spec, tools, registry, error, note, context, texts, stored, task_only)

    async def _match(
        self, conn: Connection, spec: WorkloadSpec
    ) -> tuple[RegistryServerRecord | None, IndexError_ | None, RegistryNote | None]:
        """(registry row, error, note): the registry entry this workload links to, if exactly one.

        A pin to a missing entry leaves the workload unlinked until the entry appears (catalogs
        load in any order; linking elsewhere meanwhile would re-embed it twice). A pin to an
        entry of the other kind can never be what was meant (a container server is not a remote
        one): it is reported and ignored, and the workload is matched by its own URL or image,
        so a typo in registry metadata never takes a working server out of search.
        """
        note: RegistryNote | None = None
        if spec.registry_ref is not None:
            ref = spec.registry_ref
            entry = await self.registry.get_by_name(ref.catalog, ref.name, conn)
            if entry is None:
                return None, None, RegistryNote(
                    "RegistryRefNotFound", f"pinned registry entry {ref.catalog}/{ref.name} not found")
            if entry.remote == spec.remote:
                return entry, None, None
            kinds = ("remote", "container")
            note = RegistryNote("RegistryRefInvalid", (
                f"workload {spec.workload_name!r} is a {kinds[not spec.remote]} server but its pinned registry "
                f"entry {ref.catalog}/{ref.name} is a {kinds[not entry.remote]} server; the pin is ignored and the "
                f"workload is matched by its {'URL' if spec.remote else 'image'}: fix or remove spec.registryRef"))
        matches = await self.registry.find_matching_servers(
            url=spec.url, package=spec.package, remote=spec.remote, conn=conn)
        if len(matches) > 1:
            identifier = f"URL {redact_url(spec.url or '')}" if spec.remote else f"image {spec.package}"
            return None, DuplicateRegistryServersError(
                spec.workload_name, identifier, [(m.catalog, m.name) for m in matches]), note
        return (matches[0] if matches else None), None, note

    async def _apply_workload(self, conn: Connection, plan: _WorkloadPlan) -> WorkloadResult:
        spec = plan.spec
        error: IndexError_ | EmbeddingError | None = plan.error
        missing = plan.missing_texts()
        try:
            vectors = await self._embed_map(missing)
        except EmbeddingError as exc:
            vectors, error = {}, exc
        tool_rows = []
        tool_vectors: list[bytes] = []
        for tool, text in zip(plan.tools, plan.texts, strict=True):
            digest = text_hash(text)
            embedding = vectors.get(text) or plan.stored.get(digest)
            # Keyword-only: the hash still records the text (server name included) that the FTS
            # row was made from, so a rename rewrites it; a failed embedding keeps no hash and
            # is retried at the next sync.
            keep_hash = embedding is not None or self.embedder is None
            tool_rows.append(ToolRow(str(tool["name"]), tool, embedding, digest if keep_hash else None, plan.context))
            if embedding is not None:
                tool_vectors.append(embedding)
        description = own_description(spec.name, plan.tools)
        own_vector: bytes | None = None
        if plan.registry is not None:
            description = plan.registry.description or description
        elif not plan.tools and error is None and self.embedder is not None:
            try:
                own_vector = to_bytes(await self.embedder.aembed_one(description))
            except EmbeddingError as exc:
                error = exc
        server_embedding = server_vector(
            linked=plan.registry is not None, tool_vectors=tool_vectors, own_vector=own_vector,
            registry_vector=plan.registry.server_embedding if plan.registry is not None else None)
        index_error = str(error) if error is not None else None
        status, status_reason = effective_status(spec.status, spec.status_reason, index_error)
        columns: WorkloadServerColumns = {
            "name": spec.name, "remote": spec.remote, "url": spec.url, "package": spec.package,
            "endpoint": spec.endpoint or spec.url, "transport": spec.transport,
            "status": status.value, "runtime_status": spec.status.value,
            "status_reason": status_reason, "index_error": index_error,
            "registry_server_id": plan.registry.id if plan.registry is not None else None,
            "registry_server_name": plan.registry.name if plan.registry is not None else None,
            "registry_catalog": plan.registry.catalog if plan.registry is not None else None,
            "registry_ref_catalog": spec.registry_ref.catalog if spec.registry_ref else None,
            "registry_ref_name": spec.registry_ref.name if spec.registry_ref else None,
            "description": description, "server_embedding": server_embedding,
            "embedding_context": plan.context, "group": spec.group, "namespace": spec.namespace,
        }
        if self.embedder is None and any(t.embedding is None for t in tool_rows):
            await self._forget_embedding_model(conn)
        row = await self.workloads.get_by_workload_name(spec.workload_name, conn)
        if row is None:
            server_id = await self.workloads.create(spec.workload_name, columns, conn)
        else:
            server_id = row.id
            await self.workloads.update(server_id, columns, conn)
        await self.workload_tools.bulk_upsert(server_id, tool_rows, conn)
        if error is not None:
            log.info("%s", error)
        return WorkloadResult(
            workload_name=spec.workload_name, status=status, status_reason=columns["status_reason"],
            registry_server_name=columns["registry_server_name"], registry_catalog=columns["registry_catalog"],
            tool_count=len(tool_rows), tools_embedded=len(vectors), error=error, registry_note=plan.registry_note,
            task_only_tools=plan.task_only,
        )

    @staticmethod
    def _spec_from_row(row: WorkloadServerRecord) -> WorkloadSpec:
        ref = (RegistryRef(row.registry_ref_catalog, row.registry_ref_name)
               if row.registry_ref_catalog and row.registry_ref_name else None)
        reason = None if row.index_error else row.status_reason
        return WorkloadSpec(
            workload_name=row.workload_name, name=row.name, url=row.url, package=row.package,
            endpoint=row.endpoint, transport=row.transport, status=WorkloadStatus(row.runtime_status),
            status_reason=reason, group=row.group, namespace=row.namespace, registry_ref=ref, tools=None,
        )

    # ------------------------------------------------------------------------ model changes

    async def recorded_embedding_model(self) -> str | None:
        """The fingerprint of the model that made the stored vectors (None: none recorded)."""
        return await self.meta.embedding_model()

    async def _forget_embedding_model(self, conn: Connection) -> None:
        """Keyword-only mode stored a tool without a vector: the next start with a model must
        re-embed, whatever model made the other vectors."""
        if not self._model_forgotten:
            await self.meta.forget_embedding_model(conn)
            self._model_forgotten = True

    async def ensure_embedding_model(self) -> int:
        """Make every stored vector the configured model's; returns the texts embedded.

        Nothing happens when the index records this model (every normal start: one SELECT).
        Otherwise every stored text is embedded again (registry servers and tools, workload
        tools, unlinked workloads' servers, mean-pooled as on ingest), the vector tables are
        recreated with the model's dimension and the model is recorded, all in one transaction:
        a failure leaves the index as it was. Embedding happens before the write lock, as for
        every other write.
        """
        if self.embedder is None:
            return 0
        fingerprint = self.embedder.spec.fingerprint
        async with self.engine.connect() as conn:
            if await self.meta.embedding_model(conn) == fingerprint:
                return 0
            texts = await self._stored_texts(conn)
        await self._warm(texts.all())
        async with self._write(WritePriority.BULK) as conn:
            texts = await self._stored_texts(conn)  # what is stored now, under the lock
            vectors = await self._embed_map(texts.all())
            await self._replace_vectors(conn, texts, vectors)
            await self._record_model(conn)
        if vectors:
            log.info("re-embedded %d stored texts with %s", len(vectors), self.embedder.spec.name)
        return len(vectors)

    async def _record_model(self, conn: Connection) -> None:
        assert self.embedder is not None
        await self.meta.record_embedding_model(self.embedder.spec.fingerprint, conn)
        self._model_forgotten = False

    async def _stored_texts(self, conn: Connection) -> _StoredTexts:
        texts = _StoredTexts()
        for server in await self.registry.embedding_sources(conn):
            texts.registry_servers[server.id] = server_embedding_text(server.name, server.description,
                                                                      list(server.tags))
        for tool in await self.registry_tools.embedding_sources(conn):
            texts.registry_tools[tool.id] = (tool.server_id, tool_embedding_text(tool.server_name, tool.details))
        for wtool in await self.workload_tools.embedding_sources(conn):
            context = wtool.embedding_context or wtool.server_name
            texts.workload_tools[wtool.id] = (wtool.server_id, tool_embedding_text(context, wtool.details))
        for workload in await self.workloads.embedding_sources(conn):
            texts.workload_servers[workload.id] = (workload.registry_server_id, workload.description)
        return texts

    async def _replace_vectors(self, conn: Connection, texts: _StoredTexts, vectors: dict[str, bytes]) -> None:
        """Recreate the vector tables for the model's dimension and write every vector anew."""
        assert self.embedder is not None
        await self.meta.recreate_vector_tables(self.embedder.dim, conn)
        await self.registry.rewrite_embeddings(
            {sid: vectors[t] for sid, t in texts.registry_servers.items()}, conn)
        for ops, tools in ((self.registry_tools, texts.registry_tools), (self.workload_tools, texts.workload_tools)):
            await ops.rewrite_embeddings(
                [ToolEmbedding(tid, sid, vectors[t], text_hash(t)) for tid, (sid, t) in tools.items()], conn)
        pooled: dict[str, list[bytes]] = {}
        for sid, t in texts.workload_tools.values():
            pooled.setdefault(sid, []).append(vectors[t])
        for sid, (registry_id, description) in texts.workload_servers.items():
            registry_text = texts.registry_servers.get(registry_id) if registry_id is not None else None
            embedding = server_vector(
                linked=registry_text is not None, tool_vectors=pooled.get(sid, []),
                registry_vector=vectors[registry_text] if registry_text is not None else None,
                own_vector=vectors.get(description))
            await self.workloads.set_embedding(sid, embedding, conn)

    # ---------------------------------------------------------------------------- embedding

    async def _warm(self, texts: list[str]) -> None:
        """Embed outside the write lock so the locked phase finds the vectors in the cache."""
        if texts and self.embedder is not None:
            # The locked phase meets the same error and records it.
            with contextlib.suppress(EmbeddingError):
                await self.embedder.aembed(texts)

    async def _embed_map(self, texts: list[str]) -> dict[str, bytes]:
        if not texts or self.embedder is None:
            return {}
        unique = list(dict.fromkeys(texts))
        matrix = await self.embedder.aembed(unique)
        return {text: to_bytes(vector) for text, vector in zip(unique, matrix, strict=True)}


@dataclass(frozen=True)
class _CatalogOp:
    """One planned change to a catalog: remove ``old``, update or rename ``old`` to ``entry``, or add ``entry``."""

    kind: Literal["remove", "update", "rename", "add"]
    old: RegistryServerRecord | None
    entry: CatalogEntry | None


@dataclass
class _StoredTexts:
    """Every text the index holds a vector of, as :meth:`Indexer.ensure_embedding_model` re-embeds them."""

    registry_servers: dict[str, str] = field(default_factory=dict)
    #: tool id -> (server id, embedding text)
    registry_tools: dict[int, tuple[str, str]] = field(default_factory=dict)
    workload_tools: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: server id -> (linked registry server id, own description: embedded when it has no tools)
    workload_servers: dict[str, tuple[str | None, str]] = field(default_factory=dict)

    def all(self) -> list[str]:
        pooled = {sid for sid, _ in self.workload_tools.values()}
        return list(dict.fromkeys([
            *self.registry_servers.values(), *(t for _, t in self.registry_tools.values()),
            *(t for _, t in self.workload_tools.values()),
            *(d for sid, (r, d) in self.workload_servers.items()
              if sid not in pooled and (r is None or r not in self.registry_servers)),
        ]))


@dataclass
class _CatalogPlan:
    catalog: str
    #: In write order: removals, then updates and renames, then additions.
    ops: list[_CatalogOp] = field(default_factory=list)
    #: Embeddings already stored for the tools of changed entries, by text hash.
    stored: dict[str, bytes] = field(default_factory=dict)

    def missing_texts(self, ops: Sequence[_CatalogOp]) -> list[str]:
        texts: list[str] = []
        for op in ops:
            if op.entry is not None:
                entry = op.entry
                texts.append(server_embedding_text(entry.name, entry.description, entry.tags))
                texts.extend(tool_embedding_text(entry.name, tool.to_mcp()) for tool in entry.tools)
        return [t for t in texts if text_hash(t) not in self.stored]


def _next_group(ops: Sequence[_CatalogOp], position: int) -> list[_CatalogOp]:
    """The ops written next together: consecutive additions or removals (bounded), else one op."""
    first = ops[position]
    if first.kind not in ("add", "remove"):
        return [first]
    group: list[_CatalogOp] = []
    tools = 0
    for op in ops[position:]:
        tools += len(op.entry.tools) if op.entry is not None else 0
        if op.kind != first.kind or len(group) >= _GROUP_ENTRIES or (group and tools > _GROUP_TOOLS):
            break
        group.append(op)
    return group


def _diff_catalog(
    catalog: str, existing: dict[str, RegistryServerRecord], entries: Sequence[CatalogEntry], hashes: dict[str, str]
) -> _CatalogPlan:
    """What turns the catalog's ``existing`` rows into ``entries`` (pure; runs in a worker thread)."""
    new_names = {e.name for e in entries}
    gone = {name: row for name, row in existing.items() if name not in new_names}
    gone_by_key: dict[tuple[bool, str], list[RegistryServerRecord]] = {}
    for row in gone.values():
        gone_by_key.setdefault(_key_of(row.remote, row.url, row.package), []).append(row)
    changed: list[_CatalogOp] = []
    added: list[_CatalogOp] = []
    for entry in entries:
        old = existing.get(entry.name)
        if old is None:
            candidates = gone_by_key.get(_key_of(entry.remote, entry.url, entry.package))
            if candidates:
                changed.append(_CatalogOp("rename", candidates.pop(0), entry))
            else:
                added.append(_CatalogOp("add", None, entry))
        elif old.content_hash != hashes[entry.name]:
            changed.append(_CatalogOp("update", old, entry))
    renamed_ids = {op.old.id for op in changed if op.kind == "rename" and op.old is not None}
    removed = [_CatalogOp("remove", row, None) for row in gone.values() if row.id not in renamed_ids]
    return _CatalogPlan(catalog, ops=[*removed, *changed, *added])
