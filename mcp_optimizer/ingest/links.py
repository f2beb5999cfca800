"""What a workload's server vector and description are, linked to a registry entry or not.

One rule wherever the index (re)computes them: a sync (:meth:`Indexer.apply_workload`), a
registry delete that unlinks workloads (:meth:`Indexer.delete_registry_servers`, in the same
transaction as the delete, so no commit shows a workload carrying a deleted entry's text or
vector) and a change of model (:meth:`Indexer.ensure_embedding_model`). db/ only stores what
these decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp_optimizer.db.records import Fallback, LinkedWorkload, ToolVector
from mcp_optimizer.embeddings import from_bytes, mean_pool, to_bytes
from mcp_optimizer.embeddings.texts import own_description


def server_vector(
    *, linked: bool, registry_vector: bytes | None, tool_vectors: Sequence[bytes], own_vector: bytes | None
) -> bytes | None:
    """A workload's server vector: its registry entry's while linked (None if the entry has
    none), else the mean of its tool vectors, else its own description embedded
    (``own_vector``; None when it was not: the next sync embeds it)."""
    if linked:
        return registry_vector
    if tool_vectors:
        return to_bytes(mean_pool([from_bytes(v) for v in tool_vectors]))
    return own_vector


def fallbacks(workloads: Sequence[LinkedWorkload], tools: Sequence[ToolVector]) -> list[Fallback]:
    """What workloads unlinked from their registry entry fall back to, from their stored tools
    alone: their own description and the mean of their tool vectors. No model call: a registry
    delete stays one short transaction (the re-match after it embeds whatever is missing)."""
    details: dict[str, list[dict[str, Any]]] = {w.id: [] for w in workloads}
    vectors: dict[str, list[bytes]] = {w.id: [] for w in workloads}
    for tool in tools:
        details[tool.server_id].append(tool.details)
        if tool.embedding is not None:
            vectors[tool.server_id].append(tool.embedding)
    return [
        Fallback(w, own_description(w.name, details[w.id]),
                 server_vector(linked=False, registry_vector=None, tool_vectors=vectors[w.id], own_vector=None))
        for w in workloads
    ]
