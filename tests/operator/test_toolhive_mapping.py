"""ToolHive's objects -> the index: the pure rules (phase -> status, body -> view -> WorkloadSpec,
groups, proxy URLs, names, what is left out)."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.operator.mapping import parse_server, workload_name, workload_spec
from mcp_optimizer.operator.toolhive_mapping import (
    MCP_SERVER,
    REMOTE_PROXY,
    SERVER_ENTRY,
    SERVER_KINDS,
    VIRTUAL_SERVER,
    ToolHiveOptions,
    belongs_in_index,
    parse_toolhive,
    proxy_endpoint,
    toolhive_group,
    toolhive_status,
)
from tests.support import toolhive as th

NO_OPTIONS = ToolHiveOptions()


def body(
    kind: str,
    spec: dict[str, Any] | None,
    status: dict[str, Any] | None = None,
    *,
    name: str = "fetch",
    labels: dict[str, str] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "toolhive.stacklok.dev/v1beta1",
        "kind": kind,
        "metadata": {"namespace": "team-a", "name": name, "uid": "u-1", "generation": 2, **meta},
        "spec": spec,
    }
    if labels is not None:
        doc["metadata"]["labels"] = labels
    if status is not None:
        doc["status"] = status
    return doc


def view_of(kind: str, spec: dict[str, Any] | None, status: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    options = kwargs.pop("options", NO_OPTIONS)
    return parse_toolhive(body(kind, spec, status, **kwargs), kind=kind, version="v1beta1", options=options)


IMAGE = "ghcr.io/stackloklabs/gofetch/server"
PROXY = "http://mcp-fetch-proxy.team-a.svc.cluster.local:8080/mcp"


# ------------------------------------------------------------------------------ phase -> status


@pytest.mark.parametrize(
    ("kind", "phase", "status"),
    [
        (MCP_SERVER, "Ready", WorkloadStatus.RUNNING),
        (MCP_SERVER, "Running", WorkloadStatus.RUNNING),  # v1alpha1's name for Ready
        (MCP_SERVER, "Pending", WorkloadStatus.STOPPED),
        (MCP_SERVER, "Stopped", WorkloadStatus.STOPPED),
        (MCP_SERVER, "Terminating", WorkloadStatus.STOPPED),
        (MCP_SERVER, "Failed", WorkloadStatus.ERROR),
        (MCP_SERVER, None, WorkloadStatus.STOPPED),
        (MCP_SERVER, "Exploded", WorkloadStatus.STOPPED),
        (REMOTE_PROXY, "Ready", WorkloadStatus.RUNNING),
        (REMOTE_PROXY, "Terminating", WorkloadStatus.STOPPED),
        (REMOTE_PROXY, "Failed", WorkloadStatus.ERROR),
        (VIRTUAL_SERVER, "Ready", WorkloadStatus.RUNNING),
        (VIRTUAL_SERVER, "Degraded", WorkloadStatus.RUNNING),  # some backends down: the rest serve
        (VIRTUAL_SERVER, "Pending", WorkloadStatus.STOPPED),
        (VIRTUAL_SERVER, "Failed", WorkloadStatus.ERROR),
        (SERVER_ENTRY, "Valid", WorkloadStatus.RUNNING),
        (SERVER_ENTRY, "Pending", WorkloadStatus.STOPPED),
        (SERVER_ENTRY, "Failed", WorkloadStatus.ERROR),
    ],
)
def test_phase_to_status(kind: str, phase: str, status: WorkloadStatus) -> None:
    spec: dict[str, Any] = {"image": IMAGE} if kind == MCP_SERVER else {"remoteUrl": "https://mcp.example.com/mcp"}
    if kind == VIRTUAL_SERVER:
        spec = {"groupRef": {"name": "g"}}
    options = ToolHiveOptions.parse(["team-a/g"]) if kind == VIRTUAL_SERVER else NO_OPTIONS
    status_doc = {"url": "http://vmcp-x.team-a.svc:4483"} if kind != SERVER_ENTRY else {}
    if phase is not None:
        status_doc["phase"] = phase
    view = view_of(kind, spec, status_doc, options=options)
    assert view.spec_error is None
    assert toolhive_status(view).status is status


def test_ready_without_a_usable_url_is_not_running() -> None:
    for url in (None, "", "mcp-fetch-proxy:8080/mcp", "ftp://x/mcp", "http://" + "a" * 3000):
        view = view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Ready", "url": url})
        runtime = toolhive_status(view)
        assert (runtime.status, runtime.code) == (WorkloadStatus.STOPPED, "NoURL"), url


def test_failure_message_is_shown_and_bounded() -> None:
    view = view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Failed", "message": "image pull failed " + "x" * 1000})
    runtime = toolhive_status(view)
    assert runtime.status is WorkloadStatus.ERROR and runtime.code == "PhaseFailed"
    assert runtime.message.startswith("ToolHive reports Failed: image pull failed")
    assert len(runtime.message) < 300


def test_an_object_toolhive_has_not_reconciled_yet_is_not_indexed() -> None:
    view = view_of(MCP_SERVER, {"image": IMAGE})
    assert not belongs_in_index(view) and "no status.phase" in view.toolhive.excluded
    assert belongs_in_index(view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Pending"}))


def test_deleting_object_is_stopped_and_not_indexed() -> None:
    view = view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Ready", "url": PROXY},
                   deletionTimestamp="2026-01-01T00:00:00Z")
    assert toolhive_status(view).status is WorkloadStatus.STOPPED
    assert not belongs_in_index(view)


# ------------------------------------------------------------------------------ body -> view -> spec


def test_mcpserver_is_matched_by_image_and_read_at_its_proxy() -> None:
    view = view_of(MCP_SERVER, {"image": IMAGE, "transport": "stdio", "groupRef": {"name": "eng"},
                                "toolConfigRef": {"name": "fetch-tools"}},
                   {"phase": "Ready", "url": PROXY, "toolConfigHash": "abc"})
    assert view.workload_name == "team-a/mcpserver.toolhive/fetch"
    assert view.kind_label == "MCPServer.toolhive"
    assert view.toolhive.tool_config == "fetch-tools" and view.toolhive.tool_config_hash == "abc"
    spec = workload_spec(view, status=WorkloadStatus.RUNNING, reason=None, tools=[])
    assert (spec.package, spec.url) == (IMAGE, None)
    # ToolHive's proxy speaks HTTP even for a stdio server: that is the transport stored and used.
    assert (spec.endpoint, spec.transport) == (PROXY, "streamable-http")
    assert (spec.group, spec.namespace, spec.name) == ("eng", "team-a", "fetch")
    assert spec.workload_name == "team-a/mcpserver.toolhive/fetch"
    assert view.object_ref == {
        "apiVersion": "toolhive.stacklok.dev/v1beta1", "kind": "MCPServer",
        "metadata": {"namespace": "team-a", "name": "fetch", "uid": "u-1"},
    }


def test_sse_proxy_url_drops_its_fragment() -> None:
    assert proxy_endpoint("http://mcp-gh-proxy.ns.svc.cluster.local:8080/sse#github", MCP_SERVER) == (
        "http://mcp-gh-proxy.ns.svc.cluster.local:8080/sse", "sse")
    assert proxy_endpoint("http://127.0.0.1:9/sse", MCP_SERVER) == ("http://127.0.0.1:9/sse", "sse")
    # A remote proxy keeps the remote server's path; the fragment still says SSE.
    assert proxy_endpoint("http://mcp-a-proxy.ns.svc:8080/v1/events#a", REMOTE_PROXY) == (
        "http://mcp-a-proxy.ns.svc:8080/v1/events", "sse")
    assert proxy_endpoint("http://mcp-a-proxy.ns.svc:8080/mcp?x=1", REMOTE_PROXY) == (
        "http://mcp-a-proxy.ns.svc:8080/mcp?x=1", "streamable-http")


def test_vmcp_url_has_no_path_and_serves_at_mcp() -> None:
    assert proxy_endpoint("http://vmcp-eng.ns.svc.cluster.local:4483", VIRTUAL_SERVER) == (
        "http://vmcp-eng.ns.svc.cluster.local:4483/mcp", "streamable-http")
    assert proxy_endpoint("http://vmcp-eng.ns.svc:4483/custom", VIRTUAL_SERVER)[0] == "http://vmcp-eng.ns.svc:4483/custom"


def test_remote_proxy_is_matched_by_its_remote_url_and_read_at_its_proxy() -> None:
    view = view_of(REMOTE_PROXY, {"remoteUrl": "https://mcp.notion.com/mcp", "transport": "streamable-http"},
                   {"phase": "Ready", "url": "http://mcp-notion-proxy.team-a.svc.cluster.local:8080/mcp"})
    spec = workload_spec(view, status=WorkloadStatus.RUNNING, reason=None, tools=None)
    assert (spec.url, spec.package) == ("https://mcp.notion.com/mcp", None)
    assert spec.endpoint == "http://mcp-notion-proxy.team-a.svc.cluster.local:8080/mcp"
    assert view.workload_name == "team-a/mcpremoteproxy.toolhive/fetch"


def test_server_entry_is_read_at_its_remote_url() -> None:
    view = view_of(SERVER_ENTRY, {"remoteUrl": "https://mcp.context7.com/mcp", "transport": "streamable-http",
                                  "groupRef": {"name": "remote-tools"}}, {"phase": "Valid"})
    spec = workload_spec(view, status=WorkloadStatus.RUNNING, reason=None, tools=None)
    assert spec.url == spec.endpoint == "https://mcp.context7.com/mcp"
    assert spec.group == "remote-tools"
    assert toolhive_status(view).status is WorkloadStatus.RUNNING
    sse = view_of(SERVER_ENTRY, {"remoteUrl": "https://mcp.atlassian.com/v1/sse"}, {"phase": "Valid"})
    assert sse.transport == "sse"  # no spec.transport: the URL says SSE


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        (MCP_SERVER, {}, "spec.image must be a non-empty string"),
        (MCP_SERVER, {"image": "UPPER CASE/!!"}, "spec.image"),
        (MCP_SERVER, {"image": "ghcr.io/" + "a" * 3000}, "longer than 2048"),
        (REMOTE_PROXY, {"remoteUrl": "ftp://x"}, "http:// or https://"),
        (SERVER_ENTRY, {"remoteUrl": "https://x/mcp", "transport": "stdio"}, "spec.transport"),
        (MCP_SERVER, {"image": IMAGE, "groupRef": {"name": "g" * 300}}, "spec.groupRef"),
        (MCP_SERVER, None, "spec is missing"),
    ],
)
def test_bad_objects_are_reported_not_raised(kind: str, spec: dict[str, Any] | None, message: str) -> None:
    view = view_of(kind, spec, {"phase": "Ready", "url": PROXY})
    assert view.spec_error is not None and message in view.spec_error
    assert view.toolhive.kind == kind
    assert not belongs_in_index(view)


# ------------------------------------------------------------------------------ groups


def test_group_from_groupref_object_string_label_or_default() -> None:
    assert toolhive_group({"groupRef": {"name": "eng"}}, {}) == "eng"  # v1beta1
    assert toolhive_group({"groupRef": "eng"}, {}) == "eng"  # old v1alpha1
    assert toolhive_group({}, {"toolhive.stacklok.dev/group": "ops"}) == "ops"
    assert toolhive_group({"groupRef": {"name": "eng"}}, {"toolhive.stacklok.dev/group": "ops"}) == "eng"
    assert toolhive_group({}, None) == "default"
    assert toolhive_group({"groupRef": {"name": ""}}, {}) == "default"


# ------------------------------------------------------------------------------ names


def test_toolhive_and_our_mcpserver_of_the_same_name_are_two_workloads() -> None:
    ours = parse_server({"metadata": {"namespace": "team-a", "name": "fetch", "uid": "o"},
                         "spec": {"url": "https://fetch.example.com/mcp"}})
    theirs = view_of(MCP_SERVER, {"image": IMAGE}, name="fetch")
    assert ours.workload_name == "team-a/fetch"
    assert theirs.workload_name == "team-a/mcpserver.toolhive/fetch"
    names = {workload_name("team-a", "fetch", kind) for kind in SERVER_KINDS} | {ours.workload_name}
    assert len(names) == 5
    # Pinned tools are "<workload>/<tool>", split at the last "/": still unambiguous.
    assert f"{theirs.workload_name}/fetch".rpartition("/")[0] == theirs.workload_name


# ------------------------------------------------------------------------------ what is indexed


def test_vmcp_is_left_out_unless_its_group_is_indexed_through_it() -> None:
    vmcp = {"groupRef": {"name": "eng"}}
    url = {"phase": "Ready", "url": "http://vmcp-eng.team-a.svc:4483"}
    default = view_of(VIRTUAL_SERVER, vmcp, url)
    assert not belongs_in_index(default)
    assert "MCP_OPTIMIZER_TOOLHIVE_VMCP_GROUPS=team-a/eng" in default.toolhive.excluded
    backend = view_of(MCP_SERVER, {"image": IMAGE, "groupRef": {"name": "eng"}}, {"phase": "Ready", "url": PROXY})
    assert belongs_in_index(backend)

    through = ToolHiveOptions.parse(["team-a/eng"])
    chosen = view_of(VIRTUAL_SERVER, vmcp, url, options=through)
    assert belongs_in_index(chosen)
    assert chosen.workload_name == "team-a/virtualmcpserver.toolhive/fetch"
    assert chosen.url == chosen.endpoint == "http://vmcp-eng.team-a.svc:4483/mcp"
    left_out = view_of(MCP_SERVER, {"image": IMAGE, "groupRef": {"name": "eng"}}, {"phase": "Ready"}, options=through)
    assert not belongs_in_index(left_out)
    assert "through its VirtualMCPServer" in left_out.toolhive.excluded
    # Another group's backends, and the same group name in another namespace, are unaffected.
    pending = {"phase": "Pending"}
    ops = {"image": IMAGE, "groupRef": {"name": "ops"}}
    assert belongs_in_index(view_of(MCP_SERVER, ops, pending, options=through))
    other_ns = parse_toolhive({**body(MCP_SERVER, {"image": IMAGE, "groupRef": {"name": "eng"}}, pending),
                               "metadata": {"namespace": "team-b", "name": "x", "uid": "u"}},
                              kind=MCP_SERVER, version="v1beta1", options=through)
    assert belongs_in_index(other_ns)
    # A chosen vMCP without a URL yet has nothing to be read or matched by.
    assert not belongs_in_index(view_of(VIRTUAL_SERVER, vmcp, {"phase": "Pending"}, options=through))


def test_vmcp_groups_setting_is_checked() -> None:
    assert ToolHiveOptions.parse([" a/b ", "c/d"]).vmcp_groups == {("a", "b"), ("c", "d")}
    assert ToolHiveOptions().server_kinds == (MCP_SERVER, REMOTE_PROXY, SERVER_ENTRY)
    assert VIRTUAL_SERVER in ToolHiveOptions.parse(["a/b"]).server_kinds
    for bad in ("nogroup", "/g", "ns/", "a/b/c"):
        with pytest.raises(ValueError, match="namespace>/<group"):
            ToolHiveOptions.parse([bad])


# ------------------------------------------------------------------------------ read key


def test_read_key_moves_with_what_the_tools_depend_on_not_with_the_phase() -> None:
    base = view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Ready", "url": PROXY})
    assert view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Failed", "url": PROXY}).read_key == base.read_key
    assert view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Ready", "url": PROXY + "2"}).read_key != base.read_key
    hashed = view_of(MCP_SERVER, {"image": IMAGE}, {"phase": "Ready", "url": PROXY, "toolConfigHash": "h"})
    assert hashed.read_key != base.read_key
    ours = parse_server({"metadata": {"namespace": "a", "name": "b", "uid": "u", "generation": 7},
                         "spec": {"url": "https://x.example.com/mcp"}})
    assert ours.read_key == (7,)


# ------------------------------------------------------------------------------ ToolHive's examples


def test_every_example_server_parses_cleanly() -> None:
    """ToolHive's own example objects, unchanged, all become valid views."""
    seen = set()
    for path in sorted((th.toolhive_dir() / "examples").glob("*.yaml")):
        for doc in th.example(path.stem):
            if doc["kind"] not in SERVER_KINDS:
                continue
            view = parse_toolhive(doc, kind=doc["kind"], version="v1beta1", options=ToolHiveOptions.parse(
                [f"{doc['metadata']['namespace']}/{(doc['spec'].get('groupRef') or {}).get('name', 'default')}"]
                if doc["kind"] == VIRTUAL_SERVER else []))
            assert view.spec_error is None, (path.name, view.spec_error)
            seen.add(doc["kind"])
    assert seen == set(SERVER_KINDS) - {REMOTE_PROXY}  # ToolHive ships no MCPRemoteProxy example here
