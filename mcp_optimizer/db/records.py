"""What the ops classes return and take: typed records of the index's rows.

A read returns frozen dataclasses whose attributes are the table's columns (``server.url_key``,
``tool.details_embedding``), so callers and mypy know every field and its type, and a record
cannot change under the code that holds it. A write takes a :class:`~typing.TypedDict` of the
columns it sets, so a misspelt or mistyped column is a type error, not a row that silently
lacks it.

The records mirror :mod:`mcp_optimizer.db.models` column for column; a test holds them equal,
so a migration that adds a column must add it here too. Below them are the smaller frozen
dataclasses the ops classes take and return where a whole row is not what is meant: a tool to
store, the few columns a planning read or a change of model needs, what an unlinked workload
falls back to (decided in ``mcp_optimizer.ingest``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Self, TypedDict

from sqlalchemy import Row


class Record:
    """``of(row)``: a record from a SQLAlchemy row (or any mapping) holding at least its columns."""

    __slots__ = ()

    @classmethod
    def of(cls, row: Row[Any] | Mapping[str, Any]) -> Self:
        mapping = row._mapping if isinstance(row, Row) else row
        return cls(**{name: mapping[name] for name in _field_names(cls)})


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class RegistryServerRecord(Record):
    """A row of ``mcpservers_registry``: one entry of a catalog."""

    id: str
    catalog: str
    name: str
    remote: bool
    url: str | None
    url_key: str | None
    package: str | None
    package_key: str | None
    transport: str | None
    description: str
    tags: list[str]
    server_embedding: bytes | None
    group: str | None
    content_hash: str
    created_at: datetime
    last_updated: datetime


@dataclass(frozen=True, slots=True)
class WorkloadServerRecord(Record):
    """A row of ``mcpservers_workload``: one MCP server that runs (see the model for each column)."""

    id: str
    workload_name: str
    name: str
    remote: bool
    url: str | None
    url_key: str | None
    package: str | None
    package_key: str | None
    transport: str
    endpoint: str | None
    status: str
    runtime_status: str
    status_reason: str | None
    index_error: str | None
    registry_server_id: str | None
    registry_server_name: str | None
    registry_catalog: str | None
    registry_ref_catalog: str | None
    registry_ref_name: str | None
    description: str
    server_embedding: bytes | None
    embedding_context: str | None
    group: str
    namespace: str | None
    created_at: datetime
    last_updated: datetime


@dataclass(frozen=True, slots=True)
class ToolRecord(Record):
    """A row of ``tools_registry`` or ``tools_workload``: one MCP tool of a server."""

    id: int
    server_id: str
    name: str
    #: The MCP tool object: name, description, inputSchema (and annotations when given).
    details: dict[str, Any]
    details_embedding: bytes | None
    #: Hash of the text that was embedded: an unchanged tool is not embedded again.
    embedding_hash: str | None
    created_at: datetime
    last_updated: datetime


class RegistryServerColumns(TypedDict):
    """What a catalog entry sets on its registry server (:meth:`RegistryServerOps.create`,
    ``create_many`` and ``update``); the keys, the id and the times are the ops' own."""

    name: str
    remote: bool
    url: str | None
    package: str | None
    transport: str | None
    description: str
    tags: list[str]
    server_embedding: bytes | None
    content_hash: str


class WorkloadServerColumns(TypedDict):
    """What the Indexer sets on a workload server at each sync (:meth:`WorkloadServerOps.create`
    and ``update``); the workload name, keys, id and times are the ops' own."""

    name: str
    remote: bool
    url: str | None
    package: str | None
    endpoint: str | None
    transport: str
    status: str
    runtime_status: str
    status_reason: str | None
    index_error: str | None
    registry_server_id: str | None
    registry_server_name: str | None
    registry_catalog: str | None
    registry_ref_catalog: str | None
    registry_ref_name: str | None
    description: str
    server_embedding: bytes | None
    embedding_context: str | None
    group: str
    namespace: str | None


# What the ops classes take and return beside whole rows: what to store, and the few columns
# a planning read or a re-embedding needs.


@dataclass(frozen=True)
class ToolRow:
    """A tool to store: its MCP object, its embedding (or None), the hash of its embedding text
    and the server name it is embedded and full-text indexed with (part of that text)."""

    name: str
    details: dict[str, Any]
    embedding: bytes | None
    embedding_hash: str | None
    context: str = ""


@dataclass(frozen=True)
class ToolSource:
    """What a stored tool's embedding text is made from (the caller builds the text)."""

    id: int
    server_id: str
    details: dict[str, Any]
    server_name: str
    #: The name a workload's tools were embedded with (None on the registry side: its server's name).
    embedding_context: str | None = None


@dataclass(frozen=True)
class ToolEmbedding:
    """A stored tool's new embedding and the hash of the text it was made from."""

    id: int
    server_id: str
    embedding: bytes
    embedding_hash: str


@dataclass(frozen=True)
class ToolSyncResult:
    added: int
    updated: int
    removed: int
    unchanged: int


@dataclass(frozen=True)
class RegistryServerSource:
    """What a registry server's embedding text is made from (the caller builds the text)."""

    id: str
    name: str
    description: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class LinkedWorkload:
    """A workload as unlinking it needs it: its names, and the filter columns its server vector
    row carries (rewritten with the fallback vector)."""

    id: str
    workload_name: str
    name: str
    status: str
    group: str | None
    namespace: str | None


@dataclass(frozen=True)
class Fallback:
    """What an unlinked workload falls back to (decided by the caller: ``mcp_optimizer.ingest.links``)."""

    workload: LinkedWorkload
    description: str
    server_embedding: bytes | None


@dataclass(frozen=True)
class WorkloadServerSource:
    """What a workload's server vector is made from: its registry server's, else its tools', else
    its own ``description`` embedded."""

    id: str
    registry_server_id: str | None
    description: str


@dataclass(frozen=True)
class ToolVector:
    """A stored tool and its embedding (None: not embedded), as a fallback mean-pools them."""

    server_id: str
    details: dict[str, Any]
    embedding: bytes | None


@dataclass(frozen=True)
class IndexRowCounts:
    """Rows of the index: workload servers and tools by (their server's) status, registry
    servers and tools by catalog."""

    workload_servers: dict[str, int] = field(default_factory=dict)
    workload_tools: dict[str, int] = field(default_factory=dict)
    registry_servers: dict[str, int] = field(default_factory=dict)
    registry_tools: dict[str, int] = field(default_factory=dict)
