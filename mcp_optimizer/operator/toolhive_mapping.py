"""Pure translations of ToolHive's objects (``toolhive.stacklok.dev``) into what the index understands.

ToolHive's operator owns these objects; we only read them. Each server-like object becomes a
:class:`~mcp_optimizer.operator.mapping.ServerView` carrying a :class:`ToolHiveState`, so the one
reconciler handles ours and ToolHive's alike:

============================  =====================  ===========================  ==================
kind                          identity (matching)    tools read at                phase -> status
============================  =====================  ===========================  ==================
MCPServer                     ``spec.image``         ``status.url`` (its proxy)   see below
MCPRemoteProxy                ``spec.remoteUrl``     ``status.url`` (its proxy)
MCPServerEntry                ``spec.remoteUrl``     ``spec.remoteUrl`` (no pod)
VirtualMCPServer (opt-in)     its endpoint           ``status.url`` + ``/mcp``
============================  =====================  ===========================  ==================

Phases: ``Ready`` (and v1alpha1's ``Running``), vMCP's ``Degraded`` and MCPServerEntry's
``Valid`` are RUNNING; ``Pending``, ``Stopped`` and ``Terminating`` STOPPED; ``Failed`` ERROR;
an object ToolHive has not reconciled yet (no ``status.phase``) is not indexed. An
MCPServerEntry has no pod and no ``status.url``: ``Valid`` means ToolHive accepted it, so it is
RUNNING and its tools are read at ``spec.remoteUrl`` like any remote server, and a failing
``tools/list`` makes it ERROR (as for every server).

ToolHive's proxy speaks HTTP even for a stdio server: ``status.url`` ends in ``/sse#<name>`` for
SSE (the fragment is dropped) and is plain for streamable HTTP. The group is ``spec.groupRef.name``
(an object since v1beta1, a string in old v1alpha1 objects), else the label
``toolhive.stacklok.dev/group``, else ``default``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcp_optimizer.catalog import normalize_image, normalize_url
from mcp_optimizer.operator.mapping import DEFAULT_GROUP, RuntimeStatus, ServerView, SpecError
from mcp_optimizer.vocabulary import WorkloadStatus

TOOLHIVE_GROUP = "toolhive.stacklok.dev"
#: ToolHive's fallback for an object's group.
GROUP_LABEL = "toolhive.stacklok.dev/group"

MCP_SERVER = "MCPServer"
REMOTE_PROXY = "MCPRemoteProxy"
SERVER_ENTRY = "MCPServerEntry"
VIRTUAL_SERVER = "VirtualMCPServer"
TOOL_CONFIG = "MCPToolConfig"

#: The kinds that describe an MCP server, in the order they are listed and logged.
SERVER_KINDS = (MCP_SERVER, REMOTE_PROXY, SERVER_ENTRY, VIRTUAL_SERVER)
PLURALS = {
    MCP_SERVER: "mcpservers",
    REMOTE_PROXY: "mcpremoteproxies",
    SERVER_ENTRY: "mcpserverentries",
    VIRTUAL_SERVER: "virtualmcpservers",
    TOOL_CONFIG: "mcptoolconfigs",
}
KINDS_BY_PLURAL = {plural: kind for kind, plural in PLURALS.items()}
#: The kinds whose ``spec.toolConfigRef`` names an MCPToolConfig (applied by ToolHive's proxy).
TOOL_CONFIG_KINDS = (MCP_SERVER, REMOTE_PROXY)

RUNNING_PHASES = frozenset({"Ready", "Running", "Degraded", "Valid"})
STOPPED_PHASES = frozenset({"Pending", "Stopped", "Terminating"})
ERROR_PHASES = frozenset({"Failed"})

#: vMCP serves streamable HTTP here; its ``status.url`` has no path.
VMCP_PATH = "/mcp"
#: Longest image reference or URL accepted from an object (a Kubernetes object can hold 1.5 MB).
MAX_REFERENCE = 2048
#: Longest object or group name (a DNS subdomain).
MAX_NAME = 253
#: ToolHive's ``status.message`` is shown in reasons up to this many characters.
MAX_MESSAGE = 256
_TRANSPORTS = ("streamable-http", "sse")


@dataclass(frozen=True)
class ToolHiveState:
    """What the operator knows of one of ToolHive's objects beyond the server itself."""

    kind: str
    #: ``toolhive.stacklok.dev/<version>`` as watched (for Events about the object).
    api_version: str
    #: ``status.phase`` as ToolHive's operator wrote it; None before it wrote one.
    phase: str | None = None
    #: ``status.message``, shortened to :data:`MAX_MESSAGE`.
    message: str | None = None
    #: ``spec.toolConfigRef.name``: an MCPToolConfig change re-reads the server's tools.
    tool_config: str | None = None
    #: ``status.toolConfigHash``: ToolHive applied a new tool configuration to its proxy.
    tool_config_hash: str | None = None
    #: Why the object is not indexed (a VirtualMCPServer by default, ...); None when it is.
    excluded: str | None = None


