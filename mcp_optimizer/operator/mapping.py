"""Pure translations from Kubernetes objects to what the index understands.

Nothing here talks to the API server or the index: an MCPServer body becomes a
:class:`ServerView` (and from it a :class:`~mcp_optimizer.ingest.WorkloadSpec`), and the pods a
server's ``podSelector`` selects become a :class:`RuntimeStatus`. Keeping these rules pure keeps
them unit-testable and keeps the handlers thin. ToolHive's objects become ServerViews too
(:mod:`.toolhive_mapping`), so that one reconciler handles both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcp_optimizer.errors import McpOptimizerError
from mcp_optimizer.ingest import RegistryRef, WorkloadSpec
from mcp_optimizer.redaction import redact_url
from mcp_optimizer.vocabulary import WorkloadStatus

if TYPE_CHECKING:
    from mcp_optimizer.operator.toolhive_mapping import ToolHiveState

GROUP = "mcp-optimizer.dev"
VERSION = "v1alpha1"
PLURAL = "mcpservers"
KIND = "MCPServer"
#: Set it to any new value (e.g. a timestamp) to make the operator read the server's tools now.
REFRESH_ANNOTATION = f"{GROUP}/refresh"
API_VERSION = f"{GROUP}/{VERSION}"

#: The label a container server's pods carry by default (as Helm and most charts set it).
INSTANCE_LABEL = "app.kubernetes.io/instance"
DEFAULT_GROUP = "default"
DEFAULT_TRANSPORT = "streamable-http"
TRANSPORTS = ("streamable-http", "sse", "stdio")

#: Container waiting reasons that mean the server cannot start without someone acting.
FAILING_WAIT_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
    }
)

_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
#: Kubernetes' limit on a label value (names of objects may be up to 253 characters).
MAX_LABEL_VALUE_CHARS = 63


class SpecError(McpOptimizerError, ValueError):
    """An MCPServer spec the operator cannot act on. Permanent: only a spec change fixes it."""


def workload_name(namespace: str, name: str, toolhive_kind: str | None = None) -> str:
    """The index's key: ``namespace/name`` for an MCPServer of ours (unique in a cluster), and
    ``namespace/<kind>.toolhive/name`` for one of ToolHive's objects, e.g.
    ``team-a/mcpserver.toolhive/github``: the kind keeps a ToolHive MCPServer and ours of the same
    name apart, readably, wherever the name is shown (``servers``, ``find_tool``, ``call_tool``).
    """
    if toolhive_kind is not None:
        return f"{namespace}/{toolhive_kind.lower()}.toolhive/{name}"
    return f"{namespace}/{name}"


def split_workload_name(workload: str) -> tuple[str, str]:
    """``namespace/name`` back into its parts."""
    namespace, sep, name = workload.partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"not a namespace/name workload name: {workload!r}")
    return namespace, name


# --------------------------------------------------------------------------------------------
# Label selectors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` item."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            # As in Kubernetes: a missing key satisfies NotIn.
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        op = "in" if self.operator == "In" else "notin"
        return f"{self.key} {op} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector (``matchLabels`` AND ``matchExpressions``).

    As in Kubernetes, an empty selector selects every pod of the namespace.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> LabelSelector:
        """Build a selector from a ``podSelector`` object; raises :class:`SpecError`."""
        if not isinstance(raw, Mapping):
            raise SpecError("spec.podSelector must be an object with matchLabels and/or matchExpressions")
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise SpecError("spec.podSelector.matchLabels must map label names to strings")
        requirements: list[Requirement] = []
        for i, item in enumerate(raw.get("matchExpressions") or ()):
            where = f"spec.podSelector.matchExpressions[{i}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("key"), str) or not item["key"]:
                raise SpecError(f"{where} needs a key")
            operator = item.get("operator")
            if operator not in _SELECTOR_OPERATORS:
                raise SpecError(f"{where}: operator must be one of {', '.join(_SELECTOR_OPERATORS)}")
            values = item.get("values") or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SpecError(f"{where}: values must be a list of strings")
            # The same rules the API server applies to built-in selectors (Deployments, Services).
            if operator in ("In", "NotIn") and not values:
                raise SpecError(f"{where}: operator {operator} needs at least one value")
            if operator in ("Exists", "DoesNotExist") and values:
                raise SpecError(f"{where}: operator {operator} takes no values")
            requirements.append(Requirement(item["key"], operator, frozenset(values)))
        return cls(tuple(sorted(labels.items())), tuple(requirements))

    @classmethod
    def for_instance(cls, name: str) -> LabelSelector:
        """The default: ``app.kubernetes.io/instance=<MCPServer name>``."""
        return cls(((INSTANCE_LABEL, name),))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels] + [str(r) for r in self.match_expressions]
        return ",".join(parts) or "<everything>"


# --------------------------------------------------------------------------------------------
# MCPServer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerView:
    """What the operator needs of one MCPServer, read once from its body.

    A view whose spec cannot be acted on still exists (so that its status can say why): then
    :attr:`spec_error` is set and the identity fields may be empty.
    """

    namespace: str
    name: str
    uid: str
    generation: int
    image: str | None = None
    url: str | None = None
    endpoint: str | None = None
    transport: str = DEFAULT_TRANSPORT
    group: str = DEFAULT_GROUP
    selector: LabelSelector = field(default_factory=LabelSelector)
    registry_ref: RegistryRef | None = None
    #: True once the object has a deletionTimestamp: it must not be (re-)indexed.
    deleting: bool = False
    spec_error: str | None = None
    #: The value of the ``mcp-optimizer.dev/refresh`` annotation: any new value forces a re-read.
    refresh: str | None = None
    #: Set for one of ToolHive's objects (never written by us): its kind and what ToolHive's
    #: operator reports. Then ``endpoint`` is where its tools are read (ToolHive's proxy) and
    #: ``transport`` the transport spoken there.
    toolhive: ToolHiveState | None = None

    @property
    def workload_name(self) -> str:
        return workload_name(self.namespace, self.name, self.toolhive.kind if self.toolhive else None)

    @property
    def remote(self) -> bool:
        """Identified by URL (matched to remote registry entries) rather than by image."""
        return self.url is not None

    @property
    def status_from_tools_list(self) -> bool:
        """A remote MCPServer of ours: nothing but ``tools/list`` says whether it runs."""
        return self.toolhive is None and self.remote

    @property
    def read_key(self) -> tuple[object, ...]:
        """What the tools read from this server depend on: a change means they must be read again.

        Ours: the spec (its generation). ToolHive's: also the proxy URL and transport ToolHive
        reports and the tool configuration it applies there (``status.toolConfigHash``), none of
        which moves the generation.
        """
        if self.toolhive is None:
            return (self.generation,)
        state = self.toolhive
        return (self.generation, self.endpoint, self.transport, state.tool_config, state.tool_config_hash)

    @property
    def kind_label(self) -> str:
        """The kind as logs and metrics name it: ``MCPServer`` (ours) or e.g. ``MCPServer.toolhive``."""
        return KIND if self.toolhive is None else f"{self.toolhive.kind}.toolhive"

    @property
    def tools_endpoint(self) -> str | None:
        """Where ``tools/list`` goes: a remote server's URL, a container server's endpoint, the
        endpoint ToolHive reports for its objects."""
        if self.toolhive is not None:
            return self.endpoint
        return self.url if self.remote else self.endpoint

    @property
    def object_ref(self) -> dict[str, Any]:
        """A body just complete enough for Kubernetes Events (``kopf.event``) about this object."""
        toolhive = self.toolhive
        return {
            "apiVersion": API_VERSION if toolhive is None else toolhive.api_version,
            "kind": KIND if toolhive is None else toolhive.kind,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }


def _optional_str(spec: Mapping[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"spec.{key} must be a non-empty string")
    return value.strip()


def _parse_spec(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    image = _optional_str(spec, "image")
    url = _optional_str(spec, "url")
    # The CRD enforces exactly-one-of as well; checking again keeps the operator safe with a CRD
    # that was installed without validation (or edited).
    if image and url:
        raise SpecError("spec.image and spec.url are mutually exclusive: set exactly one")
    if not image and not url:
        raise SpecError("spec needs exactly one of image (a container server) or url (a remote server)")
    transport = spec.get("transport") or DEFAULT_TRANSPORT
    if transport not in TRANSPORTS:
        raise SpecError(f"spec.transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    endpoint = _optional_str(spec, "endpoint")
    if url and not url.lower().startswith(("http://", "https://")):
        raise SpecError(f"spec.url must be an http:// or https:// URL, got {redact_url(url)!r}")
    if image and not endpoint:
        raise SpecError(
            "spec.endpoint is required for a container server (spec.image): the URL its MCP "
            "endpoint is reached at, e.g. http://<service>.<namespace>.svc:8080/mcp"
        )
    if endpoint and not endpoint.lower().startswith(("http://", "https://")):
        raise SpecError(f"spec.endpoint must be an http:// or https:// URL, got {redact_url(endpoint)!r}")
    raw_selector = spec.get("podSelector")
    selector = LabelSelector.for_instance(name) if raw_selector is None else LabelSelector.parse(raw_selector)
    group = spec.get("group") or DEFAULT_GROUP
    if not isinstance(group, str):
        raise SpecError("spec.group must be a string")
    ref = spec.get("registryRef")
    registry_ref = None
    if ref is not None:
        if (
            not isinstance(ref, Mapping)
            or not isinstance(ref.get("catalog"), str)
            or not isinstance(ref.get("name"), str)
            or not ref["catalog"]
            or not ref["name"]
        ):
            raise SpecError("spec.registryRef needs both catalog (<namespace>/<configmap>) and name")
        registry_ref = RegistryRef(catalog=ref["catalog"], name=ref["name"])
    return {
        "image": image,
        "url": url,
        "endpoint": endpoint,
        "transport": transport,
        "group": group,
        "selector": selector,
        "registry_ref": registry_ref,
    }


def parse_server(body: Mapping[str, Any]) -> ServerView:
    """Read an MCPServer body. Never raises for a bad spec: the view carries :attr:`spec_error`."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    name = meta.get("name") or ""
    common: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "uid": meta.get("uid") or "",
        "generation": int(meta.get("generation") or 0),
        "deleting": meta.get("deletionTimestamp") is not None,
        "refresh": (meta.get("annotations") or {}).get(REFRESH_ANNOTATION),
    }
    spec = body.get("spec")
    try:
        if not isinstance(spec, Mapping):
            raise SpecError("spec is missing")
        return ServerView(**common, **_parse_spec(spec, name))
    except SpecError as exc:
        return ServerView(**common, spec_error=str(exc))


