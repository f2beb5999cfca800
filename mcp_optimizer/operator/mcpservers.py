"""MCPServer handlers: index, resume/create/update, delete (finalizer), DELETED events, resync timer.

Every handler reads the object into a :class:`~mcp_optimizer.operator.mapping.ServerView` and
hands it to the :class:`~mcp_optimizer.operator.workloads.WorkloadReconciler`; what they add is
kopf's error semantics:

* an invalid spec is reported and raised as :class:`kopf.PermanentError` (no retry loop: only a
  spec change, which is a new handler call, can fix it);
* a failed ``tools/list`` or any unexpected error is raised as :class:`kopf.TemporaryError` with
  an exponential delay, so kopf retries with backoff;
* deletion retries a bounded number of times and then lets the object go: a finalizer must never
  keep an object forever (rows left behind are removed by the garbage collector);
* an object that disappears without our finalizer (someone stripped it) has its rows removed
  on the DELETED watch event.

The update handler is filtered on ``spec``: status writes (ours) and metadata changes do not
re-run it, so writing status cannot start a reconcile loop.
"""

from __future__ import annotations

from typing import Any

import kopf
from sqlalchemy.exc import DBAPIError

from mcp_optimizer.db.health import describe
from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION, ServerView, parse_server
from mcp_optimizer.operator.workloads import Outcome, WorkloadReconciler, backoff

#: kopf retries of a failing create/update/resume handler before it gives up until the next
#: change (the resync timer keeps trying at its own pace).
SYNC_RETRIES = 10
#: Attempts to delete an MCPServer's rows before its finalizer is released anyway.
DELETE_ATTEMPTS = 5


def index_server(*, body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, ServerView]:
    """kopf index ``mcpservers_by_namespace``: namespace -> views, for the pod fast path."""
    return {namespace or "": parse_server(body)}


async def reconcile_server(*, body: kopf.Body, memo: Any, retry: int, **_: Any) -> None:
    """Create, resume and spec change: a full sync, reading tools if the server runs."""
    await _sync(body, memo.reconciler, retry=retry, retrying=True)


async def resync_server(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Periodic resync: re-read tools (unchanged tools are not re-embedded) and pod status."""
    try:
        await _sync(body, memo.reconciler, retry=0, retrying=False)
    except kopf.PermanentError:
        pass  # already reported by the change handlers
    except Exception as exc:  # the timer must keep ticking; the next tick retries
        logger.warning("Resync failed: %s", exc)


async def delete_server(*, body: kopf.Body, memo: Any, retry: int, logger: kopf.Logger, **_: Any) -> None:
    """Remove the workload's rows. Gives up after :data:`DELETE_ATTEMPTS` so deletion never hangs."""
    reconciler: WorkloadReconciler = memo.reconciler
    try:
        await reconciler.forget(parse_server(body))
    except Exception as exc:
        if retry + 1 >= DELETE_ATTEMPTS:
            logger.error(
                "Could not remove the index rows after %d attempts (%s); releasing the finalizer "
                "anyway. The garbage collector removes the rows later.",
                retry + 1,
                _reason(exc),
            )
            return
        raise kopf.TemporaryError(f"removing the index rows failed: {_reason(exc)}", delay=backoff(retry)) from exc


async def server_event(*, type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    """An MCPServer vanished without our finalizer (it was stripped): remove its rows now."""
    if type == "DELETED":
        reconciler: WorkloadReconciler = memo.reconciler
        await reconciler.forget(parse_server(body))


async def _sync(body: kopf.Body, reconciler: WorkloadReconciler, *, retry: int, retrying: bool) -> None:
    view = parse_server(body)
    try:
        outcome = await reconciler.sync(view, read_tools=True, current_status=body.get("status"))
    except (kopf.PermanentError, kopf.TemporaryError):
        raise
    except Exception as exc:
        raise kopf.TemporaryError(f"sync failed: {_reason(exc)}", delay=backoff(retry)) from exc
    if outcome is Outcome.INVALID:
        raise kopf.PermanentError(f"invalid spec: {view.spec_error or 'rejected by the index'}")
    if outcome is Outcome.TOOLS_FAILED and retrying:
        raise kopf.TemporaryError("tools/list failed; see the ToolsIndexed condition", delay=backoff(retry))


def _reason(exc: BaseException) -> str:
    """An error for logs and kopf's Events: a database error without its SQL and parameters."""
    return describe(exc) if isinstance(exc, DBAPIError) else str(exc)


def register(registry: kopf.OperatorRegistry, *, resync_interval: float) -> None:
    """Register the MCPServer handlers in ``registry``."""
    resource = (GROUP, VERSION, PLURAL)
    kopf.index(*resource, id="mcpservers_by_namespace", registry=registry)(index_server)
    kopf.on.resume(*resource, id="sync-on-resume", retries=SYNC_RETRIES, registry=registry)(reconcile_server)
    kopf.on.create(*resource, id="sync-on-create", retries=SYNC_RETRIES, registry=registry)(reconcile_server)
    # Filtered on spec: our status writes and kopf's own annotations do not re-run it.
    kopf.on.update(*resource, id="sync-on-update", field="spec", retries=SYNC_RETRIES, registry=registry)(
        reconcile_server
    )
    kopf.on.delete(*resource, id="remove", registry=registry)(delete_server)
    kopf.on.event(*resource, id="removed", registry=registry)(server_event)
    kopf.timer(
        *resource,
        id="resync",
        interval=resync_interval,
        initial_delay=resync_interval,
        registry=registry,
    )(resync_server)
