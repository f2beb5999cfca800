"""An MCPServer's ``.status``: what it says (pure), how it is written, and the Events beside it.

The operator keeps one :class:`ServerFacts` per MCPServer, the facts it last established (pod
status, tools read, registry link, errors). :func:`render_status` turns facts into the status
document, with ``Ready``, ``ToolsIndexed`` and ``RegistryMatched`` conditions; :func:`warnings`
lists the problems a user must act on, which also become Warning Events.

Status is written with a merge patch of the ``status`` subresource, never through kopf's
``patch`` kwarg: pod events and catalog changes update MCPServers from outside their handlers.
A status-only change does not touch the spec, so it triggers no MCPServer handler (they are
filtered on ``spec``) and cannot start a reconcile loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client

from mcp_optimizer.ingest import RegistryNote, effective_status
from mcp_optimizer.kubeapi import KubeApi, KubeApiError
from mcp_optimizer.operator.callbacks import EventSinkFn
from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION, RuntimeStatus
from mcp_optimizer.vocabulary import WorkloadStatus

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"

PHASES = {
    WorkloadStatus.RUNNING: "Running",
    WorkloadStatus.STOPPED: "Stopped",
    WorkloadStatus.ERROR: "Error",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class IndexProblem:
    """A problem the index has with a workload (not the cluster): duplicates, a bad pin, embedding."""

    code: str  # DuplicateRegistryEntries, EmbeddingFailed, IndexError
    message: str


@dataclass
class ServerFacts:
    """Everything an MCPServer's status reports, as the operator last established it."""

    generation: int = 0
    #: What the cluster says (pods, or tools/list for a remote server); None before the first sync.
    runtime: RuntimeStatus | None = None
    spec_error: str | None = None
    index_problem: IndexProblem | None = None
    tool_count: int = 0
    #: The generation whose tools were last read successfully; None when never read.
    tools_generation: int | None = None
    #: The last tools/list failure (or failed forwarded call), cleared by the next success.
    tools_error: str | None = None
    #: Its CamelCase reason: ToolsListFailed, DestinationRefused, LimitExceeded or CallFailed.
    tools_error_code: str = "ToolsListFailed"
    #: Which tools were stored clipped to the bounds, as a sentence; None when none were.
    clip_note: str | None = None
    #: (catalog, name) of the linked registry entry.
    registry: tuple[str, str] | None = None
    #: Why a pinned registry entry is not what the server links to (missing, or of the other kind).
    registry_note: RegistryNote | None = None
    #: Tool names the last tools/list repeated (the first of each is indexed): a server bug.
    repeated_tools: tuple[str, ...] = ()
    #: Tools that only run as MCP tasks, which call_tool cannot run: not indexed.
    task_only_tools: tuple[str, ...] = ()
    last_sync_time: str | None = None
    #: "image ghcr.io/x" / "url https://..", for messages.
    identifier: str = ""
    #: Why the index did not take this server's last write (full, damaged, unreadable); cleared
    #: by the next write it takes. The other facts are what the index holds.
    index_unavailable: str | None = None

    @property
    def status(self) -> WorkloadStatus:
        """The status the index filters on (an invalid spec or an index problem makes it ERROR
        whatever the pods say: :func:`~mcp_optimizer.ingest.status.effective_status`)."""
        if self.spec_error is not None:
            return WorkloadStatus.ERROR
        runtime = WorkloadStatus.STOPPED if self.runtime is None else self.runtime.status
        problem = self.index_problem
        return effective_status(runtime, None, None if problem is None else problem.message or problem.code)[0]

    @property
    def phase(self) -> str:
        return PHASES[self.status]


def conditions(facts: ServerFacts) -> list[Condition]:
    """The three conditions, most important first."""
    return [_ready(facts), _tools_indexed(facts), _registry_matched(facts)]