@dataclass(frozen=True)
class ToolHiveOptions:
    """How ToolHive's objects are indexed (from :class:`~mcp_optimizer.config.Settings`)."""

    #: (namespace, group) indexed through their VirtualMCPServer instead of their backends.
    vmcp_groups: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def parse(cls, vmcp_groups: Iterable[str]) -> ToolHiveOptions:
        """Read ``MCP_OPTIMIZER_TOOLHIVE_VMCP_GROUPS`` items (``namespace/group``)."""
        groups = set()
        for item in vmcp_groups:
            namespace, sep, group = item.strip().partition("/")
            if not sep or not namespace or not group or "/" in group:
                raise ValueError(
                    f"MCP_OPTIMIZER_TOOLHIVE_VMCP_GROUPS: {item!r} is not <namespace>/<group>"
                )
            groups.add((namespace, group))
        return cls(frozenset(groups))

    @property
    def server_kinds(self) -> tuple[str, ...]:
        """The kinds worth watching: VirtualMCPServers only when a group is indexed through one."""
        return tuple(k for k in SERVER_KINDS if k != VIRTUAL_SERVER or self.vmcp_groups)


def toolhive_group(spec: Mapping[str, Any], labels: Mapping[str, Any] | None) -> str:
    """``spec.groupRef.name`` (v1beta1 object) or ``spec.groupRef`` (old v1alpha1 string), else the
    ``toolhive.stacklok.dev/group`` label, else ``default``."""
    ref = spec.get("groupRef")
    name = ref.get("name") if isinstance(ref, Mapping) else ref
    if name is None or name == "":
        name = (labels or {}).get(GROUP_LABEL)
    if name is None or name == "":
        return DEFAULT_GROUP
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise SpecError(f"spec.groupRef must name a group (a string of at most {MAX_NAME} characters)")
    return name


def proxy_endpoint(url: object, kind: str) -> tuple[str | None, str]:
    """(endpoint, transport) from a ``status.url`` ToolHive wrote; (None, ...) when it is unusable.

    ``.../sse#<name>`` is SSE (a fragment is how ToolHive marks SSE URLs; it is not sent); any
    other URL is streamable HTTP. A VirtualMCPServer's URL has no path: it serves at ``/mcp``.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_REFERENCE:
        return None, "streamable-http"
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None, "streamable-http"
    sse = bool(parts.fragment) or parts.path.rstrip("/").endswith("/sse")
    path = parts.path
    if kind == VIRTUAL_SERVER and path in ("", "/"):
        path = VMCP_PATH
    endpoint = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    return endpoint, "sse" if sse else "streamable-http"


def toolhive_exclusion(kind: str, namespace: str, group: str, options: ToolHiveOptions) -> str | None:
    """Why an object of a valid spec is not indexed, or None: a group is indexed either through
    its backends (the default) or through its VirtualMCPServer, never both (every tool twice)."""
    through_vmcp = (namespace, group) in options.vmcp_groups
    if kind == VIRTUAL_SERVER and not through_vmcp:
        return (
            f"VirtualMCPServers are not indexed: the backends of group {namespace}/{group} are "
            f"(MCP_OPTIMIZER_TOOLHIVE_VMCP_GROUPS={namespace}/{group} indexes the group through it)"
        )
    if kind != VIRTUAL_SERVER and through_vmcp:
        return f"group {namespace}/{group} is indexed through its VirtualMCPServer"
    return None


def _bounded(value: object, limit: int) -> str | None:
    """A string field of ToolHive's status, cut to ``limit`` characters; None if absent or not text."""
    if not isinstance(value, str) or not value:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _ref_name(spec: Mapping[str, Any], key: str) -> str | None:
    ref = spec.get(key)
    if ref is None:
        return None
    name = ref.get("name") if isinstance(ref, Mapping) else ref
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise SpecError(f"spec.{key}.name must be a name of at most {MAX_NAME} characters")
    return name or None


def _image(spec: Mapping[str, Any]) -> str:
    image = spec.get("image")
    if not isinstance(image, str) or not image.strip():
        raise SpecError("spec.image must be a non-empty string")
    if len(image) > MAX_REFERENCE:
        raise SpecError(f"spec.image is longer than {MAX_REFERENCE} characters")
    try:
        normalize_image(image.strip())
    except ValueError as exc:
        raise SpecError(f"spec.image: {exc}") from exc
    return image.strip()


def _remote_url(spec: Mapping[str, Any]) -> str:
    url = spec.get("remoteUrl")
    if not isinstance(url, str) or not url.strip():
        raise SpecError("spec.remoteUrl must be a non-empty string")
    if len(url) > MAX_REFERENCE:
        raise SpecError(f"spec.remoteUrl is longer than {MAX_REFERENCE} characters")
    url = url.strip()
    if not url.lower().startswith(("http://", "https://")):
        raise SpecError(f"spec.remoteUrl must be an http:// or https:// URL, got {url[:100]!r}")
    try:
        normalize_url(url)
    except ValueError as exc:
        raise SpecError(f"spec.remoteUrl: {exc}") from exc
    return url


