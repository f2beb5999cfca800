"""Full-text rows carry the server name and the whole argument schema; the index records its model.

The FTS5 tables get a fourth column, ``server`` (the name a tool is embedded with), and the
``args`` column now also holds enum values and nested properties (see
``mcp_optimizer.embeddings.texts.tool_fts_fields``). Every FTS row is rebuilt from the stored
tool details, so nothing is re-embedded and nothing is lost. ``index_meta`` records which
embedding model made the stored vectors: an index with vectors was made by
all-MiniLM-L6-v2 (the only model before this revision).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcp_optimizer.db.fts import fill_fts, rebuild_fts

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_MINILM = "sentence-transformers/all-MiniLM-L6-v2|dim=384|passage=''"
_OLD_FTS = ("CREATE VIRTUAL TABLE {table} USING fts5(name, description, args, "
            "tokenize = 'porter unicode61 remove_diacritics 2')")


def upgrade() -> None:
    op.create_table(
        "index_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_index_meta")),
    )
    bind = op.get_bind()
    has_vectors = bind.execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM tools_workload WHERE details_embedding IS NOT NULL) "
        "OR EXISTS (SELECT 1 FROM tools_registry WHERE details_embedding IS NOT NULL)")).scalar()
    if has_vectors:
        bind.execute(sa.text("INSERT INTO index_meta (key, value) VALUES ('embedding_model', :m)"), {"m": _MINILM})
    if bind.dialect.name == "sqlite":  # PostgreSQL's keyword tables are made in this shape (0001)
        rebuild_fts(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_table("index_meta")
        return
    for table in ("registry_tool_fts", "workload_tool_fts"):
        bind.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        bind.execute(sa.text(_OLD_FTS.format(table=table)))
    # The old columns, filled by today's rules (their args also hold enum values; harmless).
    fill_fts(bind, ("name", "description", "args"))
    op.drop_table("index_meta")
