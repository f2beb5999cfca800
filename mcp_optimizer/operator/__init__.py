"""The Kubernetes operator: kopf reconciles MCPServers, registry catalogs and pod phase into the index.

Modules: :mod:`.mapping` (pure translations), :mod:`.status` (status, conditions, Events),
:mod:`.workloads` (the reconciler every handler shares), :mod:`.mcpservers`, :mod:`.pods` and
:mod:`.catalogs` (kopf handlers), :mod:`.cluster` (credentials, listings) and :mod:`.runner`
(:func:`run_operator`).
"""

from mcp_optimizer.operator.runner import run_operator

__all__ = ["run_operator"]
