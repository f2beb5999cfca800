"""One rule decides a workload's server vector and, once unlinked, its description (issue 12):
the registry entry's while linked, else the mean of its tool vectors, else its own description
embedded. ``ingest.links`` states it; a sync, a registry delete and a change of model all use it
(their stories are in test_stories.py and test_models.py)."""

from __future__ import annotations

import numpy as np

from mcp_optimizer.db.records import LinkedWorkload, ToolVector
from mcp_optimizer.embeddings import from_bytes, mean_pool, to_bytes
from mcp_optimizer.ingest.links import fallbacks, server_vector

A = to_bytes(np.array([1.0, 0.0, 0.0], dtype=np.float32))
B = to_bytes(np.array([0.0, 1.0, 0.0], dtype=np.float32))
C = to_bytes(np.array([0.0, 0.0, 1.0], dtype=np.float32))


def linked(workload_id: str, name: str) -> LinkedWorkload:
    return LinkedWorkload(workload_id, f"ns/{name}", name, "RUNNING", "default", "ns")


def test_a_linked_workload_takes_its_entrys_vector_even_none() -> None:
    assert server_vector(linked=True, registry_vector=C, tool_vectors=[A, B], own_vector=B) == C
    # A keyword-only entry has no vector: the workload has none either, whatever its tools have.
    assert server_vector(linked=True, registry_vector=None, tool_vectors=[A, B], own_vector=B) is None


def test_an_unlinked_workload_takes_the_normalised_mean_of_its_tool_vectors() -> None:
    pooled = server_vector(linked=False, registry_vector=C, tool_vectors=[A, B], own_vector=C)
    assert pooled is not None
    assert np.allclose(from_bytes(pooled), mean_pool([from_bytes(A), from_bytes(B)]))
    assert np.isclose(np.linalg.norm(from_bytes(pooled)), 1.0)


def test_without_tool_vectors_its_own_description_vector_or_none() -> None:
    assert server_vector(linked=False, registry_vector=C, tool_vectors=[], own_vector=B) == B
    assert server_vector(linked=False, registry_vector=C, tool_vectors=[], own_vector=None) is None


def test_fallbacks_pool_each_workloads_own_tools_and_name_them() -> None:
    gh, empty, keyword_only = linked("w1", "gh"), linked("w2", "empty"), linked("w3", "kw")
    tools = [
        ToolVector("w1", {"name": "create_issue"}, A),
        ToolVector("w1", {"name": "list_pulls"}, B),
        ToolVector("w3", {"name": "search"}, None),
    ]
    by_id = {f.workload.id: f for f in fallbacks([gh, empty, keyword_only], tools)}
    assert by_id["w1"].description == "MCP server gh with tools: create_issue, list_pulls"
    assert by_id["w1"].server_embedding is not None
    assert np.allclose(from_bytes(by_id["w1"].server_embedding), mean_pool([from_bytes(A), from_bytes(B)]))
    # No tools, or tools without vectors: no vector (no model call under the write lock).
    assert by_id["w2"].description == "MCP server empty" and by_id["w2"].server_embedding is None
    assert by_id["w3"].description == "MCP server kw with tools: search" and by_id["w3"].server_embedding is None
    assert by_id["w1"].workload is gh