def _entry_transport(spec: Mapping[str, Any], url: str) -> str:
    transport = spec.get("transport")
    if transport is None:
        return "sse" if urlsplit(url).path.rstrip("/").endswith("/sse") else "streamable-http"
    if transport not in _TRANSPORTS:
        raise SpecError(f"spec.transport must be one of {', '.join(_TRANSPORTS)}, got {str(transport)[:40]!r}")
    return str(transport)


def parse_toolhive(body: Mapping[str, Any], *, kind: str, version: str, options: ToolHiveOptions) -> ServerView:
    """Read one of ToolHive's server objects. Never raises for bad data: the view carries
    ``spec_error`` (reported as an Event, nothing indexed)."""
    if kind not in SERVER_KINDS:
        raise ValueError(f"not a ToolHive server kind: {kind!r}")
    meta = body.get("metadata") or {}
    status = body.get("status")
    status = status if isinstance(status, Mapping) else {}
    namespace = meta.get("namespace") or ""
    common: dict[str, Any] = {
        "namespace": namespace,
        "name": meta.get("name") or "",
        "uid": meta.get("uid") or "",
        "generation": int(meta.get("generation") or 0),
        "deleting": meta.get("deletionTimestamp") is not None,
    }
    reported: dict[str, Any] = {
        "kind": kind,
        "api_version": f"{TOOLHIVE_GROUP}/{version}",
        "phase": _bounded(status.get("phase"), 64),
        "message": _bounded(status.get("message"), MAX_MESSAGE),
    }
    spec = body.get("spec")
    try:
        if not isinstance(spec, Mapping):
            raise SpecError("spec is missing")
        group = toolhive_group(spec, meta.get("labels"))
        fields: dict[str, Any]
        if kind == MCP_SERVER:
            endpoint, transport = proxy_endpoint(status.get("url"), kind)
            fields = {"image": _image(spec), "endpoint": endpoint, "transport": transport}
        elif kind == REMOTE_PROXY:
            endpoint, transport = proxy_endpoint(status.get("url"), kind)
            fields = {"url": _remote_url(spec), "endpoint": endpoint, "transport": transport}
        elif kind == SERVER_ENTRY:
            url = _remote_url(spec)
            fields = {"url": url, "endpoint": url, "transport": _entry_transport(spec, url)}
        else:
            endpoint, transport = proxy_endpoint(status.get("url"), kind)
            # A vMCP is no registry entry: its own endpoint is its identity.
            fields = {"url": endpoint, "endpoint": endpoint, "transport": transport}
        excluded = toolhive_exclusion(kind, namespace, group, options)
        if excluded is None and reported["phase"] is None:
            # Objects are created without a status and ToolHive writes one a moment later: a row
            # now would cost an embedding of its description only to be replaced at once.
            excluded = f"ToolHive has not reconciled the {kind} yet (no status.phase)"
        if excluded is None and kind == VIRTUAL_SERVER and fields["endpoint"] is None:
            excluded = "the VirtualMCPServer has no status.url yet"
        state = ToolHiveState(
            **reported,
            tool_config=_ref_name(spec, "toolConfigRef") if kind in TOOL_CONFIG_KINDS else None,
            tool_config_hash=_bounded(status.get("toolConfigHash"), MAX_REFERENCE),
            excluded=excluded,
        )
        return ServerView(**common, **fields, group=group, toolhive=state)
    except SpecError as exc:
        return ServerView(**common, spec_error=str(exc), toolhive=ToolHiveState(**reported))


def toolhive_status(view: ServerView) -> RuntimeStatus:
    """What ToolHive's phase says about a server (the index's status filter)."""
    state = view.toolhive
    if state is None:
        raise ValueError(f"{view.workload_name} is not one of ToolHive's objects")
    phase = state.phase
    detail = f": {state.message}" if state.message else ""
    if view.deleting:
        return RuntimeStatus(WorkloadStatus.STOPPED, "Terminating", f"{state.kind} is being deleted")
    if phase in RUNNING_PHASES:
        if view.tools_endpoint is None:
            return RuntimeStatus(
                WorkloadStatus.STOPPED, "NoURL", f"ToolHive reports {phase} but no usable http(s) status.url"
            )
        return RuntimeStatus(WorkloadStatus.RUNNING, f"Phase{phase}", f"ToolHive reports {phase}")
    if phase in ERROR_PHASES:
        return RuntimeStatus(WorkloadStatus.ERROR, f"Phase{phase}", f"ToolHive reports {phase}{detail}")
    if phase in STOPPED_PHASES:
        return RuntimeStatus(WorkloadStatus.STOPPED, f"Phase{phase}", f"ToolHive reports {phase}{detail}")
    if phase is None:
        return RuntimeStatus(WorkloadStatus.STOPPED, "NoPhase", "ToolHive has not reported a phase yet")
    return RuntimeStatus(WorkloadStatus.STOPPED, "UnknownPhase", f"ToolHive reports an unknown phase {phase!r}")


def belongs_in_index(view: ServerView) -> bool:
    """Whether the object belongs in the index (the garbage collector keeps exactly these rows)."""
    state = view.toolhive
    return state is not None and state.excluded is None and view.spec_error is None and not view.deleting
