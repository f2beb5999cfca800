"""What the ops classes share: transactions and the tool tables, which have one shape on both sides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Select, Table, bindparam, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.catalog import normalize_image, normalize_url
from mcp_optimizer.db.backends import Backend, backend_of
from mcp_optimizer.db.engine import WRITE_OPTION
from mcp_optimizer.db.models import utcnow
from mcp_optimizer.db.records import (
    Record,
    RegistryServerColumns,
    ToolEmbedding,
    ToolRecord,
    ToolRow,
    ToolSource,
    ToolSyncResult,
    WorkloadServerColumns,
)
from mcp_optimizer.db.virtual import FTS_COLUMNS
from mcp_optimizer.embeddings.texts import tool_fts_fields


def identifier_keys(remote: bool, url: str | None, package: str | None) -> tuple[str | None, str | None]:
    """The normalised (url_key, package_key) a server (registry or workload) is matched by;
    only its own type's key is set."""
    if remote:
        if not url:
            raise ValueError("a remote server needs a URL")
        return normalize_url(url), None
    if not package:
        raise ValueError("a container server needs a package (image)")
    return None, normalize_image(package)


R = TypeVar("R", bound=Record)


class Ops:
    """Base of the ops classes: every method takes an optional connection to join a transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        #: What is written beside the base tables differs per database (sqlite-vec and FTS5, or
        #: pgvector and term tables): the ops classes write it through this.
        self.backend: Backend = backend_of(engine)

    @asynccontextmanager
    async def _tx(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        """The caller's connection, or a new write transaction committed on exit."""
        if conn is not None:
            yield conn
            return
        async with self.engine.execution_options(**{WRITE_OPTION: True}).begin() as own:
            yield own

    @staticmethod
    async def _update_server(
        c: AsyncConnection, table: Table, server_id: str, columns: RegistryServerColumns | WorkloadServerColumns
    ) -> None:
        """UPDATE a server row (either side) to ``columns``; the identifier keys are normalised
        again, so matching always compares what the row now says."""
        url_key, package_key = identifier_keys(columns["remote"], columns["url"], columns["package"])
        values = {**columns, "url": columns["url"] if columns["remote"] else None,
                  "package": None if columns["remote"] else columns["package"],
                  "url_key": url_key, "package_key": package_key, "last_updated": utcnow()}
        result = await c.execute(update(table).where(table.c.id == server_id).values(**values))
        if result.rowcount == 0:
            raise KeyError(server_id)

    @asynccontextmanager
    async def _read(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
            return
        async with self.engine.connect() as own:
            yield own

    async def _one(self, record: type[R], query: Select[Any], conn: AsyncConnection | None) -> R | None:
        """The first row ``query`` selects, as a ``record`` (None: no row)."""
        async with self._read(conn) as c:
            row = (await c.execute(query)).first()
        return record.of(row) if row is not None else None

    async def _all(self, record: type[R], query: Select[Any], conn: AsyncConnection | None) -> list[R]:
        """Every row ``query`` selects, as ``record`` instances."""
        async with self._read(conn) as c:
            return [record.of(row) for row in await c.execute(query)]


class ToolOps(Ops):
    """Tools of one side (registry or workload) with their vector and keyword (FTS5) rows.

    The vector and keyword rows share the tool's integer id as rowid. ``_vector_metadata`` gives
    the extra vec0 metadata columns (the workload side filters on status, group, namespace).
    """

    table: Table
    #: The servers' table the tools belong to.
    server_table: Table
    vector_table: str
    fts_table: str

    async def _vector_metadata(self, conn: AsyncConnection, server_id: str) -> dict[str, Any]:
        return {}

    async def _all_vector_metadata(self, conn: AsyncConnection) -> dict[str, dict[str, Any]]:
        """:meth:`_vector_metadata` of every server at once, by server id."""
        return {}

    async def stored_embeddings(
        self, server_ids: Sequence[str], conn: AsyncConnection | None = None
    ) -> dict[str, bytes]:
        """The stored tool embeddings of these servers by the hash of their text (what a change
        of them may reuse), read 500 servers per statement."""
        stored: dict[str, bytes] = {}
        async with self._read(conn) as c:
            for start in range(0, len(server_ids), 500):
                rows = await c.execute(
                    select(self.table.c.embedding_hash, self.table.c.details_embedding)
                    .where(self.table.c.server_id.in_(server_ids[start:start + 500]),
                           self.table.c.details_embedding.is_not(None)))
                stored.update({row.embedding_hash: row.details_embedding for row in rows})
        return stored

    async def embedding_sources(self, conn: AsyncConnection | None = None) -> list[ToolSource]:
        """Every tool of this side with what its embedding text is made from (a change of model
        re-embeds them all), in one statement."""
        servers = self.server_table
        context = [servers.c.embedding_context] if "embedding_context" in servers.c else []
        query = select(self.table.c.id, self.table.c.server_id, self.table.c.details,
                       servers.c.name.label("server_name"), *context).join(servers)
        async with self._read(conn) as c:
            return [ToolSource(row.id, row.server_id, row.details, row.server_name,
                               row.embedding_context if context else None)
                    for row in await c.execute(query)]

    async def rewrite_embeddings(
        self, embeddings: Sequence[ToolEmbedding], conn: AsyncConnection | None = None
    ) -> None:
        """Store new embeddings of existing tools, into vector tables that were just recreated
        empty (:meth:`~mcp_optimizer.db.meta_ops.IndexMetaOps.recreate_vector_tables`)."""
        if not embeddings:
            return
        async with self._tx(conn) as c:
            await c.execute(
                update(self.table).where(self.table.c.id == bindparam("tid")).values(
                    details_embedding=bindparam("e"), embedding_hash=bindparam("h"), last_updated=utcnow()),
                [{"tid": e.id, "e": e.embedding, "h": e.embedding_hash} for e in embeddings])
            metadata = await self._all_vector_metadata(c)
            await self.backend.insert_vectors(c, self.vector_table, [
                {"rowid": e.id, "embedding": e.embedding, "server_id": e.server_id, **metadata.get(e.server_id, {})}
                for e in embeddings])

    async def list_by_server(self, server_id: str, conn: AsyncConnection | None = None) -> list[ToolRecord]:
        async with self._read(conn) as c:
            result = await c.execute(select(self.table).where(self.table.c.server_id == server_id)
                                     .order_by(self.table.c.name))
            return [ToolRecord.of(row) for row in result]

    async def count_by_server(self, server_id: str, conn: AsyncConnection | None = None) -> int:
        async with self._read(conn) as c:
            result = await c.execute(text(f"SELECT count(*) FROM {self.table.name} WHERE server_id = :s"),
                                     {"s": server_id})
            return int(result.scalar_one())

    async def bulk_upsert(
        self, server_id: str, tools: Sequence[ToolRow], conn: AsyncConnection | None = None
    ) -> ToolSyncResult:
        """Make the server's tools exactly ``tools``: insert new, update changed, delete missing.

        A tool whose details and embedding hash are unchanged is not written at all, so an
        unchanged resync costs one SELECT.
        """
        async with self._tx(conn) as c:
            existing = {
                row.name: row
                for row in (await c.execute(
                    select(self.table.c.id, self.table.c.name, self.table.c.details, self.table.c.embedding_hash)
                    .where(self.table.c.server_id == server_id)
                )).all()
            }
            wanted = {tool.name: tool for tool in tools}
            metadata = await self._vector_metadata(c, server_id)
            removed = [row.id for name, row in existing.items() if name not in wanted]
            await self._delete_ids(c, removed)
            added = updated = unchanged = 0
            written: list[int] = []
            changed: list[int] = []
            pending: list[tuple[int, ToolRow]] = []
            now = utcnow()
            for tool in wanted.values():
                old = existing.get(tool.name)
                if old is not None and old.details == tool.details and old.embedding_hash == tool.embedding_hash:
                    unchanged += 1
                    continue
                if old is None:
                    result = await c.execute(self.table.insert().values(
                        server_id=server_id, name=tool.name, details=tool.details,
                        details_embedding=tool.embedding, embedding_hash=tool.embedding_hash,
                        created_at=now, last_updated=now,
                    ))
                    tool_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                    added += 1
                else:
                    tool_id = old.id
                    await c.execute(update(self.table).where(self.table.c.id == tool_id).values(
                        details=tool.details, details_embedding=tool.embedding,
                        embedding_hash=tool.embedding_hash, last_updated=now,
                    ))
                    changed.append(tool_id)
                    updated += 1
                pending.append((tool_id, tool))
                written.append(tool_id)
            # The side rows in one statement per table, not per tool (PostgreSQL pays a round trip each).
            if changed:
                await self._delete_virtual(c, changed)
            await self._insert_virtual(c, server_id, pending, metadata)
            await self._after_write(c, written)
            return ToolSyncResult(added, updated, len(removed), unchanged)

    async def _after_write(self, c: AsyncConnection, tool_ids: list[int]) -> None:
        """Derived columns of the tools just inserted or updated (none on this side)."""

    async def insert_for_new_servers(
        self, servers_tools: Sequence[tuple[str, Sequence[ToolRow]]], conn: AsyncConnection | None = None
    ) -> None:
        """Insert the tools of servers that have none yet, with their vector and FTS rows, in a
        fixed number of statements. Ids are allocated here (the caller holds the write lock), as
        SQLite would: after the largest in use."""
        async with self._tx(conn) as c:
            next_id = int((await c.execute(text(f"SELECT coalesce(max(id), 0) FROM {self.table.name}"))).scalar_one())
            now = utcnow()
            rows, fts, vectors = [], [], []
            ids: list[int] = []
            for server_id, tools in servers_tools:
                metadata = await self._vector_metadata(c, server_id)
                for tool in tools:
                    next_id += 1
                    ids.append(next_id)
                    rows.append({"id": next_id, "server_id": server_id, "name": tool.name, "details": tool.details,
                                 "details_embedding": tool.embedding, "embedding_hash": tool.embedding_hash,
                                 "created_at": now, "last_updated": now})
                    fts.append({"id": next_id, **dict(zip(FTS_COLUMNS, tool_fts_fields(tool.details, tool.context),
                                                              strict=True))})
                    if tool.embedding is not None:
                        vectors.append({"rowid": next_id, "embedding": tool.embedding, "server_id": server_id,
                                        **metadata})
            if not rows:
                return
            await c.execute(self.table.insert(), rows)
            await self.backend.after_explicit_ids(c, self.table.name)
            await self.backend.insert_keywords(c, self.fts_table, fts)
            await self.backend.insert_vectors(c, self.vector_table, vectors)
            await self._after_write(c, ids)

    async def delete_by_server(self, server_id: str, conn: AsyncConnection | None = None) -> int:
        return await self.delete_by_servers([server_id], conn)

    async def delete_by_servers(self, server_ids: Sequence[str], conn: AsyncConnection | None = None) -> int:
        async with self._tx(conn) as c:
            ids = (await c.execute(select(self.table.c.id).where(self.table.c.server_id.in_(server_ids)))).scalars()
            return await self._delete_ids(c, list(ids))

    async def _delete_ids(self, c: AsyncConnection, ids: list[int]) -> int:
        if not ids:
            return 0
        await self._delete_virtual(c, ids)
        await c.execute(delete(self.table).where(self.table.c.id.in_(ids)))
        return len(ids)

    async def _delete_virtual(self, c: AsyncConnection, ids: list[int]) -> None:
        # vec0 deletes efficiently by rowid one at a time; an IN list scans.
        await c.execute(text(f"DELETE FROM {self.vector_table} WHERE rowid = :id"), [{"id": i} for i in ids])
        await self.backend.delete_keywords(c, self.fts_table, ids)

    async def _insert_virtual(
        self, c: AsyncConnection, server_id: str, tools: Sequence[tuple[int, ToolRow]], metadata: dict[str, Any]
    ) -> None:
        await self.backend.insert_keywords(c, self.fts_table, [
            {"id": tool_id, **dict(zip(FTS_COLUMNS, tool_fts_fields(tool.details, tool.context), strict=True))}
            for tool_id, tool in tools])
        await self.backend.insert_vectors(c, self.vector_table, [
            {"rowid": tool_id, "embedding": tool.embedding, "server_id": server_id, **metadata}
            for tool_id, tool in tools if tool.embedding is not None])
