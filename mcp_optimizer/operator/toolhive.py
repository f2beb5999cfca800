"""ToolHive's resources (``toolhive.stacklok.dev``), watched read-only beside our own MCPServers.

Only kopf's *watching* handlers are registered for them: an index (views by namespace, for the
reconciler's "is this still the latest version" checks) and an event handler per kind. Never
create/update/resume/delete handlers, timers or daemons: kopf stores their progress and diff base
in annotations and adds finalizers, and ToolHive's objects are not ours to write. So the operator
needs only list and watch on them and leaves no trace on them (tests/k8s/test_toolhive.py checks
it as the operator's ServiceAccount). Tools are re-read by our own periodic task, not a kopf timer.

Which resources are watched is decided before kopf starts
(:meth:`~mcp_optimizer.operator.cluster.ClusterLister.discover_toolhive`), and checked again every
``toolhive_recheck_interval`` by :func:`watch_api`: when the answer changes (ToolHive's CRDs
installed or removed, list permission granted), :func:`~mcp_optimizer.operator.runner.run_operator`
restarts kopf in-process with the new set, while the index and the MCP endpoint stay up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import kopf

from mcp_optimizer.embeddings.texts import text_hash
from mcp_optimizer.operator.callbacks import DiscoverToolHiveFn
from mcp_optimizer.operator.cluster import ToolHiveAPI
from mcp_optimizer.operator.mapping import ServerView
from mcp_optimizer.operator.toolhive_mapping import (
    KINDS_BY_PLURAL,
    PLURALS,
    TOOL_CONFIG,
    TOOLHIVE_GROUP,
    parse_toolhive,
)
from mcp_optimizer.operator.workloads import WorkloadReconciler

if TYPE_CHECKING:
    from mcp_optimizer.operator.runner import OperatorContext

logger = logging.getLogger(__name__)


def index_id(kind: str) -> str:
    """The id of kopf's index of one kind (also the keyword its handlers receive it under)."""
    return f"toolhive_{PLURALS[kind]}_by_namespace"


def _view(body: kopf.Body, resource: kopf.Resource, memo: OperatorContext) -> ServerView:
    kind = KINDS_BY_PLURAL[resource.plural]
    return parse_toolhive(body, kind=kind, version=resource.version, options=memo.lister.toolhive_options)


def index_server(
    *, body: kopf.Body, namespace: str | None, resource: kopf.Resource, memo: OperatorContext, **_: Any
) -> dict[str, ServerView]:
    """kopf index: namespace -> views of one of ToolHive's server kinds."""
    return {namespace or "": _view(body, resource, memo)}


async def server_event(
    *, type: str | None, body: kopf.Body, resource: kopf.Resource, memo: OperatorContext, **_: Any
) -> None:
    """Any event of one of ToolHive's servers, including the initial listing and deletion."""
    reconciler: WorkloadReconciler = memo.reconciler
    view = _view(body, resource, memo)
    if type == "DELETED":
        await reconciler.forget(view)
    else:
        await reconciler.observe(view)


async def tool_config_event(
    *, type: str | None, body: kopf.Body, namespace: str | None, name: str, memo: OperatorContext, **_: Any
) -> None:
    """An MCPToolConfig was created, changed or deleted: the servers that use it read their tools
    again (ToolHive's proxy applies the filter and overrides; a later ``status.toolConfigHash``
    change on the server, once ToolHive applied it, reads them once more)."""
    seen: dict[tuple[str, str], str] = memo.tool_configs
    key = (namespace or "", name)
    digest = text_hash(json.dumps(body.get("spec"), sort_keys=True, default=str))
    before = seen.get(key)
    if type == "DELETED":
        seen.pop(key, None)
    else:
        seen[key] = digest
    if type is None or (type != "DELETED" and before == digest):
        return  # the initial listing, or only its status changed
    reconciler: WorkloadReconciler = memo.reconciler
    names = reconciler.tool_config_changed(namespace or "", name)
    if names:
        logger.info("MCPToolConfig %s/%s changed: reading the tools of %s again", key[0], name, ", ".join(names))


def register(registry: kopf.OperatorRegistry, api: ToolHiveAPI) -> None:
    """Register the read-only handlers for the ToolHive resources ``api`` says are watched."""
    if api.version is None:
        return
    for kind in api.server_kinds:
        resource = (TOOLHIVE_GROUP, api.version, PLURALS[kind])
        kopf.index(*resource, id=index_id(kind), registry=registry)(index_server)
        kopf.on.event(*resource, id=f"toolhive-{PLURALS[kind]}", registry=registry)(server_event)
    if api.tool_configs:
        resource = (TOOLHIVE_GROUP, api.version, PLURALS[TOOL_CONFIG])
        kopf.on.event(*resource, id="toolhive-mcptoolconfigs", registry=registry)(tool_config_event)


#: Seconds a changed answer must stay the same before kopf is restarted: CRDs arrive one by one
#: (a chart installs six), and each restart re-lists everything.
SETTLE = 2.0


async def watch_api(
    current: ToolHiveAPI,
    discover: DiscoverToolHiveFn,
    *,
    interval: float,
    changed: asyncio.Event,
    settle: float = SETTLE,
) -> ToolHiveAPI:
    """Check every ``interval`` seconds which of ToolHive's resources can be watched; once the
    answer differs from ``current`` and holds for ``settle`` seconds, set ``changed`` and return it."""
    found = current
    while True:
        await asyncio.sleep(interval if found.watch_key == current.watch_key else min(settle, interval))
        previous = found
        try:
            found = await discover(current.plurals)
        except Exception as exc:  # the API server is away for a moment: keep the current watches
            logger.warning("Checking ToolHive's API failed (%s); trying again in %.0f s", exc, interval)
            found = previous
            continue
        if found.watch_key != current.watch_key and found.watch_key == previous.watch_key:
            logger.info("ToolHive's API changed; restarting the watches. %s", found.describe())
            changed.set()
            return found


async def resync_loop(reconciler: WorkloadReconciler, interval: float) -> None:
    """Every ``interval`` seconds, re-read the tools of ToolHive's running servers."""
    while True:
        await asyncio.sleep(interval)
        try:
            await reconciler.resync_toolhive()
        except Exception:
            logger.exception("Resync of ToolHive's servers failed; trying again in %.0f s", interval)
