"""The index schema: registry servers, workload servers and their tools, in four tables.

Registry data (from catalogs) and workload data (servers that actually run) have separate
lifecycles, so each side has its own server and tool tables and its own vector and
full-text tables (see :mod:`mcp_optimizer.db.virtual`). The only link between the sides is
``mcpservers_workload.registry_server_id``, which SQLite nulls when a registry server goes.

Identifiers are stored twice: as written (``url``, ``package``) and normalised
(``url_key``, ``package_key``, see :mod:`mcp_optimizer.catalog.identity`), which is what
matching compares and what is indexed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mcp_optimizer.vocabulary import WorkloadStatus

__all__ = ["WorkloadStatus"]  # re-exported: the status column's type, and older imports

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RegistryServer(Base):
    """A server listed in a registry catalog, keyed by (catalog, name)."""

    __tablename__ = "mcpservers_registry"
    __table_args__ = (
        UniqueConstraint("catalog", "name"),
        CheckConstraint("(remote AND url_key IS NOT NULL) OR (NOT remote AND package_key IS NOT NULL)",
                        name="identifier_present"),
        # Not unique: real catalogs list aliases (two names, one image) and one server may be in
        # two catalogs. Only a workload matching several entries is a conflict.
        Index(None, "remote", "url_key"),
        Index(None, "remote", "package_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    catalog: Mapped[str] = mapped_column(String(253))
    name: Mapped[str] = mapped_column(String(253))
    remote: Mapped[bool] = mapped_column(Boolean)
    url: Mapped[str | None] = mapped_column(Text)
    url_key: Mapped[str | None] = mapped_column(Text)
    package: Mapped[str | None] = mapped_column(Text)
    package_key: Mapped[str | None] = mapped_column(Text)
    transport: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    server_embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    group: Mapped[str | None] = mapped_column(String(253))
    #: Hash of everything in the catalog entry that affects the index: an unchanged entry is skipped.
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class WorkloadServer(Base):
    """An MCP server that runs, keyed by its workload name (``namespace/name`` in Kubernetes)."""

    __tablename__ = "mcpservers_workload"
    __table_args__ = (
        CheckConstraint("(remote AND url_key IS NOT NULL) OR (NOT remote AND package_key IS NOT NULL)",
                        name="identifier_present"),
        CheckConstraint("status IN ('RUNNING', 'STOPPED', 'ERROR')", name="status_valid"),
        CheckConstraint("runtime_status IN ('RUNNING', 'STOPPED', 'ERROR')", name="runtime_status_valid"),
        Index(None, "remote", "url_key"),
        Index(None, "remote", "package_key"),
        Index(None, "registry_server_id"),
        Index(None, "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workload_name: Mapped[str] = mapped_column(String(512), unique=True)
    name: Mapped[str] = mapped_column(String(253))
    remote: Mapped[bool] = mapped_column(Boolean)
    url: Mapped[str | None] = mapped_column(Text)
    url_key: Mapped[str | None] = mapped_column(Text)
    package: Mapped[str | None] = mapped_column(Text)
    package_key: Mapped[str | None] = mapped_column(Text)
    transport: Mapped[str] = mapped_column(String(32), default="streamable-http")
    #: Where the MCP endpoint is reached; a remote server's URL.
    endpoint: Mapped[str | None] = mapped_column(Text)
    #: What search filters on: ``runtime_status`` unless the index itself has a problem with the
    #: workload (duplicate registry matches, embedding failure), then ERROR.
    status: Mapped[str] = mapped_column(String(16), default=WorkloadStatus.STOPPED.value)
    #: What the cluster says (pod phase, reachability), kept so an index error can clear itself.
    runtime_status: Mapped[str] = mapped_column(String(16), default=WorkloadStatus.STOPPED.value)
    status_reason: Mapped[str | None] = mapped_column(Text)
    #: A problem the index has with this workload (duplicate registry matches, embedding
    #: failure); while set, ``status`` is ERROR whatever the cluster says.
    index_error: Mapped[str | None] = mapped_column(Text)
    registry_server_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("mcpservers_registry.id", ondelete="SET NULL")
    )
    registry_server_name: Mapped[str | None] = mapped_column(String(253))
    registry_catalog: Mapped[str | None] = mapped_column(String(253))
    #: A pinned registry entry (catalog + name) that replaces automatic matching.
    registry_ref_catalog: Mapped[str | None] = mapped_column(String(253))
    registry_ref_name: Mapped[str | None] = mapped_column(String(253))
    #: The effective description: the registry's while linked, the workload's own otherwise.
    description: Mapped[str] = mapped_column(Text)
    server_embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The name the tools were embedded with (registry server name when linked, else own name).
    embedding_context: Mapped[str | None] = mapped_column(String(253))
    group: Mapped[str] = mapped_column(String(253), default="default")
    namespace: Mapped[str | None] = mapped_column(String(253))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class _ToolColumns:
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    #: The MCP tool object: name, description, inputSchema (and annotations when given).
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    details_embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: Hash of the text that was embedded (context + tool text): unchanged tools are not re-embedded.
    embedding_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RegistryTool(_ToolColumns, Base):
    __tablename__ = "tools_registry"
    __table_args__ = (UniqueConstraint("server_id", "name"),)

    server_id: Mapped[str] = mapped_column(String(36), ForeignKey("mcpservers_registry.id", ondelete="CASCADE"))


class WorkloadTool(_ToolColumns, Base):
    __tablename__ = "tools_workload"
    __table_args__ = (
        UniqueConstraint("server_id", "name"),
        # Covers find_tool's token sum: token_count comes after the (possibly long) details in
        # the row, and reading it from the table walks details' overflow pages first.
        Index("ix_tools_workload_server_tokens", "server_id", "token_count"),
    )

    server_id: Mapped[str] = mapped_column(String(36), ForeignKey("mcpservers_workload.id", ondelete="CASCADE"))
    #: Estimated tokens of the tool's definition (:data:`TOOL_TOKENS_SQL`), summed by find_tool.
    token_count: Mapped[int | None] = mapped_column(Integer)


#: ``ceil(len(compact JSON of name, description, inputSchema) / 4)`` of a stored tool's
#: ``details``, computed by SQLite; ``json_object`` writes the same compact JSON as
#: :func:`mcp_optimizer.mcp.tokens.tool_tokens` (a test holds them equal).
TOOL_TOKENS_SQL = (
    "(length(json_object('name', json_extract(details, '$.name'), "
    "'description', coalesce(json_extract(details, '$.description'), ''), "
    "'inputSchema', json(coalesce(json_extract(details, '$.inputSchema'), '{}')))) + 3) / 4"
)


class IndexMeta(Base):
    """Facts about the index as a whole, e.g. which embedding model made its vectors
    (``embedding_model``: the model's fingerprint; absent when no vectors were ever made)."""

    __tablename__ = "index_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# Core Table objects for the ops classes, which use SQL expressions rather than ORM sessions.
REGISTRY_SERVERS = cast(Table, RegistryServer.__table__)
WORKLOAD_SERVERS = cast(Table, WorkloadServer.__table__)
REGISTRY_TOOLS = cast(Table, RegistryTool.__table__)
WORKLOAD_TOOLS = cast(Table, WorkloadTool.__table__)
INDEX_META = cast(Table, IndexMeta.__table__)
#: ``index_meta`` key of the fingerprint (``ModelSpec.fingerprint``) of the model that made the
#: stored vectors.
EMBEDDING_MODEL_KEY = "embedding_model"
