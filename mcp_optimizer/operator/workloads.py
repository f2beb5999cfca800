"""The one place that writes MCPServers into the index and reports back on them.

:class:`WorkloadReconciler` is shared by the MCPServer handlers (full syncs: spec, pods, tools),
the pod handler (the fast path: a pod phase change becomes a status update, no ``tools/list``)
and the catalog handler (re-matched workloads get their new registry link in their status).

Concurrency: writes for one workload are serialised by a per-workload lock, and each write
reads the *current* pod index and MCPServer index under that lock, so whichever write comes
last leaves the index matching the cluster (level-triggered), whatever order events came in.
``tools/list`` runs outside the lock: a slow MCP server must not delay its pod events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn

from sqlalchemy.exc import DBAPIError

from mcp_optimizer.db.health import describe
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.embeddings import EmbeddingError
from mcp_optimizer.ingest import (
    DuplicateRegistryServersError,
    Indexer,
    RegistryRefError,
    WorkloadResult,
    WorkloadSpecError,
)
from mcp_optimizer.mcp import McpClientError
from mcp_optimizer.mcp import list_tools as mcp_list_tools
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator.mapping import (
    PodState,
    RuntimeStatus,
    ServerView,
    pods_status,
    tools_failed,
    tools_listed,
    workload_spec,
)
from mcp_optimizer.operator.readiness import Readiness
from mcp_optimizer.operator.status import (
    IndexProblem,
    ServerFacts,
    StatusWriter,
    now_rfc3339,
    post_event,
    render_status,
    same_status,
    warnings,
)

logger = logging.getLogger(__name__)

ListTools = Callable[[str, str, float], Awaitable[list[dict[str, Any]]]]

#: Attempts of the background tools read started by a pod turning Running (then the resync timer).
TOOLS_READ_ATTEMPTS = 6
#: How many deleted uids are remembered, to drop late writes for objects already deleted.
_GONE_MEMORY = 10_000


def backoff(retry: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential retry delay: 1, 2, 4, ... seconds, at most ``cap``."""
    return float(min(cap, base * 2 ** min(retry, 16)))


class Outcome(Enum):
    """How a full sync ended; the handlers map these to kopf's retry semantics."""

    OK = "ok"
    #: tools/list failed: reported (ERROR, condition, Event) and worth retrying with backoff.
    TOOLS_FAILED = "tools-failed"
    #: The spec cannot be acted on: reported, not retried (kopf.PermanentError).
    INVALID = "invalid"
    #: The object changed or went away meanwhile; a newer sync takes over.
    STALE = "stale"


class IndexUnavailableError(RuntimeError):
    """The index could not be written (full, damaged, unreadable); the status says so. Retried,
    and the operator's repair re-syncs every MCPServer once the index works again."""


def problem_from(error: BaseException | None) -> IndexProblem | None:
    """An index-level error as the status reports it."""
    if error is None:
        return None
    if isinstance(error, DuplicateRegistryServersError):
        return IndexProblem("DuplicateRegistryEntries", str(error))
    if isinstance(error, RegistryRefError):
        return IndexProblem("RegistryRefInvalid", str(error))
    if isinstance(error, EmbeddingError):
        return IndexProblem("EmbeddingFailed", str(error))
    return IndexProblem("IndexError", str(error))


@dataclass
class _Tracked:
    """The operator's memory of one MCPServer (lost on restart; rebuilt by the resume handlers)."""

    view: ServerView
    facts: ServerFacts
    #: Pods the selector matched at the last evaluation: a pod leaving the selection must be noticed.
    pod_names: frozenset[str] = frozenset()
    #: The status last written (or found on the object), to skip writes that change nothing.
    written: dict[str, Any] | None = None
    warned: set[tuple[str, str]] = field(default_factory=set)
    announced_registry: tuple[str, str] | None = None
    tools_task: asyncio.Task[None] | None = None