def distinct_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """A server's ``tools/list`` answer with one tool per name, and the names it repeated.

    MCP requires tool names to be unique per server, but servers get it wrong. The spec is not
    at fault, so this is no reason to stop serving the server: the first tool of each name is
    kept (``tools/call`` names a tool, so the server decides which one runs anyway) and the
    repeated names are reported. A tool without a name cannot be called and is dropped.
    """
    kept: dict[str, dict[str, Any]] = {}
    repeated: list[str] = []
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            if "(unnamed)" not in repeated:
                repeated.append("(unnamed)")
        elif name in kept:
            if name not in repeated:
                repeated.append(name)
        else:
            kept[name] = tool
    return list(kept.values()), repeated


def workload_spec(
    view: ServerView,
    *,
    status: WorkloadStatus,
    reason: str | None,
    tools: list[dict[str, Any]] | None,
) -> WorkloadSpec:
    """The index's description of a (valid) MCPServer."""
    if view.spec_error is not None:
        raise SpecError(view.spec_error)
    return WorkloadSpec(
        workload_name=view.workload_name,
        name=view.name,
        url=view.url,
        package=view.image,
        endpoint=view.tools_endpoint,
        transport=view.transport,
        status=status,
        status_reason=reason,
        group=view.group,
        namespace=view.namespace,
        registry_ref=view.registry_ref,
        tools=tools,
    )


