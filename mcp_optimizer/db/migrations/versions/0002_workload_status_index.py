"""Index workload status: every search and listing filters on RUNNING.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_mcpservers_workload_status"), "mcpservers_workload", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mcpservers_workload_status"), table_name="mcpservers_workload")
