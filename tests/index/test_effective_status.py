"""One rule decides the status a workload is searched under (issue 12): an index problem makes it
ERROR whatever the cluster says; the Indexer's writes and the operator's status follow it."""

from __future__ import annotations

import pytest

from mcp_optimizer.ingest import effective_status
from mcp_optimizer.operator.mapping import RuntimeStatus
from mcp_optimizer.operator.status import IndexProblem, ServerFacts
from mcp_optimizer.vocabulary import WorkloadStatus


@pytest.mark.parametrize("runtime", list(WorkloadStatus))
def test_an_index_error_makes_any_status_error(runtime: WorkloadStatus) -> None:
    assert effective_status(runtime, "PodReady", "duplicate registry entries") == (
        WorkloadStatus.ERROR, "duplicate registry entries")


@pytest.mark.parametrize("runtime", list(WorkloadStatus))
@pytest.mark.parametrize("index_error", [None, ""])
def test_without_one_the_cluster_decides(runtime: WorkloadStatus, index_error: str | None) -> None:
    assert effective_status(runtime, "PodReady", index_error) == (runtime, "PodReady")


def test_the_operator_status_follows_the_rule() -> None:
    running = RuntimeStatus(WorkloadStatus.RUNNING, "PodReady", "pod ready")
    assert ServerFacts(runtime=running).status is WorkloadStatus.RUNNING
    problem = IndexProblem("EmbeddingFailed", "embedding failed: the model is gone")
    assert ServerFacts(runtime=running, index_problem=problem).status is WorkloadStatus.ERROR
    assert ServerFacts().status is WorkloadStatus.STOPPED
    assert ServerFacts(runtime=running, spec_error="spec.url: not a URL").status is WorkloadStatus.ERROR