# --------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodState:
    """The part of a pod that decides its server's status (kept in the operator's pod index)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    phase: str
    ready: bool
    #: (container name, reason) of every container waiting for a reason that needs attention.
    failing: tuple[tuple[str, str], ...] = ()
    terminating: bool = False
    #: Pod-level reason/message, e.g. Evicted; shown for Failed pods.
    reason: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodState:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        conditions = status.get("conditions") or ()
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        failing: list[tuple[str, str]] = []
        for key in ("initContainerStatuses", "containerStatuses"):
            for container in status.get(key) or ():
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in FAILING_WAIT_REASONS:
                    failing.append((container.get("name") or "?", waiting["reason"]))
        return cls(
            name=meta.get("name") or "",
            labels=tuple(sorted((meta.get("labels") or {}).items())),
            phase=status.get("phase") or "Pending",
            ready=ready,
            failing=tuple(failing),
            terminating=meta.get("deletionTimestamp") is not None,
            reason=status.get("reason") or status.get("message"),
        )

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def serving(self) -> bool:
        # A terminating pod is taken out of its Service's endpoints, so it no longer serves.
        return self.phase == "Running" and self.ready and not self.terminating


@dataclass(frozen=True)
class RuntimeStatus:
    """What the cluster says about a server: the status the index filters on, and why.

    ``code`` is a CamelCase reason for conditions; ``message`` a sentence for people.
    """

    status: WorkloadStatus
    code: str
    message: str


def unmatchable_label(selector: LabelSelector) -> tuple[str, str] | None:
    """A ``matchLabels`` pair no pod can carry: Kubernetes label values are at most 63 characters.

    The default selector ``app.kubernetes.io/instance=<name>`` is such a pair for an MCPServer
    whose name is longer than that (names may have up to 253 characters).
    """
    for key, value in selector.match_labels:
        if len(value) > MAX_LABEL_VALUE_CHARS:
            return key, value
    return None


def pods_status(pods: Iterable[PodState], selector: LabelSelector) -> RuntimeStatus:
    """A container server's status from its pods (the issue's rules, in order):

    RUNNING when at least one selected pod is Running and Ready; ERROR when a selected pod is
    Failed or has a container waiting in CrashLoopBackOff, ImagePullBackOff, ErrImagePull or
    CreateContainerConfigError; STOPPED otherwise (no pods, Pending, Succeeded, not Ready).
    A selector no pod can ever match says so (``PodSelectorUnmatchable``), not just "no pods".
    """
    selected = sorted((p for p in pods if selector.matches(p.label_map)), key=lambda p: p.name)
    if not selected:
        if (impossible := unmatchable_label(selector)) is not None:
            key, value = impossible
            hint = (
                "the default selector uses the MCPServer's name, which is too long for it: set spec.podSelector "
                "to labels the server's pods carry, or use a shorter name"
                if key == INSTANCE_LABEL
                else "fix spec.podSelector"
            )
            return RuntimeStatus(
                WorkloadStatus.STOPPED,
                "PodSelectorUnmatchable",
                f"no pod can match the selector label {key}={value[:20]}...: label values are at most "
                f"{MAX_LABEL_VALUE_CHARS} characters and this one has {len(value)}; {hint}",
            )
        return RuntimeStatus(WorkloadStatus.STOPPED, "NoPods", f"no pods match the selector {selector}")
    serving = [p for p in selected if p.serving]
    if serving:
        names = ", ".join(p.name for p in serving[:3]) + (", ..." if len(serving) > 3 else "")
        return RuntimeStatus(
            WorkloadStatus.RUNNING, "PodsReady", f"{len(serving)}/{len(selected)} pods Running and Ready ({names})"
        )
    for pod in selected:
        if pod.failing:
            container, reason = pod.failing[0]
            return RuntimeStatus(WorkloadStatus.ERROR, reason, f"pod {pod.name}: container {container} is in {reason}")
    for pod in selected:
        if pod.phase == "Failed":
            detail = f": {pod.reason}" if pod.reason else ""
            return RuntimeStatus(WorkloadStatus.ERROR, "PodFailed", f"pod {pod.name} Failed{detail}")
    pod = selected[0]
    if pod.terminating:
        return RuntimeStatus(WorkloadStatus.STOPPED, "PodTerminating", f"pod {pod.name} is terminating")
    if pod.phase == "Running":
        return RuntimeStatus(WorkloadStatus.STOPPED, "PodNotReady", f"pod {pod.name} is Running but not Ready")
    if pod.phase == "Succeeded":
        return RuntimeStatus(WorkloadStatus.STOPPED, "PodSucceeded", f"pod {pod.name} has exited (Succeeded)")
    return RuntimeStatus(WorkloadStatus.STOPPED, f"Pod{pod.phase}", f"pod {pod.name} is {pod.phase}")


def tools_listed(tool_count: int) -> RuntimeStatus:
    """A remote server whose ``tools/list`` answered: it is RUNNING."""
    return RuntimeStatus(WorkloadStatus.RUNNING, "ToolsListed", f"tools/list answered with {tool_count} tools")


def tools_failed(message: str, code: str = "ToolsListFailed") -> RuntimeStatus:
    """A server whose ``tools/list`` failed (unreachable, timed out, not MCP, refused, over a
    bound) or whose forwarded call failed: it is ERROR."""
    return RuntimeStatus(WorkloadStatus.ERROR, code, message)
