"""Pure rules of readiness and of the status while the index refuses writes."""

from __future__ import annotations

from mcp_optimizer.db.health import FaultKind, IndexFault, IndexHealth
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.operator.mapping import RuntimeStatus
from mcp_optimizer.operator.readiness import Readiness
from mcp_optimizer.operator.status import ServerFacts, render_status, warnings


def test_ready_only_after_the_first_full_pass_and_while_the_index_is_healthy() -> None:
    health = IndexHealth()
    readiness = Readiness(health)
    assert readiness.state() == (False, "starting: catalogs are being loaded")
    readiness.expect({"a/one", "a/two", "b/gone"})
    readiness.catalogs_loaded()
    assert readiness.state() == (False, "first pass: 3 of 3 MCPServers not synced yet")
    readiness.settled("a/one")
    readiness.settled("a/created-later")  # not listed at start: changes nothing
    readiness.keep_only({"a/one", "a/two"})  # b/gone was deleted before kopf resumed it
    assert readiness.state() == (False, "first pass: 1 of 3 MCPServers not synced yet")
    readiness.settled("a/two")
    assert readiness.state() == (True, "ok") and readiness.first_pass_done
    health.report(IndexFault(FaultKind.FULL, "database or disk is full"))
    ready, why = readiness.state()
    assert not ready and why == "the index is being repaired (full: database or disk is full)"
    health.clear()
    assert readiness.state() == (True, "ok")


def test_catalogs_must_be_loaded_even_with_no_mcpservers() -> None:
    readiness = Readiness(IndexHealth())
    readiness.expect(set())
    assert not readiness.state()[0]
    readiness.catalogs_loaded()
    assert readiness.state() == (True, "ok")


def test_a_refused_write_does_not_claim_tools() -> None:
    facts = ServerFacts(generation=2, runtime=RuntimeStatus(WorkloadStatus.RUNNING, "PodRunning", "1 pod running"),
                        tool_count=3, tools_generation=1, identifier="image ghcr.io/acme/x")
    facts.index_unavailable = "database or disk is full"
    status = render_status(facts, now="2026-12-01T00:00:00Z")
    indexed = next(c for c in status["conditions"] if c["type"] == "ToolsIndexed")
    assert (indexed["status"], indexed["reason"]) == ("False", "IndexUnavailable")
    assert "database or disk is full" in indexed["message"] and "3 tools from an earlier write" in indexed["message"]
    assert status["toolCount"] == 3 and status["observedGeneration"] == 2
    # Not a problem of the server's owner: no Warning Event on each MCPServer (the operator's Pod gets one).
    assert warnings(facts) == []
