"""The one place that writes MCPServers into the index and reports back on them.

:class:`WorkloadReconciler` is shared by the MCPServer handlers (full syncs: spec, pods, tools),
the pod handler (the fast path: a pod phase change becomes a status update, no ``tools/list``)
and the catalog handler (re-matched workloads get their new registry link in their status).
ToolHive's objects go through it too (:meth:`WorkloadReconciler.observe`): their phase plays the
part of the pods, and nothing is ever written back to them (no status, only Events).

Concurrency: writes for one workload are serialised by a per-workload lock, and each write
reads the *current* pod index and MCPServer index under that lock, so whichever write comes
last leaves the index matching the cluster (level-triggered), whatever order events came in.
``tools/list`` runs outside the lock: a slow MCP server must not delay its pod events.

Dead servers leave search fast. A failed ``tools/list`` marks the server ERROR at once; so does a
forwarded ``tools/call`` that got no answer from a remote server (the endpoint reports it through
:meth:`WorkloadReconciler.call_failed`). Either way the server is then re-probed with backoff
until it answers again. A container server's status belongs to its pods: a failed call does not
make it ERROR by itself (the call may have failed for reasons of its own, and its pods say
whether it runs), it only starts a re-probe, whose failure then does (ToolsListFailed, as for
any container server whose pods run but whose ``tools/list`` fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn, Protocol

from mcp_optimizer.embeddings import EmbeddingError
from mcp_optimizer.errors import McpOptimizerError
from mcp_optimizer.ingest import (
    DatabaseError,
    DuplicateRegistryServersError,
    Indexer,
    WorkloadResult,
    WorkloadSpecError,
    describe,
)
from mcp_optimizer.mcp import McpClientError
from mcp_optimizer.mcp import list_tools as mcp_list_tools
from mcp_optimizer.mcp.client import ClientPolicy
from mcp_optimizer.mcp.limits import clip_note
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.operator.mapping import (
    PodState,
    RuntimeStatus,
    ServerView,
    distinct_tools,
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
from mcp_optimizer.operator.toolhive_mapping import belongs_in_index, toolhive_status
from mcp_optimizer.redaction import redact_url
from mcp_optimizer.vocabulary import WorkloadStatus

logger = logging.getLogger(__name__)



class ListTools(Protocol):
    """``tools/list`` of one server (:func:`mcp_optimizer.mcp.list_tools`, or a test's stand-in).

    ``namespace`` is the MCPServer's (for the destination rules), ``policy`` the operator's.
    """

    def __call__(
        self, endpoint: str, transport: str, timeout: float, *, namespace: str | None, policy: ClientPolicy
    ) -> Awaitable[list[dict[str, Any]]]: ...


#: tools/list failures a quick retry cannot fix (a rule refused the URL, or the server sends more
#: than a bound allows): retried at the probe interval, not with a fast backoff, so that a hostile
#: server does not cost a full listing (and its parsing) every few seconds.
_POLICY_FAILURES = frozenset({"DestinationRefused", "LimitExceeded"})

#: Failure reasons of forwarded calls that say the server is gone or broken. A timeout may be a
#: slow tool (a re-probe tells), a limit or config failure says nothing about the server.
_DEAD_SERVER_REASONS = frozenset({"connect", "http", "protocol", "destination"})
#: Concurrent tools/list calls of a periodic ToolHive resync (500 servers: a burst of 500 otherwise).
RESYNC_CONCURRENCY = 8
#: Syncs planning and writing the index at once. The engine's pool has 8 connections, shared with
#: the MCP endpoint and the phase fast path; 500 ToolHive servers turning Ready together otherwise
#: queued 500 syncs on it and failed theirs after the pool's 30 s timeout (on a loaded machine).
INDEX_WRITERS = 4
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


def failure_code(error: McpClientError) -> str:
    """The status reason for a failed ``tools/list``."""
    return {"destination": "DestinationRefused", "limit": "LimitExceeded"}.get(error.reason, "ToolsListFailed")


class IndexUnavailableError(McpOptimizerError, RuntimeError):
    """The index could not be written (full, damaged, unreadable); the status says so. Retried,
    and the operator's repair re-syncs every MCPServer once the index works again."""


def problem_from(error: BaseException | None) -> IndexProblem | None:
    """An index-level error as the status reports it."""
    if error is None:
        return None
    if isinstance(error, DuplicateRegistryServersError):
        return IndexProblem("DuplicateRegistryEntries", str(error))
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
    #: Set to read the tools once more: cuts the re-probe loop's backoff short, and makes a running
    #: read go again when it ends (whoever set it saw a newer state than the read started from).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The value of the refresh annotation last seen: a new value forces a re-read.
    refresh_seen: str | None = None
    #: The context of the last sync (a kopf handler's, or a task it started): tasks started from
    #: outside kopf (a failed call reported by the endpoint) run in a copy of it, so that
    #: kopf.event can post their Events.
    context: contextvars.Context | None = None
    #: ``view.read_key`` of the last successful tools read (None: never read since the start).
    tools_read_key: tuple[object, ...] | None = None


@dataclass(frozen=True)
class _ToolsRead:
    """One ``tools/list`` of a workload: its tools (distinct by name), or why there are none."""

    tools: list[dict[str, Any]] | None = None
    #: Names the server listed more than once (the first of each is kept).
    repeated: tuple[str, ...] = ()
    error: str | None = None
    error_code: str = "ToolsListFailed"


class WorkloadReconciler:
    """Keeps the index's workload rows and the MCPServers' status in line with the cluster."""

    def __init__(
        self,
        indexer: Indexer,
        writer: StatusWriter,
        *,
        mcp_timeout: float,
        list_tools: ListTools | None = None,
        policy: ClientPolicy | None = None,
        probe_interval: float = 60.0,
        readiness: Readiness | None = None,
    ) -> None:
        self.indexer = indexer
        self.readiness = readiness
        self.writer = writer
        self.mcp_timeout = mcp_timeout
        self.policy = policy or ClientPolicy()
        #: The longest wait between re-probes of a server that does not answer.
        self.probe_interval = probe_interval
        self._list_tools: ListTools = list_tools or mcp_list_tools
        #: kopf's in-memory indices, attached at startup: namespace -> pods / MCPServer views.
        self.pods: Mapping[str, Iterable[PodState]] = {}
        self.servers: Mapping[str, Iterable[ServerView]] = {}
        #: namespace -> views of ToolHive's objects, one kopf index per watched kind.
        self.toolhive: Sequence[Mapping[str, Iterable[ServerView]]] = ()
        self._attached = False
        self._tracked: dict[str, _Tracked] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._gone: OrderedDict[str, None] = OrderedDict()
        #: Tasks marking servers whose forwarded call failed (kept so they are not collected).
        self._marking: set[asyncio.Task[None]] = set()
        self._index_writers = asyncio.Semaphore(INDEX_WRITERS)

    def attach(
        self,
        *,
        pods: Mapping[str, Iterable[PodState]],
        servers: Mapping[str, Iterable[ServerView]],
        toolhive: Sequence[Mapping[str, Iterable[ServerView]]] = (),
    ) -> None:
        """Use kopf's live indices (kopf fills them from its watches before any handler runs)."""
        self.pods = pods
        self.servers = servers
        self.toolhive = tuple(toolhive)
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
        probe: bool = False,
    ) -> Outcome:
        """Bring one MCPServer's workload row and status in line with the cluster.

        ``read_tools``: call ``tools/list`` if the server runs (on create, spec change, resume
        and resync). ``current_status`` is the object's status as found, used after a restart to
        keep condition transition times and to skip writing an unchanged status. ``probe``: a
        remote server's periodic probe, which leaves ``lastSyncTime`` alone when nothing changed
        (a status write a minute per remote server would be load on the apiserver for nothing).
        """
        try:
            with METRICS.reconcile(view.kind_label, view.workload_name) as timer:
                outcome = await self._sync(view, read_tools=read_tools, current_status=current_status, probe=probe)
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
        probe: bool = False,
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

        # Outside the lock: a slow server delays only itself.
        read = await self._list_tools_of(view) if read_tools and self._worth_reading(view) else None
        async with self._locks[name]:
            if self._superseded(view):
                return Outcome.STALE
            tracked = self._track(view, current_status)
            # What this sync establishes goes into a copy: the status takes it only once the index
            # has committed it, so it never claims tools (or a generation) that were not written.
            facts = dataclasses.replace(tracked.facts)
            unchanged = self._take_read(facts, tracked, view, read)
            tools = read.tools if read is not None else None
            runtime = self._runtime(view, facts, tool_count=len(tools) if tools is not None else None)
            invalid = await self._write_workload(tracked, view, facts, runtime, tools)
            if invalid is not None:
                return invalid
            if read is not None and read.error is None:
                tracked.tools_read_key = view.read_key
                if not (probe and unchanged and facts.last_sync_time):
                    facts.last_sync_time = now_rfc3339()  # the tools read are committed now
            facts.runtime = runtime
            facts.index_unavailable = None
            tracked.facts = facts
            tracked.view = view
            await self._publish(tracked)
        return Outcome.TOOLS_FAILED if read is not None and read.error is not None else Outcome.OK

    def _worth_reading(self, view: ServerView) -> bool:
        """Tools are read from a server that is running (or whose status is its tools/list)."""
        return view.status_from_tools_list or self._cluster_status(view).status is WorkloadStatus.RUNNING

    async def _list_tools_of(self, view: ServerView) -> _ToolsRead:
        endpoint = view.tools_endpoint
        assert endpoint is not None  # parse_server guarantees it for a valid spec
        try:
            # The declared transport, as stored for call_tool: the client alone decides what
            # is spoken for it (a stdio server is reached through its HTTP bridge).
            tools, repeated = distinct_tools(
                await self._list_tools(
                    endpoint, view.transport, self.mcp_timeout, namespace=view.namespace, policy=self.policy
                )
            )
        except McpClientError as exc:
            code = failure_code(exc)
            if code == "ToolsListFailed":
                return _ToolsRead(error=str(exc), error_code=code)
            # A rule or a bound the user must act on: say which object it is about.
            return _ToolsRead(error=f"MCPServer {view.workload_name}: {exc}", error_code=code)
        return _ToolsRead(tools=tools, repeated=tuple(repeated))

    def _take_read(self, facts: ServerFacts, tracked: _Tracked, view: ServerView, read: _ToolsRead | None) -> bool:
        """What the spec and the tools read say, into ``facts``; True when a read found the same
        tools as last time (a probe then leaves lastSyncTime alone)."""
        if tracked.view.read_key != view.read_key:
            # A failure of the previous spec (or proxy URL) says nothing about this one.
            facts.tools_error = None
        facts.generation = view.generation
        facts.spec_error = None
        facts.identifier = f"url {redact_url(view.url or '')}" if view.remote else f"image {view.image}"
        if read is None:
            return False
        if read.error is not None:
            facts.tools_error = read.error
            facts.tools_error_code = read.error_code
            return False
        assert read.tools is not None
        unchanged = (
            facts.tools_error is None
            and facts.tools_generation == view.generation
            and facts.tool_count == len(read.tools)
        )
        facts.tools_error = None
        facts.clip_note = clip_note(read.tools, self.policy.limits)
        facts.tools_generation = view.generation
        facts.repeated_tools = read.repeated
        return unchanged

    async def _write_workload(
        self, tracked: _Tracked, view: ServerView, facts: ServerFacts, runtime: RuntimeStatus,
        tools: list[dict[str, Any]] | None,
    ) -> Outcome | None:
        """The workload into the index, what the index says into ``facts``; an Outcome when the
        index found the spec invalid (the sync ends there)."""
        spec = workload_spec(view, status=runtime.status, reason=runtime.message, tools=tools)
        try:
            async with self._index_writers:
                result = await self.indexer.apply_workload(spec)
        except WorkloadSpecError as exc:
            return await self._invalid(tracked, view, str(exc))
        except DuplicateRegistryServersError as exc:
            # The index stored the workload as ERROR; a catalog change or a pin resolves it.
            facts.index_problem = problem_from(exc)
            facts.registry = None
            facts.registry_note = None
            if tools is not None:
                facts.tool_count = len(tools)
        except DatabaseError as exc:
            await self._index_failed(tracked, view, exc)
        else:
            self._absorb(facts, result)
            if tools is not None:
                # Only a tools read knows them: re-matches work on the stored (callable) tools.
                facts.task_only_tools = tuple(result.task_only_tools)
        return None

    async def _index_failed(self, tracked: _Tracked, view: ServerView, exc: DatabaseError) -> NoReturn:
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
        """Re-evaluate a container server's pods (or a ToolHive object's phase); write status
        only, never ``tools/list``: one SQLite write from the change to search."""
        name = view.workload_name
        async with self._locks[name]:
            tracked = self._tracked.get(name)
            if tracked is None or tracked.view.uid != view.uid or self._superseded(view):
                return
            facts = tracked.facts
            cluster = self._cluster_status(view, tracked)
            runtime = self._runtime(view, facts)
            if runtime != facts.runtime and facts.spec_error is None:
                with METRICS.reconcile("Pod" if view.toolhive is None else view.kind_label, name) as timer:
                    before = facts.runtime.status.value if facts.runtime else "none"
                    try:
                        await self.indexer.set_workload_status(name, runtime.status, runtime.message)
                    except DatabaseError as exc:
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
            needs_tools = tracked.tools_read_key != view.read_key or facts.tools_error is not None
            if cluster.status is WorkloadStatus.RUNNING and needs_tools:
                self._start_tools_read(tracked)

    def _start_tools_read(self, tracked: _Tracked, *, context: contextvars.Context | None = None) -> None:
        """Sync in the background, reading the tools if the server runs, and re-probe with backoff
        until it answers (one loop per object). If one is running already, it reads once more when
        it ends (at once, if it is waiting to retry): whoever asks has seen a newer state than the
        running one started from (a refresh, or ToolHive's Ready arriving while the row of the
        status-less object is being written)."""
        if tracked.tools_task is not None and not tracked.tools_task.done():
            tracked.wake.set()
            return
        tracked.wake.clear()
        # The task inherits the handler's context (or the given one), so kopf.event works in it.
        tracked.tools_task = asyncio.get_running_loop().create_task(
            self._read_tools(tracked.view.workload_name, tracked.view.uid),
            name=f"tools/list {tracked.view.workload_name}",
            context=context,
        )

    async def _read_tools(self, name: str, uid: str) -> None:
        attempt = 0
        while True:
            tracked = self._tracked.get(name)
            view = self._latest(name) or (tracked.view if tracked else None)
            if tracked is None or view is None or view.uid != uid or view.deleting:
                return
            tracked.wake.clear()
            try:
                outcome = await self.sync(view, read_tools=True)
            except Exception:
                logger.exception("Reading the tools of %s failed", name)
                outcome = Outcome.TOOLS_FAILED
            if outcome is Outcome.STALE:
                latest = self._latest(name)
                if latest is None or latest.uid != uid or latest.deleting or latest.read_key == view.read_key:
                    return
                continue  # a newer version (e.g. another proxy URL) arrived during the read: read that
            tracked = self._tracked.get(name)
            if tracked is None:
                return  # withdrawn or forgotten during the read
            if outcome is not Outcome.TOOLS_FAILED:
                if tracked.wake.is_set() and outcome is Outcome.OK:
                    attempt = 0
                    continue  # asked again during this one (see _start_tools_read): read once more
                return
            if not view.status_from_tools_list and self._cluster_status(view).status is not WorkloadStatus.RUNNING:
                return  # the next Running starts a new read
            # Until it answers again: 1, 2, 4, ... seconds, then every probe interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tracked.wake.wait(), self.retry_delay(view, attempt))
            attempt += 1

    # ----------------------------------------------------------------------------------------
    # Dead servers: failed calls, re-probes, forced re-reads
    # ----------------------------------------------------------------------------------------

    def retry_delay(self, view: ServerView, attempt: int) -> float:
        """Seconds before reading a server's tools again after ``attempt`` failures."""
        tracked = self._tracked.get(view.workload_name)
        if tracked is not None and tracked.facts.tools_error_code in _POLICY_FAILURES:
            return max(self.probe_interval, backoff(attempt))
        return backoff(attempt, cap=self.probe_interval)

    def probe(self, view: ServerView) -> None:
        """A failed ``tools/list`` outside the change handlers: keep re-probing it with backoff."""
        tracked = self._tracked.get(view.workload_name)
        if tracked is not None and tracked.view.uid == view.uid:
            self._start_tools_read(tracked)

    def refresh_requested(self, view: ServerView) -> None:
        """A watch event: a new value of the refresh annotation forces a re-read of the tools."""
        tracked = self._tracked.get(view.workload_name)
        if tracked is None or tracked.view.uid != view.uid or view.deleting or view.spec_error is not None:
            return  # not synced yet: its first sync reads the tools anyway
        if view.refresh == tracked.refresh_seen:
            return
        tracked.refresh_seen = view.refresh
        logger.info("MCPServer %s: refresh requested, reading its tools again", view.workload_name)
        self._start_tools_read(tracked)

    def call_failed(self, workload_name: str, error: McpClientError) -> None:
        """:class:`~mcp_optimizer.mcp.tools.CallFailureListener`: a forwarded call got no answer.

        A remote server that cannot be reached is marked ERROR at once (find_tool stops offering
        it) and re-probed until it answers; a container server is only re-probed (its pods
        decide its status). Runs in the endpoint's task: it only schedules work.
        """
        tracked = self._tracked.get(workload_name)
        if tracked is None or tracked.view.spec_error is not None:
            return  # not an object of this operator (or of this replica)
        context = tracked.context.copy() if tracked.context is not None else None
        if tracked.view.status_from_tools_list and error.reason in _DEAD_SERVER_REASONS:
            task = asyncio.get_running_loop().create_task(
                self._mark_dead(tracked, error), name=f"mark {workload_name}", context=context
            )
            self._marking.add(task)
            task.add_done_callback(self._marking.discard)
        else:
            self._start_tools_read(tracked, context=context)

    async def _mark_dead(self, tracked: _Tracked, error: McpClientError) -> None:
        view = tracked.view
        name = view.workload_name
        async with self._locks[name]:
            if self._tracked.get(name) is not tracked or self._superseded(view):
                return
            facts = tracked.facts
            facts.tools_error = f"MCPServer {name}: a forwarded tools/call got no answer ({error.reason}): {error}"
            facts.tools_error_code = "CallFailed"
            runtime = self._runtime(view, facts)
            with METRICS.reconcile(view.kind_label, name) as timer:
                await self.indexer.set_workload_status(name, runtime.status, runtime.message)
                facts.runtime = runtime
                await self._publish(tracked)
                timer.changes = f"status {runtime.status.value} ({runtime.code}): a forwarded call failed"
        self._start_tools_read(tracked)

    # ----------------------------------------------------------------------------------------
    # ToolHive's objects (read-only): their phase is their pods
    # ----------------------------------------------------------------------------------------

    async def observe(self, view: ServerView) -> None:
        """One of ToolHive's objects was listed or changed.

        A phase change reaches the index in one write (:meth:`refresh_status`); tools are read in
        the background when the server first runs and whenever what they depend on changes
        (``view.read_key``), so a slow proxy never delays a phase change.
        """
        if view.deleting:
            await self.forget(view)  # ToolHive's own finalizer holds it; it no longer serves
            return
        if view.toolhive is not None and view.toolhive.excluded is not None:
            await self.withdraw(view)
            return
        tracked = self._tracked.get(view.workload_name)
        if view.spec_error is not None or (tracked is not None and tracked.facts.spec_error is not None):
            await self.sync(view, read_tools=False)  # reports (or clears) the invalid spec
        elif tracked is None or tracked.view.uid != view.uid or tracked.view.read_key != view.read_key:
            # New, or its spec, proxy URL or tool configuration changed: a full sync in the
            # background (tools are read if it runs; the row is written once). A newer version
            # arriving meanwhile supersedes it before it writes (objects are usually created
            # without a status, which ToolHive writes a moment later).
            self._start_tools_read(self._track(view, None))
        else:
            await self.refresh_status(view)  # only the phase (or nothing we read) changed

    async def withdraw(self, view: ServerView) -> None:
        """Keep an object that is not to be indexed (``toolhive.excluded``) out of the index."""
        name = view.workload_name
        async with self._locks[name]:
            tracked = self._tracked.pop(name, None)
            if tracked is None:
                return  # never indexed in this run (rows of an earlier run are garbage-collected)
            if tracked.tools_task is not None:
                tracked.tools_task.cancel()
            await self.indexer.delete_workload(name)
            logger.info("Removed workload %s: %s", name, (view.toolhive.excluded if view.toolhive else None))

    def tool_config_changed(self, namespace: str, config: str) -> list[str]:
        """An MCPToolConfig changed: read the tools of the running servers that use it again.

        Returns the workloads whose tools are read again.
        """
        names = []
        for view in self.toolhive_views(namespace):
            state = view.toolhive
            if state is None or state.tool_config != config or not belongs_in_index(view):
                continue
            tracked = self._tracked.get(view.workload_name)
            if tracked is None or tracked.view.uid != view.uid:
                continue  # its first read is under way or due
            if toolhive_status(view).status is WorkloadStatus.RUNNING:
                self._start_tools_read(tracked)
                names.append(view.workload_name)
        return names

    async def resync_toolhive(self) -> None:
        """Every resync interval: re-read running ToolHive servers' tools and re-write their rows
        (kopf does not retry event handlers, so this is what heals a failed write)."""
        limit = asyncio.Semaphore(RESYNC_CONCURRENCY)

        async def one(view: ServerView) -> None:
            async with limit:
                try:
                    await self.sync(view, read_tools=True)
                except Exception:
                    logger.exception("Resync of %s failed", view.workload_name)

        await asyncio.gather(*(one(v) for v in self.toolhive_views() if belongs_in_index(v) or v.spec_error))

    def toolhive_views(self, namespace: str | None = None) -> list[ServerView]:
        """The current views of ToolHive's objects (of one namespace, or all)."""
        views: list[ServerView] = []
        for index in self.toolhive:
            if namespace is not None:
                views.extend(index.get(namespace, ()))
            else:
                for items in index.values():
                    views.extend(items)
        return views

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
        """The object is being deleted (or is gone): remove its rows (idempotent)."""
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
        """Sync every MCPServer (ours and ToolHive's) kopf knows, reading its tools: the index
        repair's pass (after a new file, or once writes work again). Failures are logged; the kopf
        handlers retry them."""
        views = [view for namespace in list(self.servers) for view in list(self.servers.get(namespace, ()))]
        views += [view for view in self.toolhive_views() if belongs_in_index(view)]
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
        tasks += self._marking
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------

    def _track(self, view: ServerView, current_status: Mapping[str, Any] | None) -> _Tracked:
        tracked = self._tracked.get(view.workload_name)
        if tracked is not None and tracked.view.uid == view.uid:
            tracked.context = contextvars.copy_context()
            return tracked
        facts = ServerFacts(generation=view.generation)
        written: dict[str, Any] | None = None
        if current_status:
            # After a restart: keep what the status says that cannot be re-derived for free.
            facts.last_sync_time = current_status.get("lastSyncTime")
            written = dict(current_status)
        tracked = _Tracked(
            view=view, facts=facts, written=written, refresh_seen=view.refresh, context=contextvars.copy_context()
        )
        self._tracked[view.workload_name] = tracked
        return tracked

    def _latest(self, name: str) -> ServerView | None:
        namespace = name.split("/", 1)[0]
        for index in (self.servers, *self.toolhive):
            for view in index.get(namespace, ()):
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
        return latest.uid != view.uid or latest.deleting or latest.read_key != view.read_key

    def _pods(self, view: ServerView, tracked: _Tracked | None = None) -> RuntimeStatus:
        pods = list(self.pods.get(view.namespace, ()))
        if tracked is not None:
            tracked.pod_names = frozenset(p.name for p in pods if view.selector.matches(p.label_map))
        return pods_status(pods, view.selector)

    def _cluster_status(self, view: ServerView, tracked: _Tracked | None = None) -> RuntimeStatus:
        """What the cluster says: a container server's pods, or the phase ToolHive reports (read
        from the object's latest version: a phase change moves no ``read_key``)."""
        if view.toolhive is not None:
            return toolhive_status(self._latest(view.workload_name) or view)
        return self._pods(view, tracked)

    def _runtime(self, view: ServerView, facts: ServerFacts, *, tool_count: int | None = None) -> RuntimeStatus:
        """The status the cluster gives the server: pods or ToolHive's phase, or tools/list (remote)."""
        if view.status_from_tools_list:
            if facts.tools_error is not None:
                return tools_failed(facts.tools_error, facts.tools_error_code)
            if tool_count is not None or facts.tools_generation is not None:
                return tools_listed(tool_count if tool_count is not None else facts.tool_count)
            return facts.runtime or RuntimeStatus(WorkloadStatus.STOPPED, "NotRead", "tools/list not called yet")
        cluster = self._cluster_status(view, self._tracked.get(view.workload_name))
        if cluster.status is WorkloadStatus.RUNNING and facts.tools_error is not None:
            return tools_failed(facts.tools_error, facts.tools_error_code)
        return cluster

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
        # ToolHive's objects are never written: their status belongs to ToolHive's operator.
        if view.toolhive is None:
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

