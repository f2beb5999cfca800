"""Ingestion: catalogs and workloads into the index, with matching and embedding."""

from mcp_optimizer.ingest.errors import (
    DuplicateRegistryServersError,
    IndexError_,
    RegistryNote,
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
    "RegistryNote",
    "RegistryRef",
    "WorkloadResult",
    "WorkloadSpec",
    "WorkloadSpecError",
]
