"""Registry servers and registry tools (the catalog side of the index)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.db.base import Ops, ToolOps, ToolRow, identifier_keys
from mcp_optimizer.db.models import REGISTRY_SERVERS, REGISTRY_TOOLS, WORKLOAD_SERVERS, new_id, utcnow
from mcp_optimizer.db.records import RegistryServerColumns, RegistryServerRecord
from mcp_optimizer.db.virtual import REGISTRY_SERVER_VECTOR, REGISTRY_TOOL_FTS, REGISTRY_TOOL_VECTORS
from mcp_optimizer.db.workload_ops import WorkloadServerOps

servers = REGISTRY_SERVERS
tools = REGISTRY_TOOLS


class RegistryServerOps(Ops):
    """``mcpservers_registry`` and its vector table ``registry_server_vector``."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.tools = RegistryToolOps(engine)
        self.workloads = WorkloadServerOps(engine)

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

    async def delete(self, server_id: str, conn: AsyncConnection | None = None) -> list[str]:
        """Delete a registry server and its tools; its linked workloads are unlinked and fall back
        to their own description and mean-pooled embedding. Returns the unlinked workload ids."""
        return await self.delete_many([server_id], conn)

    async def delete_many(self, server_ids: Sequence[str], conn: AsyncConnection | None = None) -> list[str]:
        """:meth:`delete` for many servers in a fixed number of statements (a catalog delete)."""
        if not server_ids:
            return []
        async with self._tx(conn) as c:
            linked = list((await c.execute(select(WORKLOAD_SERVERS.c.id).where(
                WORKLOAD_SERVERS.c.registry_server_id.in_(server_ids)))).scalars())
            await self.workloads.remove_registry_relationships(linked, c)
            await self.tools.delete_by_servers(server_ids, c)
            await c.execute(text(f"DELETE FROM {REGISTRY_SERVER_VECTOR} WHERE server_id = :id"),
                            [{"id": server_id} for server_id in server_ids])
            await c.execute(delete(servers).where(servers.c.id.in_(server_ids)))
        return linked

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
    vector_table = REGISTRY_TOOL_VECTORS
    fts_table = REGISTRY_TOOL_FTS
