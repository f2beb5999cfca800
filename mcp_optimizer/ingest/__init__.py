"""Ingestion: catalogs and workloads into the index, with matching and embedding."""

from mcp_optimizer.ingest.errors import (
    DuplicateRegistryServersError,
    IndexError_,
    RegistryRefError,
    WorkloadSpecError,
)
from mcp_optimizer.ingest.service import (
    CatalogLoadResult,
    Indexer,
    RegistryRef,
    WorkloadResult,
    WorkloadSpec,
)

__all__ = [
    "CatalogLoadResult",
    "DuplicateRegistryServersError",
    "IndexError_",
    "Indexer",
    "RegistryRef",
    "RegistryRefError",
    "WorkloadResult",
    "WorkloadSpec",
    "WorkloadSpecError",
]
