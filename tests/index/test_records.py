"""The typed records the ops classes return and take mirror the schema, column for column.

A migration that adds a column must add it to :mod:`mcp_optimizer.db.records` too; these tests
say so, instead of a record that silently lacks it (or a write that silently drops it).
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

import pytest
from sqlalchemy import Table

from mcp_optimizer.db.models import REGISTRY_SERVERS, REGISTRY_TOOLS, WORKLOAD_SERVERS, WORKLOAD_TOOLS
from mcp_optimizer.db.records import (
    Record,
    RegistryServerColumns,
    RegistryServerRecord,
    ToolRecord,
    WorkloadServerColumns,
    WorkloadServerRecord,
)
from mcp_optimizer.ingest import Indexer

from .helpers import entry, tool, workload

#: Columns the ops classes set themselves: ids, times, normalised keys, the row's own name.
OPS_OWN = {"id", "created_at", "last_updated", "url_key", "package_key"}


def columns(table: Table) -> set[str]:
    return {column.name for column in table.columns}


def field_names(record: type[Record]) -> set[str]:
    return {f.name for f in fields(record)}  # type: ignore[arg-type]


def test_records_have_every_column_of_their_table() -> None:
    assert field_names(RegistryServerRecord) == columns(REGISTRY_SERVERS)
    assert field_names(WorkloadServerRecord) == columns(WORKLOAD_SERVERS)
    # One record for both tool tables: the registry's columns; find_tool reads token_count in SQL.
    assert field_names(ToolRecord) == columns(REGISTRY_TOOLS)
    assert columns(WORKLOAD_TOOLS) - field_names(ToolRecord) == {"token_count"}


def test_writes_set_every_column_but_the_ops_own() -> None:
    assert set(RegistryServerColumns.__annotations__) == columns(REGISTRY_SERVERS) - OPS_OWN - {"catalog", "group"}
    assert set(WorkloadServerColumns.__annotations__) == columns(WORKLOAD_SERVERS) - OPS_OWN - {"workload_name"}


async def test_reads_return_frozen_records_of_the_stored_row(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server:1.0",
                                           tools=["create_issue"])])
    await indexer.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server",
                                          tools=[tool("create_issue", "Create an issue")]))
    registry = await indexer.registry.get_by_name("c", "github")
    server = await indexer.workloads.get_by_workload_name("ns/gh")
    assert isinstance(registry, RegistryServerRecord) and isinstance(server, WorkloadServerRecord)
    assert registry.package_key == server.package_key == "ghcr.io/github/github-mcp-server"
    assert server.registry_server_id == registry.id and server.registry_catalog == "c"
    [stored] = await indexer.workload_tools.list_by_server(server.id)
    assert isinstance(stored, ToolRecord) and stored.details["name"] == "create_issue"
    assert stored.details_embedding is not None and stored.embedding_hash
    with pytest.raises(FrozenInstanceError):
        server.status = "RUNNING"  # type: ignore[misc]
    assert await indexer.workloads.get_by_workload_name("ns/nothing") is None
