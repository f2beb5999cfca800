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

Dead servers: remote servers are probed (``tools/list``) every ``remote_probe_interval`` seconds
by a timer of their own, besides the slower resync of every server; a probe or resync that
fails starts the reconciler's re-probe with backoff. The annotation ``mcp-optimizer.dev/refresh``
forces a re-read: it is seen on the watch stream (kopf's own diff ignores annotations under its
storage prefix, which this one shares), so any new value works, however it was written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kopf

from mcp_optimizer.ingest import DatabaseError, describe
from mcp_optimizer.operator.mapping import GROUP, PLURAL, REFRESH_ANNOTATION, VERSION, ServerView, parse_server
from mcp_optimizer.operator.workloads import Outcome, WorkloadReconciler, backoff

if TYPE_CHECKING:
    from mcp_optimizer.operator.runner import OperatorContext

#: kopf retries of a failing create/update/resume handler before it gives up until the next
#: change (the resync timer keeps trying at its own pace).
SYNC_RETRIES = 10
#: Attempts to delete an MCPServer's rows before its finalizer is released anyway.
DELETE_ATTEMPTS = 5


def index_server(*, body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, ServerView]:
    """kopf index ``mcpservers_by_namespace``: namespace -> views, for the pod fast path."""
    return {namespace or "": parse_server(body)}


async def reconcile_server(*, body: kopf.Body, memo: OperatorContext, retry: int, **_: Any) -> None:
    """Create, resume and spec change: a full sync, reading tools if the server runs."""
    await _sync(body, memo.reconciler, retry=retry, retrying=True)


async def resync_server(*, body: kopf.Body, memo: OperatorContext, logger: kopf.Logger, **_: Any) -> None:
    """Periodic resync: re-read tools (unchanged tools are not re-embedded) and pod status; a
    server that does not answer is re-probed with backoff from then on."""
    await _periodic(body, memo.reconciler, logger, probe=False)


async def probe_server(*, body: kopf.Body, memo: OperatorContext, logger: kopf.Logger, **_: Any) -> None:
    """A remote server's probe: as the resync, on its own short interval."""
    await _periodic(body, memo.reconciler, logger, probe=True)


async def _periodic(body: kopf.Body, reconciler: WorkloadReconciler, logger: kopf.Logger, *, probe: bool) -> None:
    try:
        outcome = await _sync(body, reconciler, retry=0, retrying=False, probe=probe)
    except kopf.PermanentError:
        return  # already reported by the change handlers
    except Exception as exc:  # the timer must keep ticking; the next tick retries
        logger.warning("Resync failed: %s", exc)
        return
    if outcome is Outcome.TOOLS_FAILED:
        reconciler.probe(parse_server(body))


def is_remote(spec: kopf.Spec, **_: Any) -> bool:
    """kopf filter: a remote server (spec.url), probed on its own short interval."""
    return bool(spec.get("url"))


async def delete_server(*, body: kopf.Body, memo: OperatorContext, retry: int, logger: kopf.Logger, **_: Any) -> None:
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


async def server_event(*, type: str | None, body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    """Every watch event: a vanished MCPServer (its finalizer was stripped) loses its rows now;
    a new value of the refresh annotation forces a re-read of its tools."""
    reconciler: WorkloadReconciler = memo.reconciler
    if type == "DELETED":
        await reconciler.forget(parse_server(body))
    elif type is not None:  # None: the initial listing, which the resume handlers cover
        reconciler.refresh_requested(parse_server(body))


async def _sync(
    body: kopf.Body, reconciler: WorkloadReconciler, *, retry: int, retrying: bool, probe: bool = False
) -> Outcome:
    view = parse_server(body)
    try:
        outcome = await reconciler.sync(view, read_tools=True, current_status=body.get("status"), probe=probe)
    except (kopf.PermanentError, kopf.TemporaryError):
        raise
    except Exception as exc:
        raise kopf.TemporaryError(f"sync failed: {_reason(exc)}", delay=backoff(retry)) from exc
    if outcome is Outcome.INVALID:
        raise kopf.PermanentError(f"invalid spec: {view.spec_error or 'rejected by the index'}")
    if outcome is Outcome.TOOLS_FAILED and retrying:
        raise kopf.TemporaryError(
            "tools/list failed; see the ToolsIndexed condition", delay=reconciler.retry_delay(view, retry)
        )
    return outcome


def _deleted_or_refreshable(*, type: str | None, annotations: kopf.Annotations, **_: Any) -> bool:
    """Events :func:`server_event` acts on: deletions, and events of servers that carry the
    refresh annotation (whether its value is new is the reconciler's to tell)."""
    return type == "DELETED" or (type is not None and REFRESH_ANNOTATION in annotations)


def _reason(exc: BaseException) -> str:
    """An error for logs and kopf's Events: a database error without its SQL and parameters."""
    return describe(exc) if isinstance(exc, DatabaseError) else str(exc)


def register(registry: kopf.OperatorRegistry, *, resync_interval: float, probe_interval: float) -> None:
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
    # Not every event: kopf logs "Handler 'removed' succeeded." for every event it runs the
    # handler on (12 of the first 54 lines of a run with three servers).
    kopf.on.event(*resource, id="removed", when=_deleted_or_refreshable, registry=registry)(server_event)
    kopf.timer(
        *resource,
        id="resync",
        interval=resync_interval,
        initial_delay=resync_interval,
        registry=registry,
    )(resync_server)
    kopf.timer(
        *resource,
        id="probe-remote",
        interval=probe_interval,
        initial_delay=probe_interval,
        when=is_remote,
        registry=registry,
    )(probe_server)