def _ready(facts: ServerFacts) -> Condition:
    if facts.spec_error is not None:
        return Condition("Ready", "False", "InvalidSpec", facts.spec_error)
    if facts.index_problem is not None:
        return Condition("Ready", "False", facts.index_problem.code, facts.index_problem.message)
    if facts.runtime is None:
        return Condition("Ready", "Unknown", "Pending", "not reconciled yet")
    ok = facts.runtime.status is WorkloadStatus.RUNNING
    return Condition("Ready", "True" if ok else "False", facts.runtime.code, facts.runtime.message)


def _tools_indexed(facts: ServerFacts) -> Condition:
    if facts.spec_error is not None:
        return Condition("ToolsIndexed", "False", "InvalidSpec", "the spec must be fixed first")
    if facts.index_unavailable is not None:
        return Condition(
            "ToolsIndexed",
            "False",
            "IndexUnavailable",
            f"the index could not be written ({facts.index_unavailable}); the operator repairs it and syncs "
            f"this server again; {facts.tool_count} tools from an earlier write are indexed",
        )
    if facts.tools_error is not None:
        return Condition("ToolsIndexed", "False", facts.tools_error_code, facts.tools_error)
    if facts.tools_generation is not None and facts.tools_generation == facts.generation:
        message = f"{facts.tool_count} tools indexed"
        if facts.task_only_tools:
            message += (
                f"; {len(facts.task_only_tools)} left out because they only run as MCP tasks, which call_tool "
                f"does not support: {_names(facts.task_only_tools)}"
            )
        if facts.repeated_tools:
            message += f"; {repeated_tools_message(facts)}"
            return Condition("ToolsIndexed", "True", "DuplicateToolNames", message)
        if facts.clip_note is not None:
            return Condition("ToolsIndexed", "True", "ToolsClipped", f"{message}; {facts.clip_note}")
        return Condition("ToolsIndexed", "True", "ToolsListed", message)
    if facts.tools_generation is not None:
        return Condition(
            "ToolsIndexed",
            "False",
            "SpecChanged",
            f"{facts.tool_count} tools of an earlier spec are indexed; tools are read again when the server runs",
        )
    return Condition("ToolsIndexed", "False", "NotRunning", "tools are read once the server is Running")


def _names(names: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def repeated_tools_message(facts: ServerFacts) -> str:
    return (
        f"the server's tools/list answer repeats tool names ({_names(facts.repeated_tools)}); the first tool of "
        "each name is indexed. The spec is fine: the MCP server must be fixed (tool names are unique per server)"
    )


def _registry_matched(facts: ServerFacts) -> Condition:
    problem = facts.index_problem
    note = facts.registry_note
    if facts.spec_error is not None:
        return Condition("RegistryMatched", "False", "InvalidSpec", "the spec must be fixed first")
    if problem is not None and problem.code == "DuplicateRegistryEntries":
        return Condition("RegistryMatched", "False", problem.code, problem.message)
    if facts.registry is not None:
        catalog, name = facts.registry
        message = f"linked to {name} in catalog {catalog}" + (f" ({note.message})" if note is not None else "")
        return Condition("RegistryMatched", "True", "Linked", message)
    if note is not None:
        return Condition("RegistryMatched", "False", note.code, note.message)
    return Condition(
        "RegistryMatched",
        "False",
        "NotInRegistry",
        f"no registry entry matches {facts.identifier}; the server's own description and tools are used",
    )


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    current: Sequence[Condition],
    *,
    now: str,
    generation: int,
) -> list[dict[str, Any]]:
    """Condition dicts, keeping each one's lastTransitionTime while its status stays the same."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for cond in current:
        old = before.get(cond.type)
        changed = old is None or old.get("status") != cond.status or not old.get("lastTransitionTime")
        merged.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": now if changed or old is None else old["lastTransitionTime"],
                "observedGeneration": generation,
            }
        )
    return merged


def render_status(
    facts: ServerFacts,
    previous_conditions: Sequence[Mapping[str, Any]] = (),
    *,
    now: str | None = None,
) -> dict[str, Any]:
    """The ``status`` document. ``registryServer`` is null when unlinked (a merge patch removes it)."""
    now = now or now_rfc3339()
    return {
        "phase": facts.phase,
        "toolCount": facts.tool_count,
        "registryServer": (
            {"name": facts.registry[1], "catalog": facts.registry[0]} if facts.registry is not None else None
        ),
        "observedGeneration": facts.generation,
        "lastSyncTime": facts.last_sync_time,
        "conditions": merge_conditions(previous_conditions, conditions(facts), now=now, generation=facts.generation),
    }


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Equal apart from condition timestamps (so unchanged facts cause no write)."""
    if a is None or b is None:
        return a is b

    def strip(doc: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(doc)
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in doc.get("conditions") or ()
        ]
        return out

    return strip(a) == strip(b)