class WorkloadReconciler:
    """Keeps the index's workload rows and the MCPServers' status in line with the cluster."""

    def __init__(
        self,
        indexer: Indexer,
        writer: StatusWriter,
        *,
        mcp_timeout: float,
        list_tools: ListTools | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.indexer = indexer
        self.readiness = readiness
        self.writer = writer
        self.mcp_timeout = mcp_timeout
        self._list_tools = list_tools or _default_list_tools
        #: kopf's in-memory indices, attached at startup: namespace -> pods / MCPServer views.
        self.pods: Mapping[str, Iterable[PodState]] = {}
        self.servers: Mapping[str, Iterable[ServerView]] = {}
        self._attached = False
        self._tracked: dict[str, _Tracked] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._gone: OrderedDict[str, None] = OrderedDict()

    def attach(self, *, pods: Mapping[str, Iterable[PodState]], servers: Mapping[str, Iterable[ServerView]]) -> None:
        """Use kopf's live indices (kopf fills them from its watches before any handler runs)."""
        self.pods = pods
        self.servers = servers
        self._attached = True

    # ----------------------------------------------------------------------------------------
    # Full sync: spec + pods + (optionally) tools
    # ----------------------------------------------------------------------------------------

    async def sync(
        self,
        view: ServerView,
        *,
        read_tools: bool,
        current_status: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Bring one MCPServer's workload row and status in line with the cluster.

        ``read_tools``: call ``tools/list`` if the server runs (on create, spec change, resume
        and resync). ``current_status`` is the object's status as found, used after a restart to
        keep condition transition times and to skip writing an unchanged status.
        """
        try:
            with METRICS.reconcile("MCPServer", view.workload_name) as timer:
                outcome = await self._sync(view, read_tools=read_tools, current_status=current_status)
                timer.outcome = outcome.value
                tracked = self._tracked.get(view.workload_name)
                if tracked is not None and outcome is not Outcome.STALE:
                    facts = tracked.facts
                    registry = "/".join(facts.registry) if facts.registry else "none"
                    timer.changes = f"status {facts.status.value}, {facts.tool_count} tools, registry {registry}"
                return outcome
        finally:
            # Synced or failed, this object has had its pass (readiness waits for every one at start).
            if self.readiness is not None:
                self.readiness.settled(view.workload_name)

    async def _sync(
        self,
        view: ServerView,
        *,
        read_tools: bool,
        current_status: Mapping[str, Any] | None = None,
    ) -> Outcome:
        if view.deleting or view.uid in self._gone:
            return Outcome.STALE
        name = view.workload_name
        tracked = self._track(view, current_status)
        if view.spec_error is not None:
            async with self._locks[name]:
                if self._superseded(view):
                    return Outcome.STALE
                return await self._invalid(tracked, view, view.spec_error)

        tools: list[dict[str, Any]] | None = None
        tools_error: str | None = None
        attempted = read_tools and (view.remote or self._pods(view).status is WorkloadStatus.RUNNING)
        if attempted:
            endpoint = view.tools_endpoint
            assert endpoint is not None  # parse_server guarantees it for a valid spec
            try:
                tools = await self._list_tools(endpoint, view.client_transport, self.mcp_timeout)
            except McpClientError as exc:
                tools_error = str(exc)

        async with self._locks[name]:
            if self._superseded(view):
                return Outcome.STALE
            tracked = self._track(view, current_status)
            # What this sync establishes goes into a copy: the status takes it only once the index
            # has committed it, so it never claims tools (or a generation) that were not written.
            facts = dataclasses.replace(tracked.facts)
            if facts.generation != view.generation:
                # A failure of the previous spec says nothing about this one.
                facts.tools_error = None
            facts.generation = view.generation
            facts.spec_error = None
            facts.identifier = f"url {view.url}" if view.remote else f"image {view.image}"
            if attempted:
                if tools_error is not None:
                    facts.tools_error = tools_error
                else:
                    facts.tools_error = None
                    facts.tools_generation = view.generation
            runtime = self._runtime(view, facts, tool_count=len(tools) if tools is not None else None)
            spec = workload_spec(view, status=runtime.status, reason=runtime.message, tools=tools)
            try:
                result = await self.indexer.apply_workload(spec)
            except WorkloadSpecError as exc:
                return await self._invalid(tracked, view, str(exc))
            except (DuplicateRegistryServersError, RegistryRefError) as exc:
                # The index stored the workload as ERROR; a catalog change or a pin resolves it.
                facts.index_problem = problem_from(exc)
                facts.registry = None
                facts.registry_note = None
                if tools is not None:
                    facts.tool_count = len(tools)
            except DBAPIError as exc:
                await self._index_failed(tracked, view, exc)
            else:
                self._absorb(facts, result)
            if attempted and tools_error is None:
                facts.last_sync_time = now_rfc3339()  # the tools read are committed now
            facts.runtime = runtime
            facts.index_unavailable = None
            tracked.facts = facts
            tracked.view = view
            await self._publish(tracked)
        return Outcome.TOOLS_FAILED if tools_error is not None else Outcome.OK

    async def _index_failed(self, tracked: _Tracked, view: ServerView, exc: DBAPIError) -> NoReturn:
        """The index did not take the write: say so in the status (keeping what it does hold), raise."""
        reason = describe(exc)
        tracked.facts.index_unavailable = reason
        tracked.view = view
        await self._publish(tracked)
        raise IndexUnavailableError(f"the index could not be written: {reason}") from exc

    async def _invalid(self, tracked: _Tracked, view: ServerView, message: str) -> Outcome:
        # The cluster holds no valid workload by this name, so the index must not either
        # (an edit from a valid to an invalid spec would otherwise leave the old row searchable).
        await self.indexer.delete_workload(view.workload_name)
        facts = tracked.facts
        facts.generation = view.generation
        facts.spec_error = message
        facts.index_problem = None
        facts.runtime = None
        facts.tool_count = 0
        facts.registry = None
        tracked.view = view
        await self._publish(tracked)
        return Outcome.INVALID

    # ----------------------------------------------------------------------------------------
    # Fast path: pod phase changes
    # ----------------------------------------------------------------------------------------

    async def pods_changed(self, namespace: str, pod_name: str, labels: Mapping[str, str] | None) -> None:
        """A pod changed (or went): update every container server that selects or selected it."""
        for view in list(self.servers.get(namespace, ())):
            if view.remote or view.spec_error is not None or view.deleting:
                continue
            tracked = self._tracked.get(view.workload_name)
            if tracked is None or tracked.view.uid != view.uid:
                continue  # not synced yet: its first sync reads the pods itself
            if view.selector.matches(labels) or pod_name in tracked.pod_names:
                await self.refresh_status(view)

    async def refresh_status(self, view: ServerView) -> None:
        """Re-evaluate a container server's pods; write status only, never ``tools/list``."""
        name = view.workload_name
        async with self._locks[name]:
            tracked = self._tracked.get(name)
            if tracked is None or tracked.view.uid != view.uid or self._superseded(view):
                return
            facts = tracked.facts
            pods = self._pods(view, tracked)
            runtime = self._runtime(view, facts)
            if runtime != facts.runtime and facts.spec_error is None:
                with METRICS.reconcile("Pod", name) as timer:
                    before = facts.runtime.status.value if facts.runtime else "none"
                    try:
                        await self.indexer.set_workload_status(name, runtime.status, runtime.message)
                    except DBAPIError as exc:
                        # Not retried here: the index repair re-syncs every MCPServer.
                        facts.index_unavailable = describe(exc)
                        timer.outcome = "index-failed"
                        timer.changes = f"status {runtime.status.value} not written: {facts.index_unavailable}"
                        await self._publish(tracked)
                        return
                    facts.runtime = runtime
                    facts.index_unavailable = None
                    await self._publish(tracked)
                    timer.changes = f"status {before} -> {runtime.status.value} ({runtime.code})"
            # First Running (for this spec) or a failed read: the tools must be read now.
            needs_tools = facts.tools_generation != view.generation or facts.tools_error is not None
            if pods.status is WorkloadStatus.RUNNING and needs_tools:
                self._start_tools_read(tracked)

    def _start_tools_read(self, tracked: _Tracked) -> None:
        if tracked.tools_task is not None and not tracked.tools_task.done():
            return
        # The task inherits this handler's context, so kopf.event works inside it.
        tracked.tools_task = asyncio.create_task(
            self._read_tools(tracked.view.workload_name, tracked.view.uid),
            name=f"tools/list {tracked.view.workload_name}",
        )

    async def _read_tools(self, name: str, uid: str) -> None:
        for attempt in range(TOOLS_READ_ATTEMPTS):
            tracked = self._tracked.get(name)
            view = self._latest(name) or (tracked.view if tracked else None)
            if view is None or view.uid != uid or view.deleting:
                return
            try:
                outcome = await self.sync(view, read_tools=True)
            except Exception:
                logger.exception("Reading the tools of %s failed", name)
                outcome = Outcome.TOOLS_FAILED
            if outcome is not Outcome.TOOLS_FAILED:
                return
            if self._pods(view).status is not WorkloadStatus.RUNNING:
                return  # the next Running starts a new read
            await asyncio.sleep(backoff(attempt))

    # ----------------------------------------------------------------------------------------
    # Catalog changes, deletion, garbage
    # ----------------------------------------------------------------------------------------

    async def rematched(self, results: Sequence[WorkloadResult]) -> None:
        """Report what a catalog change did to the workloads it re-matched."""
        for result in results:
            name = result.workload_name
            async with self._locks[name]:
                tracked = self._tracked.get(name)
                if tracked is None:
                    continue  # its own first sync reports it
                self._absorb(tracked.facts, result)
                await self._publish(tracked)

    async def forget(self, view: ServerView) -> None:
        """The MCPServer is being deleted: remove its rows (idempotent)."""
        name = view.workload_name
        async with self._locks[name]:
            self._gone[view.uid] = None
            while len(self._gone) > _GONE_MEMORY:
                self._gone.popitem(last=False)
            tracked = self._tracked.get(name)
            if tracked is not None and tracked.view.uid == view.uid:
                if tracked.tools_task is not None:
                    tracked.tools_task.cancel()
                del self._tracked[name]
            await self.indexer.delete_workload(name)
        if self.readiness is not None:
            self.readiness.settled(name)

    async def remove_stale(self, names: Iterable[str]) -> list[str]:
        """Delete rows of workloads found gone from the cluster, unless a handler revived them."""
        removed = []
        for name in names:
            async with self._locks[name]:
                if name in self._tracked and (not self._attached or self._latest(name) is not None):
                    continue  # created since the cluster was listed
                self._tracked.pop(name, None)
                if await self.indexer.delete_workload(name):
                    removed.append(name)
        return removed

    async def resync_all(self, *, concurrency: int = 8) -> None:
        """Sync every MCPServer kopf knows, reading its tools: the index repair's pass (after a new
        file, or once writes work again). Failures are logged; the kopf handlers retry them."""
        views = [view for namespace in list(self.servers) for view in list(self.servers.get(namespace, ()))]
        semaphore = asyncio.Semaphore(concurrency)

        async def one(view: ServerView) -> None:
            async with semaphore:
                try:
                    await self.sync(view, read_tools=True)
                except Exception as exc:
                    logger.warning("Re-syncing %s after the index repair failed: %s", view.workload_name, exc)

        await asyncio.gather(*(one(view) for view in views if not view.deleting))

    def deleting(self, workload_name: str) -> bool:
        """Whether kopf's index shows this MCPServer being deleted (unknown ones are not: kopf may
        not have listed them yet)."""
        view = self._latest(workload_name)
        return view is not None and view.deleting

    def index_replaced(self) -> None:
        """The index file was replaced by an empty one: nothing this process wrote is in it now."""
        for tracked in self._tracked.values():
            tracked.facts.tools_generation = None
            tracked.facts.tool_count = 0

    async def close(self) -> None:
        tasks = [t.tools_task for t in self._tracked.values() if t.tools_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------

    def _track(self, view: ServerView, current_status: Mapping[str, Any] | None) -> _Tracked:
        tracked = self._tracked.get(view.workload_name)
        if tracked is not None and tracked.view.uid == view.uid:
            return tracked
        facts = ServerFacts(generation=view.generation)
        written: dict[str, Any] | None = None
        if current_status:
            # After a restart: keep what the status says that cannot be re-derived for free.
            facts.last_sync_time = current_status.get("lastSyncTime")
            written = dict(current_status)
        tracked = _Tracked(view=view, facts=facts, written=written)
        self._tracked[view.workload_name] = tracked
        return tracked

    def _latest(self, name: str) -> ServerView | None:
        namespace = name.split("/", 1)[0]
        for view in self.servers.get(namespace, ()):
            if view.workload_name == name:
                return view
        return None

    def _superseded(self, view: ServerView) -> bool:
        """Whether a newer version of the object (or its deletion) makes this view's write wrong."""
        if view.uid in self._gone:
            return True
        latest = self._latest(view.workload_name)
        if latest is None:
            # kopf indexes an object before any of its handlers run, so once the indices are
            # attached, an object missing from them is gone (e.g. a timer of a force-deleted one).
            return self._attached
        return latest.uid != view.uid or latest.deleting or latest.generation > view.generation

    def _pods(self, view: ServerView, tracked: _Tracked | None = None) -> RuntimeStatus:
        pods = list(self.pods.get(view.namespace, ()))
        if tracked is not None:
            tracked.pod_names = frozenset(p.name for p in pods if view.selector.matches(p.label_map))
        return pods_status(pods, view.selector)

    def _runtime(self, view: ServerView, facts: ServerFacts, *, tool_count: int | None = None) -> RuntimeStatus:
        """The status the cluster gives the server: pods (container) or tools/list (remote)."""
        if view.remote:
            if facts.tools_error is not None:
                return tools_failed(facts.tools_error)
            if tool_count is not None or facts.tools_generation is not None:
                return tools_listed(tool_count if tool_count is not None else facts.tool_count)
            return facts.runtime or RuntimeStatus(WorkloadStatus.STOPPED, "NotRead", "tools/list not called yet")
        tracked = self._tracked.get(view.workload_name)
        pods = self._pods(view, tracked)
        if pods.status is WorkloadStatus.RUNNING and facts.tools_error is not None:
            return tools_failed(facts.tools_error)
        return pods

    @staticmethod
    def _absorb(facts: ServerFacts, result: WorkloadResult) -> None:
        facts.index_problem = problem_from(result.error)
        facts.registry_note = result.registry_note
        facts.tool_count = result.tool_count
        facts.registry = (
            (result.registry_catalog or "", result.registry_server_name) if result.registry_server_name else None
        )

    async def _publish(self, tracked: _Tracked) -> None:
        """Write the status if it changed, and post Events for new problems and link changes."""
        view = tracked.view
        previous = (tracked.written or {}).get("conditions") or ()
        status = render_status(tracked.facts, previous)
        if not same_status(status, tracked.written):
            if not await self.writer.write(view.namespace, view.name, status):
                return  # the object is gone; its deletion cleans up
            tracked.written = status
        self._post_events(tracked)

    @staticmethod
    def _post_events(tracked: _Tracked) -> None:
        ref = tracked.view.object_ref
        current = set(warnings(tracked.facts))
        for reason, message in sorted(current - tracked.warned):
            post_event(ref, type_="Warning", reason=reason, message=message)
        tracked.warned = current
        registry = tracked.facts.registry
        if registry != tracked.announced_registry:
            if registry is not None:
                post_event(
                    ref,
                    type_="Normal",
                    reason="RegistryLinked",
                    message=f"linked to {registry[1]} in catalog {registry[0]}",
                )
            elif tracked.announced_registry is not None:
                catalog, name = tracked.announced_registry
                post_event(
                    ref,
                    type_="Normal",
                    reason="RegistryUnlinked",
                    message=f"no longer linked to {name} in catalog {catalog}",
                )
            tracked.announced_registry = registry


async def _default_list_tools(endpoint: str, transport: str, timeout: float) -> list[dict[str, Any]]:
    return await mcp_list_tools(endpoint, transport=transport, timeout=timeout)
