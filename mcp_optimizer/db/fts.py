"""Rebuilding the FTS5 rows from the stored tool details (what migrations that change the
full-text row call): no model, no re-embedding, nothing read from outside the index."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from mcp_optimizer.db.virtual import FTS_COLUMNS, FTS_TABLES, REGISTRY_TOOL_FTS, WORKLOAD_TOOL_FTS, fts_table_ddl
from mcp_optimizer.embeddings.texts import tool_fts_fields

#: (FTS table, SELECT of tool id, details and the server name the tool is embedded with)
_SOURCES = (
    (REGISTRY_TOOL_FTS, "SELECT t.id, t.details, s.name FROM tools_registry t "
                        "JOIN mcpservers_registry s ON s.id = t.server_id"),
    (WORKLOAD_TOOL_FTS, "SELECT t.id, t.details, coalesce(s.embedding_context, s.name) FROM tools_workload t "
                        "JOIN mcpservers_workload s ON s.id = t.server_id"),
)


def rebuild_fts(connection: Any) -> None:
    """Drop and recreate the FTS5 tables with the current columns and fill them (a sync connection)."""
    for table in FTS_TABLES:
        connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    for statement in fts_table_ddl():
        connection.execute(text(statement))
    fill_fts(connection, FTS_COLUMNS)


def fill_fts(connection: Any, columns: Sequence[str]) -> None:
    """Insert every tool's FTS row into the (empty) FTS5 tables, which have ``columns``."""
    for table, select in _SOURCES:
        rows = []
        for tool_id, details, context in connection.execute(text(select)):
            fields = dict(zip(FTS_COLUMNS, tool_fts_fields(
                json.loads(details) if isinstance(details, str) else details, context or ""), strict=True))
            rows.append({"id": tool_id, **{c: fields[c] for c in columns}})
        if rows:
            connection.execute(text(f"INSERT INTO {table}(rowid, {', '.join(columns)}) "
                                    f"VALUES (:id, {', '.join(':' + c for c in columns)})"), rows)
