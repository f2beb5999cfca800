"""The one rule for the status a workload is searched under, used by the Indexer when it writes
a workload or its cluster status, and by the operator when it writes the MCPServer's status."""

from __future__ import annotations

from mcp_optimizer.vocabulary import WorkloadStatus


def effective_status(
    runtime: WorkloadStatus, reason: str | None, index_error: str | None
) -> tuple[WorkloadStatus, str | None]:
    """The status and its reason: a problem the index has with the workload (a duplicate
    registry entry, an embedding failure) makes it ERROR, with the problem as the reason,
    whatever the cluster says (``runtime``, ``reason``); without one, the cluster's."""
    if index_error:
        return WorkloadStatus.ERROR, index_error
    return runtime, reason