def warnings(facts: ServerFacts) -> list[tuple[str, str]]:
    """(reason, message) of every problem a user must act on; each becomes a Warning Event."""
    found: list[tuple[str, str]] = []
    if facts.spec_error is not None:
        found.append(("InvalidSpec", facts.spec_error))
    if facts.index_problem is not None:
        found.append((facts.index_problem.code, facts.index_problem.message))
    if facts.tools_error is not None:
        found.append((facts.tools_error_code, facts.tools_error))
    elif facts.clip_note is not None:
        found.append(("ToolsClipped", facts.clip_note))
    if facts.repeated_tools and facts.spec_error is None:
        found.append(("DuplicateToolNames", repeated_tools_message(facts)))
    if facts.registry_note is not None and facts.spec_error is None:
        found.append((facts.registry_note.code, facts.registry_note.message))
    if facts.runtime is not None and facts.runtime.code == "PodSelectorUnmatchable" and facts.spec_error is None:
        found.append((facts.runtime.code, facts.runtime.message))
    return found


#: Posts an Event where kopf's poster is not available: set by the operator's startup handler
#: for itself and the tasks it starts (catalog watches, garbage collection). Unset: logged only.
event_sink: contextvars.ContextVar[EventSinkFn | None] = (
    contextvars.ContextVar("mcp_optimizer_event_sink", default=None)
)


def post_event(ref: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event through kopf's poster, else through :data:`event_sink`, else log it.

    kopf keeps its event queue in a context variable that is set for resource handlers and the
    tasks they start; startup handlers (and the catalog watches they start) run without it.
    """
    try:
        kopf.event(ref, type=type_, reason=reason, message=message[:1024])  # type: ignore[arg-type]
    except LookupError:
        sink = event_sink.get()
        if sink is not None:
            sink(ref, type_, reason, message[:1024])
            return
        meta = ref.get("metadata") or {}
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        logger.log(level, "%s/%s: %s: %s", meta.get("namespace"), meta.get("name"), reason, message)


class StatusWriter:
    """Writes MCPServer status subresources with the kubernetes client (in worker threads)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._objects = client.CustomObjectsApi(api_client)

    async def write(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch ``status``; False when the object no longer exists."""
        try:
            await asyncio.to_thread(
                self._objects.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
                _content_type=MERGE_PATCH,
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


class EventPoster:
    """Posts Events itself (one POST each, in the background) for :data:`event_sink`."""

    def __init__(self, api: KubeApi, component: str = "mcp-optimizer") -> None:
        self.api = api
        self.component = component
        self._pending: set[asyncio.Task[None]] = set()

    def post_soon(self, ref: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self.post(ref, type_, reason, message), name="post Event")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def post(self, ref: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = ref.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": ref.get("apiVersion"),
                "kind": ref.get("kind"),
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.post(f"/api/v1/namespaces/{namespace}/events", event)
        except KubeApiError as exc:
            logger.warning("Cannot post Event %s about %s/%s: %s", reason, namespace, name, exc)
