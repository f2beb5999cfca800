"""Ingestion: catalogs and workloads into the index, with matching and embedding."""

# The index file's health belongs to the Indexer (it classifies every SQLite error through its
# engine): the operator reaches its vocabulary through here, not through the database layer,
# and so the error type any index write may raise.
from mcp_optimizer.db.engine import DatabaseError
from mcp_optimizer.db.health import FaultKind, IndexFault, IndexHealth, classify, describe
from mcp_optimizer.ingest.errors import (
    DuplicateRegistryServersError,
    IndexError_,
    RegistryNote,
    WorkloadSpecError,
)
from mcp_optimizer.ingest.reader import IndexReader
from mcp_optimizer.ingest.service import (
    CatalogLoadResult,
    Indexer,
    RegistryRef,
    WorkloadResult,
    WorkloadSpec,
)
from mcp_optimizer.ingest.status import effective_status

__all__ = [
    "CatalogLoadResult",
    "DatabaseError",
    "DuplicateRegistryServersError",
    "FaultKind",
    "IndexError_",
    "IndexFault",
    "IndexHealth",
    "IndexReader",
    "Indexer",
    "RegistryNote",
    "RegistryRef",
    "WorkloadResult",
    "WorkloadSpec",
    "WorkloadSpecError",
    "classify",
    "describe",
    "effective_status",
]
