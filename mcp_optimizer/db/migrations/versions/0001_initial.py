"""The initial index: registry and workload servers, their tools, vector and FTS5 tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcp_optimizer.db.virtual import VIRTUAL_TABLES

_PG_FILTERS = "status text NOT NULL, grp text NOT NULL, namespace text NOT NULL"
_PG_VECTOR = "embedding vector(384) NOT NULL"
_PG_COUNTS = ("tf_name integer NOT NULL, tf_description integer NOT NULL, tf_args integer NOT NULL, "
              "tf_server integer NOT NULL")
_POSTGRES_SIDE_TABLES = (
    f"CREATE TABLE registry_server_vector (server_id text PRIMARY KEY, {_PG_VECTOR})",
    f"CREATE TABLE registry_tool_vectors (rowid integer PRIMARY KEY, {_PG_VECTOR}, server_id text NOT NULL)",
    f"CREATE TABLE workload_server_vector (server_id text PRIMARY KEY, {_PG_VECTOR}, {_PG_FILTERS})",
    f"CREATE TABLE workload_tool_vectors (rowid integer PRIMARY KEY, {_PG_VECTOR}, server_id text NOT NULL, "
    f"{_PG_FILTERS})",
    "CREATE INDEX ix_workload_tool_vectors_server_id ON workload_tool_vectors (server_id)",
    *(statement for table in ("registry_tool_fts", "workload_tool_fts") for statement in (
        f"CREATE TABLE {table} (rowid integer PRIMARY KEY, length integer NOT NULL)",
        f"CREATE TABLE {table}_terms (term text NOT NULL, rowid integer NOT NULL, {_PG_COUNTS}, "
        "PRIMARY KEY (term, rowid))",
        f"CREATE INDEX ix_{table}_terms_rowid ON {table}_terms (rowid)",
    )),
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mcpservers_registry',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('catalog', sa.String(length=253), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('remote', sa.Boolean(), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('url_key', sa.Text(), nullable=True),
    sa.Column('package', sa.Text(), nullable=True),
    sa.Column('package_key', sa.Text(), nullable=True),
    sa.Column('transport', sa.String(length=32), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('server_embedding', sa.LargeBinary(), nullable=True),
    sa.Column('group', sa.String(length=253), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(remote AND url_key IS NOT NULL) OR (NOT remote AND package_key IS NOT NULL)', name=op.f('ck_mcpservers_registry_identifier_present')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcpservers_registry')),
    sa.UniqueConstraint('catalog', 'name', name=op.f('uq_mcpservers_registry_catalog_name'))
    )
    op.create_index(op.f('ix_mcpservers_registry_remote_package_key'), 'mcpservers_registry', ['remote', 'package_key'], unique=False)
    op.create_index(op.f('ix_mcpservers_registry_remote_url_key'), 'mcpservers_registry', ['remote', 'url_key'], unique=False)
    op.create_table('mcpservers_workload',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('workload_name', sa.String(length=512), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('remote', sa.Boolean(), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('url_key', sa.Text(), nullable=True),
    sa.Column('package', sa.Text(), nullable=True),
    sa.Column('package_key', sa.Text(), nullable=True),
    sa.Column('transport', sa.String(length=32), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('runtime_status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('index_error', sa.Text(), nullable=True),
    sa.Column('registry_server_id', sa.String(length=36), nullable=True),
    sa.Column('registry_server_name', sa.String(length=253), nullable=True),
    sa.Column('registry_catalog', sa.String(length=253), nullable=True),
    sa.Column('registry_ref_catalog', sa.String(length=253), nullable=True),
    sa.Column('registry_ref_name', sa.String(length=253), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('server_embedding', sa.LargeBinary(), nullable=True),
    sa.Column('embedding_context', sa.String(length=253), nullable=True),
    sa.Column('group', sa.String(length=253), nullable=False),
    sa.Column('namespace', sa.String(length=253), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("runtime_status IN ('RUNNING', 'STOPPED', 'ERROR')", name=op.f('ck_mcpservers_workload_runtime_status_valid')),
    sa.CheckConstraint("status IN ('RUNNING', 'STOPPED', 'ERROR')", name=op.f('ck_mcpservers_workload_status_valid')),
    sa.CheckConstraint('(remote AND url_key IS NOT NULL) OR (NOT remote AND package_key IS NOT NULL)', name=op.f('ck_mcpservers_workload_identifier_present')),
    sa.ForeignKeyConstraint(['registry_server_id'], ['mcpservers_registry.id'], name=op.f('fk_mcpservers_workload_registry_server_id_mcpservers_registry'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcpservers_workload')),
    sa.UniqueConstraint('workload_name', name=op.f('uq_mcpservers_workload_workload_name'))
    )
    op.create_index(op.f('ix_mcpservers_workload_registry_server_id'), 'mcpservers_workload', ['registry_server_id'], unique=False)
    op.create_index(op.f('ix_mcpservers_workload_remote_package_key'), 'mcpservers_workload', ['remote', 'package_key'], unique=False)
    op.create_index(op.f('ix_mcpservers_workload_remote_url_key'), 'mcpservers_workload', ['remote', 'url_key'], unique=False)
    op.create_table('tools_registry',
    sa.Column('server_id', sa.String(length=36), nullable=False),
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('details_embedding', sa.LargeBinary(), nullable=True),
    sa.Column('embedding_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['mcpservers_registry.id'], name=op.f('fk_tools_registry_server_id_mcpservers_registry'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tools_registry')),
    sa.UniqueConstraint('server_id', 'name', name=op.f('uq_tools_registry_server_id_name'))
    )
    op.create_table('tools_workload',
    sa.Column('server_id', sa.String(length=36), nullable=False),
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('details_embedding', sa.LargeBinary(), nullable=True),
    sa.Column('embedding_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['mcpservers_workload.id'], name=op.f('fk_tools_workload_server_id_mcpservers_workload'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tools_workload')),
    sa.UniqueConstraint('server_id', 'name', name=op.f('uq_tools_workload_server_id_name'))
    )
    if op.get_bind().dialect.name == "postgresql":
        # PostgreSQL indexes start at the head schema's shape (pgvector tables and term tables,
        # see mcp_optimizer.db.backends.postgres); later revisions' full-text changes are
        # SQLite's only. Kept here verbatim, like the SQLite DDL below.
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for statement in _POSTGRES_SIDE_TABLES:
            op.execute(statement)
        return
    # The virtual tables as this revision made them (later revisions change them; this one must
    # not follow the current DDL, or upgrading from it would test nothing). The vector dimension
    # is all-MiniLM-L6-v2's; another model re-embeds on open (``Indexer.ensure_embedding_model``).
    vector = "embedding float[384] distance_metric=cosine"
    for statement in (
        f"CREATE VIRTUAL TABLE registry_server_vector USING vec0(server_id text primary key, {vector})",
        f"CREATE VIRTUAL TABLE registry_tool_vectors USING vec0({vector}, server_id text)",
        f"CREATE VIRTUAL TABLE workload_server_vector USING vec0(server_id text primary key, {vector}, "
        "status text, grp text, namespace text)",
        f"CREATE VIRTUAL TABLE workload_tool_vectors USING vec0({vector}, "
        "server_id text, status text, grp text, namespace text)",
        "CREATE VIRTUAL TABLE registry_tool_fts USING fts5(name, description, args, "
        "tokenize = 'porter unicode61 remove_diacritics 2')",
        "CREATE VIRTUAL TABLE workload_tool_fts USING fts5(name, description, args, "
        "tokenize = 'porter unicode61 remove_diacritics 2')",
    ):
        op.execute(statement)


def downgrade() -> None:
    for table in (*VIRTUAL_TABLES, "registry_tool_fts_terms", "workload_tool_fts_terms"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.drop_table("tools_workload")
    op.drop_table("tools_registry")
    op.drop_table("mcpservers_workload")
    op.drop_table("mcpservers_registry")
