"""Facts about the index as a whole: which model made its vectors (``index_meta``), the vector
tables' dimension, how many rows it holds, how much of its file is used, whether it answers."""

from __future__ import annotations

from sqlalchemy import delete, select, text

from mcp_optimizer.db.base import Ops
from mcp_optimizer.db.engine import Connection
from mcp_optimizer.db.models import (
    EMBEDDING_MODEL_KEY,
    INDEX_META,
    REGISTRY_SERVERS,
    REGISTRY_TOOLS,
    WORKLOAD_SERVERS,
    WORKLOAD_TOOLS,
)
from mcp_optimizer.db.records import IndexRowCounts
from mcp_optimizer.db.virtual import VECTOR_TABLES


class IndexMetaOps(Ops):
    """``index_meta`` and the other index-wide reads and writes."""

    async def embedding_model(self, conn: Connection | None = None) -> str | None:
        """The fingerprint of the model that made the stored vectors (None: none recorded)."""
        async with self._read(conn) as c:
            row = await c.execute(select(INDEX_META.c.value).where(INDEX_META.c.key == EMBEDDING_MODEL_KEY))
            return row.scalar()

    async def forget_embedding_model(self, conn: Connection | None = None) -> None:
        async with self._tx(conn) as c:
            await c.execute(delete(INDEX_META).where(INDEX_META.c.key == EMBEDDING_MODEL_KEY))

    async def record_embedding_model(self, fingerprint: str, conn: Connection | None = None) -> None:
        async with self._tx(conn) as c:
            await c.execute(delete(INDEX_META).where(INDEX_META.c.key == EMBEDDING_MODEL_KEY))
            await c.execute(INDEX_META.insert().values(key=EMBEDDING_MODEL_KEY, value=fingerprint))

    async def recreate_vector_tables(self, dim: int, conn: Connection | None = None) -> None:
        """Drop every vector table and create it empty for vectors of ``dim`` dimensions."""
        async with self._tx(conn) as c:
            for name in VECTOR_TABLES:
                await c.execute(text(f"DROP TABLE IF EXISTS {name}"))
            for statement in self.backend.vector_ddl(dim):
                await c.execute(text(statement))

    async def row_counts(self, conn: Connection | None = None) -> IndexRowCounts:
        """What the metrics' index gauges show, in four statements."""
        ws, wt = WORKLOAD_SERVERS.name, WORKLOAD_TOOLS.name
        rs, rt = REGISTRY_SERVERS.name, REGISTRY_TOOLS.name
        queries = {
            "workload_servers": f"SELECT status, COUNT(*) FROM {ws} GROUP BY status",
            "workload_tools": (
                f"SELECT s.status, COUNT(*) FROM {wt} t JOIN {ws} s ON s.id = t.server_id GROUP BY s.status"
            ),
            "registry_servers": f"SELECT catalog, COUNT(*) FROM {rs} GROUP BY catalog",
            "registry_tools": (
                f"SELECT s.catalog, COUNT(*) FROM {rt} t JOIN {rs} s ON s.id = t.server_id GROUP BY s.catalog"
            ),
        }
        counts = IndexRowCounts()
        async with self._read(conn) as c:
            for attr, sql in queries.items():
                rows = (await c.execute(text(sql))).all()
                getattr(counts, attr).update({str(k): int(n) for k, n in rows})
        return counts

    async def used_bytes(self, conn: Connection | None = None) -> int:
        """Bytes of the SQLite file in use (its pages less the free ones): what a size cap
        (``max_page_count``) counts. SQLite only (PRAGMAs)."""
        async with self._read(conn) as c:
            pages = (await c.execute(text("PRAGMA page_count"))).scalar_one()
            free = (await c.execute(text("PRAGMA freelist_count"))).scalar_one()
            size = (await c.execute(text("PRAGMA page_size"))).scalar_one()
        return int((pages - free) * size)

    async def answers(self, conn: Connection | None = None) -> None:
        """Raise unless the index answers a query of its tools table (a reader's readiness)."""
        async with self._read(conn) as c:
            await c.execute(text(f"SELECT 1 FROM {WORKLOAD_TOOLS.name} LIMIT 1"))
