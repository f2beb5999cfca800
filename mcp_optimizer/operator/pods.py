"""Pods: the fast path from a pod phase change to the index's status filter.

kopf keeps an in-memory index of every watched pod's :class:`~mcp_optimizer.operator.mapping.PodState`
per namespace (rebuilt from a full list at start, before any handler runs), and the MCPServers'
selectors in another. A pod event re-evaluates only the container servers whose selector matches
the pod now or matched it before, and writes a status, never reading tools: a phase change
reaches the index in the time of one SQLite write. Pods are watched, never patched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kopf

from mcp_optimizer.operator.mapping import PodState

if TYPE_CHECKING:
    from mcp_optimizer.operator.runner import OperatorContext


def index_pod(*, body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, PodState]:
    """kopf index ``pods_by_namespace``: namespace -> the status-relevant part of each pod."""
    return {namespace or "": PodState.from_body(body)}


async def pod_event(*, namespace: str | None, name: str, labels: kopf.Labels, memo: OperatorContext, **_: Any) -> None:
    """Any pod event (including DELETED): the index above already reflects it."""
    await memo.reconciler.pods_changed(namespace or "", name, labels)


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the pod index and handler in ``registry``."""
    kopf.index("", "v1", "pods", id="pods_by_namespace", registry=registry)(index_pod)
    kopf.on.event("", "v1", "pods", id="pod-phase", registry=registry)(pod_event)
