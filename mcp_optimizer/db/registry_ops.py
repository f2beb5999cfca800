"""Registry servers and registry tools (the catalog side of the index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.db.base import Ops, ToolOps, identifier_keys
from mcp_optimizer.db.models import REGISTRY_SERVERS, REGISTRY_TOOLS, new_id, utcnow
from mcp_optimizer.db.records import RegistryServerColumns, RegistryServerRecord, RegistryServerSource, ToolRow
from mcp_optimizer.db.virtual import REGISTRY_SERVER_VECTOR, REGISTRY_TOOL_FTS, REGISTRY_TOOL_VECTORS

servers = REGISTRY_SERVERS
tools = REGISTRY_TOOLS


class RegistryServerOps(Ops):
    """``mcpservers_registry`` and its vector table ``registry_server_vector``."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.tools = RegistryToolOps(engine)

    async def create(
        self, catalog: str, columns: RegistryServerColumns, conn: AsyncConnection | None = None
    ) -> str:
        """Insert a registry server and its vector row; returns its id."""
        [server_id] = await self.create_many(catalog, [(columns, ())], conn)
        return server_id

    async def create_many(
        self, catalog: str, servers_tools: Sequence[tuple[RegistryServerColumns, Sequence[ToolRow]]],
        conn: AsyncConnection | None = None,
    ) -> list[str]:
        """:meth:`create` for many servers, with their tools, in a fixed number of statements (a
        catalog load). Each item is (the server's columns, its tools)."""
        if not servers_tools:
            return []
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for columns, _ in servers_tools:
            remote = columns["remote"]
            url_key, package_key = identifier_keys(remote, columns["url"], columns["package"])
            rows.append({
                **columns, "id": new_id(), "catalog": catalog, "tags": list(columns["tags"]),
                "url": columns["url"] if remote else None, "url_key": url_key,
                "package": None if remote else columns["package"], "package_key": package_key,
                "group": None, "created_at": now, "last_updated": now,
            })
        async with self._tx(conn) as c:
            await c.execute(servers.insert(), rows)
            await self.backend.insert_vectors(c, REGISTRY_SERVER_VECTOR, [
                {"server_id": row["id"], "embedding": row["server_embedding"]} for row in rows
                if row["server_embedding"] is not None])
            await self.tools.insert_for_new_servers(
                [(row["id"], tools) for row, (_, tools) in zip(rows, servers_tools, strict=True)], c)
        return [row["id"] for row in rows]

    async def update(self, server_id: str, columns: RegistryServerColumns, conn: AsyncConnection | None = None) -> None:
        """Set a server's columns; identifiers are re-normalised and the vector row follows the embedding."""
        async with self._tx(conn) as c:
            await self._update_server(c, servers, server_id, columns)
            await self._sync_vector(c, server_id, columns["server_embedding"])

    async def delete(self, server_id: str, conn: AsyncConnection | None = None) -> None:
        """Delete a registry server with its tools and vectors. Only that: the caller unlinks the
        workloads linked to it first, in the same transaction (the Indexer decides what they fall
        back to: :meth:`mcp_optimizer.ingest.Indexer.delete_registry_servers`)."""
        await self.delete_many([server_id], conn)

    async def delete_many(self, server_ids: Sequence[str], conn: AsyncConnection | None = None) -> None:
        """:meth:`delete` for many servers in a fixed number of statements (a catalog delete)."""
        if not server_ids:
            return
        async with self._tx(conn) as c:
            await self.tools.delete_by_servers(server_ids, c)
            await c.execute(text(f"DELETE FROM {REGISTRY_SERVER_VECTOR} WHERE server_id = :id"),
                            [{"id": server_id} for server_id in server_ids])
            await c.execute(delete(servers).where(servers.c.id.in_(server_ids)))

    async def get_by_id(self, server_id: str, conn: AsyncConnection | None = None) -> RegistryServerRecord | None:
        return await self._one(RegistryServerRecord, select(servers).where(servers.c.id == server_id), conn)

    async def get_by_name(
        self, catalog: str, name: str, conn: AsyncConnection | None = None
    ) -> RegistryServerRecord | None:
        query = select(servers).where(servers.c.catalog == catalog, servers.c.name == name)
        return await self._one(RegistryServerRecord, query, conn)

    async def get_by_url(self, url: str, conn: AsyncConnection | None = None) -> Sequence[RegistryServerRecord]:
        return await self.find_matching_servers(url=url, package=None, remote=True, conn=conn)

    async def get_by_package(self, package: str, conn: AsyncConnection | None = None) -> Sequence[RegistryServerRecord]:
        return await self.find_matching_servers(url=None, package=package, remote=False, conn=conn)

    async def list(
        self, *, catalog: str | None = None, remote: bool | None = None, conn: AsyncConnection | None = None
    ) -> Sequence[RegistryServerRecord]:
        query = select(servers).order_by(servers.c.catalog, servers.c.name)
        if catalog is not None:
            query = query.where(servers.c.catalog == catalog)
        if remote is not None:
            query = query.where(servers.c.remote == remote)
        return await self._all(RegistryServerRecord, query, conn)

    async def content_versions(
        self, server_ids: Sequence[str], conn: AsyncConnection | None = None
    ) -> dict[str, tuple[str, str]]:
        """(name, content hash) of each of these servers that exists, by id: whether a planned
        change still fits the committed rows."""
        async with self._read(conn) as c:
            rows = await c.execute(select(servers.c.id, servers.c.name, servers.c.content_hash)
                                   .where(servers.c.id.in_(list(server_ids))))
            return {row.id: (row.name, row.content_hash) for row in rows}

    async def any_named(self, catalog: str, names: Sequence[str], conn: AsyncConnection | None = None) -> bool:
        """Whether the catalog has a server by one of these names."""
        async with self._read(conn) as c:
            taken = await c.execute(select(servers.c.id).where(servers.c.catalog == catalog,
                                                               servers.c.name.in_(list(names))).limit(1))
            return taken.first() is not None

    async def embedding_sources(self, conn: AsyncConnection | None = None) -> Sequence[RegistryServerSource]:
        """Every registry server with what its embedding text is made from (a change of model
        re-embeds them all)."""
        async with self._read(conn) as c:
            rows = await c.execute(select(servers.c.id, servers.c.name, servers.c.description, servers.c.tags))
            return [RegistryServerSource(row.id, row.name, row.description, tuple(row.tags or ()))
                    for row in rows]

    async def rewrite_embeddings(self, embeddings: Mapping[str, bytes], conn: AsyncConnection | None = None) -> None:
        """Store new server embeddings (by server id), into vector tables that were just
        recreated empty (:meth:`~mcp_optimizer.db.meta_ops.IndexMetaOps.recreate_vector_tables`)."""
        if not embeddings:
            return
        async with self._tx(conn) as c:
            await c.execute(
                update(servers).where(servers.c.id == bindparam("sid")).values(server_embedding=bindparam("e")),
                [{"sid": sid, "e": e} for sid, e in embeddings.items()])
            await self.backend.insert_vectors(c, REGISTRY_SERVER_VECTOR, [
                {"server_id": sid, "embedding": e} for sid, e in embeddings.items()])

    async def catalogs(self, conn: AsyncConnection | None = None) -> set[str]:
        async with self._read(conn) as c:
            return set((await c.execute(select(servers.c.catalog).distinct())).scalars())

    async def find_matching_servers(
        self, *, url: str | None, package: str | None, remote: bool, conn: AsyncConnection | None = None
    ) -> Sequence[RegistryServerRecord]:
        """Registry servers of the same type whose normalised identifier equals the given one.

        Matching never crosses types: a remote workload only ever matches remote entries by URL,
        a container workload only container entries by image repository (tag and digest ignored).
        """
        url_key, package_key = identifier_keys(remote, url, package)
        query = select(servers).where(servers.c.remote == remote).order_by(servers.c.catalog, servers.c.name)
        query = query.where(servers.c.url_key == url_key) if remote else query.where(
            servers.c.package_key == package_key)
        return await self._all(RegistryServerRecord, query, conn)

    async def _sync_vector(self, c: AsyncConnection, server_id: str, embedding: bytes | None) -> None:
        await c.execute(text(f"DELETE FROM {REGISTRY_SERVER_VECTOR} WHERE server_id = :id"), {"id": server_id})
        if embedding is not None:
            await self.backend.insert_vectors(c, REGISTRY_SERVER_VECTOR,
                                              [{"server_id": server_id, "embedding": embedding}])


class RegistryToolOps(ToolOps):
    """``tools_registry`` with ``registry_tool_vectors`` and ``registry_tool_fts``."""

    table = tools
    server_table = servers
    vector_table = REGISTRY_TOOL_VECTORS
    fts_table = REGISTRY_TOOL_FTS
