"""Builders for catalog entries, workloads and tools used across the index tests."""

from __future__ import annotations

from typing import Any

from mcp_optimizer.catalog import CatalogEntry, ToolDefinition
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import RegistryRef, WorkloadSpec


def tool(name: str, description: str = "", **props: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description or f"The {name.replace('_', ' ')} tool",
        "inputSchema": {"type": "object",
                        "properties": {k: {"type": "string", "description": v} for k, v in props.items()}},
    }


def entry(name: str, *, url: str | None = None, package: str | None = None, description: str = "",
          tools: list[str] | None = None) -> CatalogEntry:
    return CatalogEntry(
        name=name, remote=url is not None, url=url, package=package, transport="streamable-http",
        description=description or f"The {name} MCP server",
        tools=[ToolDefinition(name=t) for t in (tools or [])],
    )


def workload(workload_name: str, *, url: str | None = None, package: str | None = None,
             tools: list[dict[str, Any]] | None = None, status: WorkloadStatus = WorkloadStatus.RUNNING,
             ref: tuple[str, str] | None = None, group: str = "default", name: str | None = None) -> WorkloadSpec:
    return WorkloadSpec(
        workload_name=workload_name, name=name or workload_name.split("/")[-1], url=url, package=package,
        endpoint=url, status=status, group=group, tools=tools if tools is not None else [],
        registry_ref=RegistryRef(*ref) if ref else None,
    )
