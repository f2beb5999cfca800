"""Store each workload tool's token estimate: find_tool reports the sum on every call.

Computing it from the stored JSON at query time re-serialised every running tool on every
``find_tool``: 10.5 ms of a 17 ms call over 527 real tools, and 275 ms once one server had
stored a 20 MB description (measured in-process, p50 of 40 queries, see bench/RESULTS.md, hostile servers). Summing a column costs neither.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# ceil(len(compact JSON of name, description, inputSchema) / 4), as mcp_optimizer.mcp.tokens
# defines it (kept here verbatim: a migration must not change when the code does).
_TOKENS = (
    "(length(json_object('name', json_extract(details, '$.name'), "
    "'description', coalesce(json_extract(details, '$.description'), ''), "
    "'inputSchema', json(coalesce(json_extract(details, '$.inputSchema'), '{}')))) + 3) / 4"
)


def _tokens(details: object) -> int:
    value = json.loads(details) if isinstance(details, str) else details
    assert isinstance(value, dict)
    definition = {"name": value.get("name"), "description": value.get("description") or "",
                  "inputSchema": value.get("inputSchema") or {}}
    return math.ceil(len(json.dumps(definition, separators=(",", ":"), ensure_ascii=False)) / 4)


def upgrade() -> None:
    # A plain ALTER TABLE: the table keeps its rowids, which its FTS and vector rows share.
    op.add_column("tools_workload", sa.Column("token_count", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # No PostgreSQL index predates this revision with tools in it, except one downgraded
        # past it: its tools get their estimate from the same rule, computed in Python.
        bind = op.get_bind()
        rows = bind.execute(sa.text("SELECT id, details FROM tools_workload")).all()
        if rows:
            bind.execute(sa.text("UPDATE tools_workload SET token_count = :n WHERE id = :id"),
                         [{"id": tool_id, "n": _tokens(details)} for tool_id, details in rows])
    else:
        op.execute(f"UPDATE tools_workload SET token_count = {_TOKENS}")
    # The sum reads the index only: from the table, SQLite would walk each row's details first.
    op.create_index("ix_tools_workload_server_tokens", "tools_workload", ["server_id", "token_count"])


def downgrade() -> None:
    op.drop_index("ix_tools_workload_server_tokens", table_name="tools_workload")
    op.drop_column("tools_workload", "token_count")
