"""Workload servers and workload tools (the side of the index that follows what runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_optimizer.catalog import normalize_image, normalize_url
from mcp_optimizer.db.backends.postgres import tool_token_count
from mcp_optimizer.db.base import Ops, ToolOps, identifier_keys
from mcp_optimizer.db.models import WORKLOAD_SERVERS, WORKLOAD_TOOLS, new_id, utcnow
from mcp_optimizer.db.records import (
    Fallback,
    LinkedWorkload,
    ToolVector,
    WorkloadServerColumns,
    WorkloadServerRecord,
    WorkloadServerSource,
)
from mcp_optimizer.db.virtual import WORKLOAD_SERVER_VECTOR, WORKLOAD_TOOL_FTS, WORKLOAD_TOOL_VECTORS
from mcp_optimizer.vocabulary import WorkloadStatus

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

    async def workload_names(self, conn: AsyncConnection | None = None) -> set[str]:
        async with self._read(conn) as c:
            return set((await c.execute(select(servers.c.workload_name))).scalars())

    async def names_pinned_to(self, catalog: str, conn: AsyncConnection | None = None) -> set[str]:
        """Workload names whose pinned registry entry (``registryRef``) is in ``catalog``."""
        async with self._read(conn) as c:
            rows = await c.execute(select(servers.c.workload_name).where(servers.c.registry_ref_catalog == catalog))
            return set(rows.scalars())

    async def names_by_identifier(
        self, url_keys: Sequence[str], package_keys: Sequence[str], conn: AsyncConnection | None = None
    ) -> set[str]:
        """Workload names of remote servers with one of ``url_keys`` and container servers with
        one of ``package_keys`` (normalised identifiers): one statement per non-empty side."""
        names: set[str] = set()
        async with self._read(conn) as c:
            for remote, column, keys in ((True, servers.c.url_key, url_keys), (False, servers.c.package_key,
                                                                                package_keys)):
                if keys:
                    rows = await c.execute(select(servers.c.workload_name)
                                           .where(servers.c.remote == remote, column.in_(sorted(keys))))
                    names.update(rows.scalars())
        return names

    async def linked_to(
        self, registry_server_ids: Sequence[str], conn: AsyncConnection | None = None
    ) -> Sequence[LinkedWorkload]:
        """The workloads linked to these registry servers."""
        return await self._links(servers.c.registry_server_id.in_(list(registry_server_ids)), conn)

    async def links_of(
        self, server_ids: Sequence[str], conn: AsyncConnection | None = None
    ) -> Sequence[LinkedWorkload]:
        """These workloads (by id), as :meth:`store_fallbacks` takes them."""
        return await self._links(servers.c.id.in_(list(server_ids)), conn)

    async def _links(self, where: Any, conn: AsyncConnection | None) -> Sequence[LinkedWorkload]:
        async with self._read(conn) as c:
            rows = await c.execute(select(servers.c.id, servers.c.workload_name, servers.c.name, servers.c.status,
                                          servers.c.group, servers.c.namespace).where(where)
                                   .order_by(servers.c.workload_name))
            return [LinkedWorkload(row.id, row.workload_name, row.name, row.status, row.group, row.namespace)
                    for row in rows]

    async def store_fallbacks(self, fallbacks: Sequence[Fallback], conn: AsyncConnection | None = None) -> None:
        """Unlink workloads from their registry servers and store what they fall back to, with
        their server vector rows, in a fixed number of statements (a registry server with many
        linked workloads is deleted in one short transaction). What they fall back to is the
        caller's decision."""
        if not fallbacks:
            return
        async with self._tx(conn) as c:
            now = utcnow()
            await c.execute(
                update(servers).where(servers.c.id == bindparam("sid")).values(
                    registry_server_id=None, registry_server_name=None, registry_catalog=None,
                    description=bindparam("description"), server_embedding=bindparam("server_embedding"),
                    last_updated=bindparam("last_updated")),
                [{"sid": f.workload.id, "description": f.description, "server_embedding": f.server_embedding,
                  "last_updated": now} for f in fallbacks],
            )
            await c.execute(text(f"DELETE FROM {WORKLOAD_SERVER_VECTOR} WHERE server_id = :id"),
                            [{"id": f.workload.id} for f in fallbacks])
            await self.backend.insert_vectors(c, WORKLOAD_SERVER_VECTOR, [
                {"server_id": f.workload.id, "embedding": f.server_embedding,
                 **_metadata(f.workload.status, f.workload.group, f.workload.namespace)}
                for f in fallbacks if f.server_embedding is not None])

    async def embedding_sources(self, conn: AsyncConnection | None = None) -> Sequence[WorkloadServerSource]:
        """Every workload server with what its server vector is made from (a change of model
        re-embeds them all)."""
        async with self._read(conn) as c:
            rows = await c.execute(select(servers.c.id, servers.c.registry_server_id, servers.c.description))
            return [WorkloadServerSource(row.id, row.registry_server_id, row.description) for row in rows]

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
    server_table = servers
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

    async def vectors_by_server(
        self, server_ids: Sequence[str], conn: AsyncConnection | None = None
    ) -> list[ToolVector]:
        """The tools of these servers with their embeddings, by server then tool name."""
        if not server_ids:
            return []
        async with self._read(conn) as c:
            rows = await c.execute(select(tools.c.server_id, tools.c.details, tools.c.details_embedding)
                                   .where(tools.c.server_id.in_(list(server_ids)))
                                   .order_by(tools.c.server_id, tools.c.name))
            return [ToolVector(row.server_id, row.details, row.details_embedding) for row in rows]

    async def running_token_total(
        self, *, groups: Sequence[str] | None, namespaces: Sequence[str] | None, conn: AsyncConnection | None = None
    ) -> int:
        """``token_count`` summed over the tools of RUNNING workloads in ``groups`` and
        ``namespaces`` (None: any)."""
        query = (
            select(func.coalesce(func.sum(tools.c.token_count), 0))
            .select_from(tools.join(servers, servers.c.id == tools.c.server_id))
            .where(servers.c.status == WorkloadStatus.RUNNING.value)
        )
        if groups is not None:
            query = query.where(servers.c.group.in_(sorted(groups)))
        if namespaces is not None:
            query = query.where(servers.c.namespace.in_(sorted(namespaces)))
        async with self._read(conn) as c:
            return int((await c.execute(query)).scalar_one())

    async def _all_vector_metadata(self, conn: AsyncConnection) -> dict[str, dict[str, Any]]:
        rows = await conn.execute(select(servers.c.id, servers.c.status, servers.c.group, servers.c.namespace))
        return {row.id: _metadata(row.status, row.group, row.namespace) for row in rows}

    async def _vector_metadata(self, conn: AsyncConnection, server_id: str) -> dict[str, Any]:
        row = (await conn.execute(select(servers.c.status, servers.c.group, servers.c.namespace)
                                  .where(servers.c.id == server_id))).first()
        if row is None:
            raise KeyError(f"workload server {server_id} does not exist")
        return _metadata(row.status, row.group, row.namespace)
