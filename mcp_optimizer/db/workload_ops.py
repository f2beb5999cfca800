"""Workload servers and workload tools (the side of the index that follows what runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.catalog import normalize_image, normalize_url
from mcp_optimizer.db.backends.postgres import tool_token_count
from mcp_optimizer.db.base import Ops, ToolOps, identifier_keys
from mcp_optimizer.db.models import WORKLOAD_SERVERS, WORKLOAD_TOOLS, new_id, utcnow
from mcp_optimizer.db.records import WorkloadServerColumns, WorkloadServerRecord
from mcp_optimizer.db.virtual import WORKLOAD_SERVER_VECTOR, WORKLOAD_TOOL_FTS, WORKLOAD_TOOL_VECTORS
from mcp_optimizer.embeddings import from_bytes, mean_pool, to_bytes
from mcp_optimizer.embeddings.texts import own_description

servers = WORKLOAD_SERVERS
tools = WORKLOAD_TOOLS

#: Columns mirrored into the vec0 metadata of a workload's vector rows (search filters on them).
_FILTER_COLUMNS = ("status", "group", "namespace")


def _metadata(status: str, group: str | None, namespace: str | None) -> dict[str, str]:
    # vec0 metadata columns hold no NULLs; "" stands for "no namespace".
    return {"status": status, "grp": group or "", "namespace": namespace or ""}


class WorkloadServerOps(Ops):
    """``mcpservers_workload`` and its vector table ``workload_server_vector``."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.tools = WorkloadToolOps(engine)

    async def create(
        self, workload_name: str, columns: WorkloadServerColumns, conn: AsyncConnection | None = None
    ) -> str:
        """Insert a workload server; returns its id."""
        server_id = new_id()
        url_key, package_key = identifier_keys(columns["remote"], columns["url"], columns["package"])
        now = utcnow()
        async with self._tx(conn) as c:
            await c.execute(servers.insert().values(
                **columns, id=server_id, workload_name=workload_name, url_key=url_key, package_key=package_key,
                created_at=now, last_updated=now))
            await self._sync_vectors(c, server_id)
        return server_id

    async def update(self, server_id: str, columns: WorkloadServerColumns, conn: AsyncConnection | None = None) -> None:
        """Set a server's columns; keys, the server vector and the tools' filter metadata follow."""
        async with self._tx(conn) as c:
            await self._update_server(c, servers, server_id, columns)
            await self._sync_vectors(c, server_id, tools_too=True)

    async def set_status(
        self, server_id: str, *, status: str, runtime_status: str, reason: str | None,
        conn: AsyncConnection | None = None,
    ) -> None:
        """The fast path for pod phase changes: the row and the vec0 metadata of its tools, nothing else."""
        async with self._tx(conn) as c:
            await c.execute(update(servers).where(servers.c.id == server_id).values(
                status=status, runtime_status=runtime_status, status_reason=reason, last_updated=utcnow()))
            await self._sync_vectors(c, server_id, tools_too=True)

    async def set_embedding(self, server_id: str, embedding: bytes | None, conn: AsyncConnection | None = None) -> None:
        """Store a server's embedding and its vector row (a change of model re-embeds every server)."""
        async with self._tx(conn) as c:
            await c.execute(update(servers).where(servers.c.id == server_id).values(
                server_embedding=embedding, last_updated=utcnow()))
            await self._sync_vectors(c, server_id)

    async def delete(self, server_id: str, conn: AsyncConnection | None = None) -> None:
        """Delete a workload server with its tools; registry servers are untouched."""
        async with self._tx(conn) as c:
            await self.tools.delete_by_server(server_id, c)
            await c.execute(text(f"DELETE FROM {WORKLOAD_SERVER_VECTOR} WHERE server_id = :id"), {"id": server_id})
            await c.execute(delete(servers).where(servers.c.id == server_id))

    async def get_by_id(self, server_id: str, conn: AsyncConnection | None = None) -> WorkloadServerRecord | None:
        return await self._one(WorkloadServerRecord, select(servers).where(servers.c.id == server_id), conn)

    async def get_by_workload_name(
        self, workload_name: str, conn: AsyncConnection | None = None
    ) -> WorkloadServerRecord | None:
        query = select(servers).where(servers.c.workload_name == workload_name)
        return await self._one(WorkloadServerRecord, query, conn)

    async def get_by_url(self, url: str, conn: AsyncConnection | None = None) -> Sequence[WorkloadServerRecord]:
        query = select(servers).where(servers.c.remote.is_(True), servers.c.url_key == normalize_url(url))
        return await self._all(WorkloadServerRecord, query, conn)

    async def get_by_package(self, package: str, conn: AsyncConnection | None = None) -> Sequence[WorkloadServerRecord]:
        query = select(servers).where(servers.c.remote.is_(False), servers.c.package_key == normalize_image(package))
        return await self._all(WorkloadServerRecord, query, conn)

    async def list(
        self,
        *,
        status: str | None = None,
        group: str | None = None,
        registry_server_id: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> Sequence[WorkloadServerRecord]:
        query = select(servers).order_by(servers.c.workload_name)
        if status is not None:
            query = query.where(servers.c.status == status)
        if group is not None:
            query = query.where(servers.c.group == group)
        if registry_server_id is not None:
            query = query.where(servers.c.registry_server_id == registry_server_id)
        return await self._all(WorkloadServerRecord, query, conn)

    async def list_servers_by_registry(
        self, registry_server_id: str, conn: AsyncConnection | None = None
    ) -> Sequence[WorkloadServerRecord]:
        return await self.list(registry_server_id=registry_server_id, conn=conn)

    async def remove_registry_relationship(self, server_id: str, conn: AsyncConnection | None = None) -> None:
        """Unlink a workload from its registry server and fall back to its own description and
        embedding, the mean of its tool embeddings (no model call: this must stay fast)."""
        await self.remove_registry_relationships([server_id], conn)

    async def remove_registry_relationships(
        self, server_ids: Sequence[str], conn: AsyncConnection | None = None
    ) -> None:
        """:meth:`remove_registry_relationship` for many workloads in a fixed number of statements
        (a registry server with many linked workloads is deleted in one short transaction)."""
        if not server_ids:
            return
        async with self._tx(conn) as c:
            rows = (await c.execute(
                select(servers.c.id, servers.c.name, servers.c.status, servers.c.group, servers.c.namespace)
                .where(servers.c.id.in_(server_ids)))).all()
            tool_rows = (await c.execute(
                select(tools.c.server_id, tools.c.details, tools.c.details_embedding)
                .where(tools.c.server_id.in_(server_ids)).order_by(tools.c.server_id, tools.c.name))).all()
            details: dict[str, list[dict[str, Any]]] = {row.id: [] for row in rows}
            vectors: dict[str, list[Any]] = {row.id: [] for row in rows}
            for tool in tool_rows:
                details[tool.server_id].append(tool.details)
                if tool.details_embedding is not None:
                    vectors[tool.server_id].append(from_bytes(tool.details_embedding))
            now = utcnow()
            updates = []
            for row in rows:
                embedding = to_bytes(mean_pool(vectors[row.id])) if vectors[row.id] else None
                updates.append({"sid": row.id, "description": own_description(row.name, details[row.id]),
                                "server_embedding": embedding, "last_updated": now})
            await c.execute(
                update(servers).where(servers.c.id == bindparam("sid")).values(
                    registry_server_id=None, registry_server_name=None, registry_catalog=None,
                    description=bindparam("description"), server_embedding=bindparam("server_embedding"),
                    last_updated=bindparam("last_updated")),
                updates,
            )
            await c.execute(text(f"DELETE FROM {WORKLOAD_SERVER_VECTOR} WHERE server_id = :id"),
                            [{"id": row.id} for row in rows])
            await self.backend.insert_vectors(c, WORKLOAD_SERVER_VECTOR, [
                {"server_id": row.id, "embedding": u["server_embedding"],
                 **_metadata(row.status, row.group, row.namespace)}
                for row, u in zip(rows, updates, strict=True) if u["server_embedding"] is not None])

    async def _sync_vectors(self, c: AsyncConnection, server_id: str, *, tools_too: bool = False) -> None:
        row = (await c.execute(select(servers.c.server_embedding, *(servers.c[n] for n in _FILTER_COLUMNS))
                               .where(servers.c.id == server_id))).first()
        if row is None:
            return
        metadata = _metadata(row.status, row.group, row.namespace)
        await c.execute(text(f"DELETE FROM {WORKLOAD_SERVER_VECTOR} WHERE server_id = :id"), {"id": server_id})
        if row.server_embedding is not None:
            await self.backend.insert_vectors(c, WORKLOAD_SERVER_VECTOR, [
                {"server_id": server_id, "embedding": row.server_embedding, **metadata}])
        if tools_too:
            ids = (await c.execute(select(tools.c.id).where(tools.c.server_id == server_id))).scalars().all()
            if ids:
                await c.execute(
                    text(f"UPDATE {WORKLOAD_TOOL_VECTORS} SET status = :status, grp = :grp, "
                         "namespace = :namespace WHERE rowid = :id"),
                    [{"id": i, **metadata} for i in ids],
                )


class WorkloadToolOps(ToolOps):
    """``tools_workload`` with ``workload_tool_vectors`` (status/group/namespace metadata) and
    ``workload_tool_fts``."""

    table = tools
    vector_table = WORKLOAD_TOOL_VECTORS
    fts_table = WORKLOAD_TOOL_FTS

    async def _after_write(self, c: AsyncConnection, tool_ids: list[int]) -> None:
        # Once per write, so find_tool sums integers instead of re-serialising every tool.
        if not tool_ids:
            return
        tokens_sql = self.backend.tool_tokens_sql()
        if tokens_sql is not None:
            await c.execute(text(f"UPDATE tools_workload SET token_count = {tokens_sql} WHERE id = :id"),
                            [{"id": i} for i in tool_ids])
            return
        rows = (await c.execute(select(tools.c.id, tools.c.details).where(tools.c.id.in_(tool_ids)))).all()
        await c.execute(update(tools).where(tools.c.id == bindparam("tid")).values(token_count=bindparam("n")),
                        [{"tid": row.id, "n": tool_token_count(row.details)} for row in rows])

    async def _vector_metadata(self, conn: AsyncConnection, server_id: str) -> dict[str, Any]:
        row = (await conn.execute(select(servers.c.status, servers.c.group, servers.c.namespace)
                                  .where(servers.c.id == server_id))).first()
        if row is None:
            raise KeyError(f"workload server {server_id} does not exist")
        return _metadata(row.status, row.group, row.namespace)
