"""The sqlite-vec and FTS5 tables that sit beside each base table.

They are not SQLAlchemy models (virtual tables have no place in the metadata); migrations
create them with the DDL below and the ops class owning a base table keeps its virtual
tables in sync in the same transaction.

Tool vector and FTS rows use the tool's integer id as their rowid, so deleting a tool's rows
is a primary-key lookup. Workload tool vectors carry ``status``, ``grp`` and ``namespace`` as
vec0 metadata columns: the KNN query filters on them inside sqlite-vec, so a search never
returns fewer hits because stopped servers' tools crowded the top k.
"""

from __future__ import annotations

from mcp_optimizer.embeddings import EMBEDDING_DIM

# porter stems English words; unicode61 folds case and diacritics for every script.
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"

REGISTRY_SERVER_VECTOR = "registry_server_vector"
REGISTRY_TOOL_VECTORS = "registry_tool_vectors"
WORKLOAD_SERVER_VECTOR = "workload_server_vector"
WORKLOAD_TOOL_VECTORS = "workload_tool_vectors"
REGISTRY_TOOL_FTS = "registry_tool_fts"
WORKLOAD_TOOL_FTS = "workload_tool_fts"


#: The FTS5 columns of a tool row, in order (see ``embeddings.texts.tool_fts_fields``); the
#: BM25 column weights in ``db.search`` follow this order.
FTS_COLUMNS = ("name", "description", "args", "server")


def vector_table_ddl(dim: int = EMBEDDING_DIM) -> list[str]:
    """CREATE statements for the sqlite-vec tables, for vectors of ``dim`` dimensions."""
    vector = f"embedding float[{dim}] distance_metric=cosine"
    return [
        f"CREATE VIRTUAL TABLE {REGISTRY_SERVER_VECTOR} USING vec0(server_id text primary key, {vector})",
        f"CREATE VIRTUAL TABLE {REGISTRY_TOOL_VECTORS} USING vec0({vector}, server_id text)",
        f"CREATE VIRTUAL TABLE {WORKLOAD_SERVER_VECTOR} USING vec0(server_id text primary key, {vector}, "
        "status text, grp text, namespace text)",
        f"CREATE VIRTUAL TABLE {WORKLOAD_TOOL_VECTORS} USING vec0({vector}, "
        "server_id text, status text, grp text, namespace text)",
    ]


def fts_table_ddl() -> list[str]:
    """CREATE statements for the FTS5 tables (the current columns, :data:`FTS_COLUMNS`)."""
    columns = ", ".join(FTS_COLUMNS)
    return [f"CREATE VIRTUAL TABLE {table} USING fts5({columns}, tokenize = '{FTS_TOKENIZER}')"
            for table in (REGISTRY_TOOL_FTS, WORKLOAD_TOOL_FTS)]


VECTOR_TABLES = (REGISTRY_SERVER_VECTOR, REGISTRY_TOOL_VECTORS, WORKLOAD_SERVER_VECTOR, WORKLOAD_TOOL_VECTORS)
FTS_TABLES = (REGISTRY_TOOL_FTS, WORKLOAD_TOOL_FTS)
VIRTUAL_TABLES = (*VECTOR_TABLES, *FTS_TABLES)
