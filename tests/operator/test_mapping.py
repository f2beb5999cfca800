"""The operator's pure rules: MCPServer -> WorkloadSpec, pods -> status, status document."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import RegistryNote, RegistryRef
from mcp_optimizer.operator.mapping import (
    LabelSelector,
    PodState,
    SpecError,
    distinct_tools,
    parse_server,
    pods_status,
    split_workload_name,
    workload_spec,
)
from mcp_optimizer.operator.status import (
    IndexProblem,
    ServerFacts,
    merge_conditions,
    render_status,
    same_status,
    warnings,
)


def server(spec: dict[str, Any] | None, *, name: str = "web", generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mcp-optimizer.dev/v1alpha1",
        "kind": "MCPServer",
        "metadata": {"namespace": "team-a", "name": name, "uid": "u-1", "generation": generation, **meta},
        "spec": spec,
    }


def pod(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    ready: bool = True,
    waiting: str | None = None,
    deleting: bool = False,
    init_waiting: str | None = None,
) -> PodState:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": waiting}} if waiting else {}}],
    }
    if init_waiting:
        status["initContainerStatuses"] = [{"name": "init", "state": {"waiting": {"reason": init_waiting}}}]
    meta: dict[str, Any] = {"name": name, "labels": labels or {"app.kubernetes.io/instance": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return PodState.from_body({"metadata": meta, "status": status})


# ------------------------------------------------------------------------------ MCPServer


def test_container_server_maps_to_a_workload_spec() -> None:
    view = parse_server(server({"image": "ghcr.io/acme/web:1.2", "endpoint": "http://web.team-a.svc:8080/mcp"}))
    assert view.spec_error is None
    assert view.workload_name == "team-a/web"
    assert not view.remote
    assert view.tools_endpoint == "http://web.team-a.svc:8080/mcp"
    assert str(view.selector) == "app.kubernetes.io/instance=web"  # the default
    spec = workload_spec(view, status=WorkloadStatus.RUNNING, reason="ok", tools=[{"name": "t"}])
    assert spec.workload_name == "team-a/web"
    assert spec.name == "web"
    assert spec.package == "ghcr.io/acme/web:1.2"
    assert spec.url is None
    assert spec.endpoint == "http://web.team-a.svc:8080/mcp"
    assert spec.namespace == "team-a"
    assert spec.group == "default"
    assert spec.transport == "streamable-http"
    assert spec.status is WorkloadStatus.RUNNING
    assert spec.tools == [{"name": "t"}]


def test_remote_server_uses_its_url_as_identity_and_endpoint() -> None:
    body = server({
        "url": "https://mcp.example.com/mcp",
        "transport": "sse",
        "group": "search",
        "registryRef": {"catalog": "ops/catalog", "name": "example"},
    })
    view = parse_server(body)
    assert view.remote
    assert view.tools_endpoint == "https://mcp.example.com/mcp"
    spec = workload_spec(view, status=WorkloadStatus.STOPPED, reason=None, tools=None)
    assert spec.url == "https://mcp.example.com/mcp"
    assert spec.package is None
    assert spec.group == "search"
    assert spec.transport == "sse"
    assert spec.registry_ref == RegistryRef("ops/catalog", "example")
    assert spec.tools is None  # None keeps the stored tools


def test_stdio_servers_keep_their_declared_transport() -> None:
    # What is spoken to the bridge in front of a stdio server is the MCP client's decision
    # (mcp.client.wire_transport), for tools/list and call_tool alike: the index stores what
    # the spec declares.
    view = parse_server(server({"image": "x/y", "endpoint": "http://proxy/mcp", "transport": "stdio"}))
    assert view.transport == "stdio"
    spec = workload_spec(view, status=WorkloadStatus.STOPPED, reason=None, tools=None)
    assert spec.transport == "stdio"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"image": "a/b", "url": "https://x/mcp", "endpoint": "http://e/mcp"}, "mutually exclusive"),
        ({"transport": "sse"}, "exactly one of image"),
        ({"image": "a/b"}, "spec.endpoint is required"),
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"image": "a/b", "endpoint": "web:8080"}, "spec.endpoint must be an http"),
        ({"url": "https://x/mcp", "transport": "grpc"}, "spec.transport"),
        ({"url": "https://x/mcp", "registryRef": {"name": "only"}}, "registryRef"),
        ({"url": "https://x/mcp", "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "value"),
        ({"url": "https://x/mcp", "podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}, "op"),
    ],
)
def test_invalid_specs_are_reported_not_raised(spec: dict[str, Any], message: str) -> None:
    view = parse_server(server(spec))
    assert view.spec_error is not None
    assert message in view.spec_error
    with pytest.raises(SpecError):
        workload_spec(view, status=WorkloadStatus.STOPPED, reason=None, tools=None)


def test_missing_spec_and_deletion_are_seen() -> None:
    assert parse_server(server(None)).spec_error == "spec is missing"
    view = parse_server(server({"url": "https://x/mcp"}, deletionTimestamp="2024-01-01T00:00:00Z"))
    assert view.deleting


def test_workload_names_round_trip() -> None:
    assert split_workload_name("team-a/web") == ("team-a", "web")
    with pytest.raises(ValueError):
        split_workload_name("no-namespace")


def test_object_ref_is_enough_for_events() -> None:
    ref = parse_server(server({"url": "https://x/mcp"})).object_ref
    assert ref["kind"] == "MCPServer"
    assert ref["metadata"] == {"namespace": "team-a", "name": "web", "uid": "u-1"}


# ------------------------------------------------------------------------------ selectors


def test_label_selector_semantics() -> None:
    selector = LabelSelector.parse({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["mcp", "api"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["eu"]},
            {"key": "owner", "operator": "Exists"},
        ],
    })
    base = {"app": "web", "tier": "mcp", "owner": "me"}
    assert selector.matches(base)
    assert selector.matches({**base, "zone": "us"})
    assert not selector.matches({**base, "zone": "eu"})
    assert not selector.matches({**base, "canary": "1"})
    assert not selector.matches({**base, "tier": "db"})
    assert not selector.matches({"app": "web", "tier": "mcp"})  # owner missing
    assert not selector.matches(None)
    assert str(selector) == "app=web,tier in (api,mcp),!canary,zone notin (eu),owner"


def test_empty_selector_selects_everything() -> None:
    assert LabelSelector.parse({}).matches({"any": "thing"})
    assert LabelSelector.parse({}).matches({})


# ------------------------------------------------------------------------------ pods -> status

SELECTOR = LabelSelector.for_instance("web")


def test_no_pods_is_stopped() -> None:
    result = pods_status([], SELECTOR)
    assert result.status is WorkloadStatus.STOPPED
    assert result.code == "NoPods"
    assert "app.kubernetes.io/instance=web" in result.message


def test_pods_of_other_servers_are_ignored() -> None:
    assert pods_status([pod("other-0", labels={"app.kubernetes.io/instance": "other"})], SELECTOR).code == "NoPods"


@pytest.mark.parametrize(
    ("pods", "status", "code"),
    [
        ([pod("web-0", phase="Pending", ready=False)], WorkloadStatus.STOPPED, "PodPending"),
        ([pod("web-0")], WorkloadStatus.RUNNING, "PodsReady"),
        ([pod("web-0", ready=False)], WorkloadStatus.STOPPED, "PodNotReady"),
        ([pod("web-0", ready=False, waiting="CrashLoopBackOff")], WorkloadStatus.ERROR, "CrashLoopBackOff"),
        ([pod("web-0", phase="Pending", ready=False, waiting="ImagePullBackOff")], WorkloadStatus.ERROR,
         "ImagePullBackOff"),
        ([pod("web-0", phase="Pending", ready=False, waiting="ErrImagePull")], WorkloadStatus.ERROR, "ErrImagePull"),
        ([pod("web-0", phase="Pending", ready=False, waiting="CreateContainerConfigError")], WorkloadStatus.ERROR,
         "CreateContainerConfigError"),
        ([pod("web-0", phase="Pending", ready=False, init_waiting="CrashLoopBackOff")], WorkloadStatus.ERROR,
         "CrashLoopBackOff"),
        ([pod("web-0", phase="Failed", ready=False)], WorkloadStatus.ERROR, "PodFailed"),
        ([pod("web-0", phase="Succeeded", ready=False)], WorkloadStatus.STOPPED, "PodSucceeded"),
        ([pod("web-0", deleting=True)], WorkloadStatus.STOPPED, "PodTerminating"),
        # One serving pod is enough, even beside a crashing one (a rolling update).
        ([pod("web-0", ready=False, waiting="CrashLoopBackOff"), pod("web-1")], WorkloadStatus.RUNNING, "PodsReady"),
        # An error outranks a pod that is merely not ready yet.
        ([pod("web-0", phase="Pending", ready=False), pod("web-1", phase="Failed", ready=False)],
         WorkloadStatus.ERROR, "PodFailed"),
        # Waiting reasons that fix themselves are not errors.
        ([pod("web-0", phase="Pending", ready=False, waiting="ContainerCreating")], WorkloadStatus.STOPPED,
         "PodPending"),
    ],
)
def test_pod_status_rules(pods: list[PodState], status: WorkloadStatus, code: str) -> None:
    result = pods_status(pods, SELECTOR)
    assert (result.status, result.code) == (status, code)
    assert result.message


def test_running_message_counts_pods() -> None:
    result = pods_status([pod("web-0"), pod("web-1", ready=False)], SELECTOR)
    assert result.message.startswith("1/2 pods Running and Ready")


# ------------------------------------------------------------------------------ status


def test_status_of_a_linked_running_server() -> None:
    from mcp_optimizer.operator.mapping import tools_listed

    facts = ServerFacts(
        generation=3,
        runtime=tools_listed(4),
        tool_count=4,
        tools_generation=3,
        registry=("ops/catalog", "fetch"),
        last_sync_time="2024-05-01T10:00:00Z",
        identifier="url https://x/mcp",
    )
    status = render_status(facts, now="2024-05-01T10:00:01Z")
    assert status["phase"] == "Running"
    assert status["toolCount"] == 4
    assert status["registryServer"] == {"name": "fetch", "catalog": "ops/catalog"}
    assert status["observedGeneration"] == 3
    assert status["lastSyncTime"] == "2024-05-01T10:00:00Z"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["ToolsIndexed"]["status"] == "True"
    assert conditions["ToolsIndexed"]["reason"] == "ToolsListed"
    assert conditions["RegistryMatched"]["reason"] == "Linked"
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert warnings(facts) == []


def test_index_problems_make_the_phase_error_whatever_the_pods_say() -> None:
    facts = ServerFacts(
        runtime=pods_status([pod("web-0")], SELECTOR),
        index_problem=IndexProblem("DuplicateRegistryEntries", "2 registry entries match"),
    )
    status = render_status(facts)
    assert status["phase"] == "Error"
    assert status["registryServer"] is None  # a merge patch removes it
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["reason"] == "DuplicateRegistryEntries"
    assert conditions["RegistryMatched"]["reason"] == "DuplicateRegistryEntries"
    assert warnings(facts) == [("DuplicateRegistryEntries", "2 registry entries match")]


def test_invalid_spec_status() -> None:
    facts = ServerFacts(spec_error="spec.endpoint is required")
    status = render_status(facts)
    assert status["phase"] == "Error"
    assert {c["reason"] for c in status["conditions"]} == {"InvalidSpec"}
    assert warnings(facts) == [("InvalidSpec", "spec.endpoint is required")]


def test_tools_failure_and_pin_notes_are_warnings() -> None:
    facts = ServerFacts(tools_error="MCP tools/list failed: refused",
                        registry_note=RegistryNote("RegistryRefNotFound", "pinned entry a/b not found"))
    conditions = {c["type"]: c for c in render_status(facts)["conditions"]}
    assert conditions["ToolsIndexed"]["reason"] == "ToolsListFailed"
    assert conditions["RegistryMatched"]["reason"] == "RegistryRefNotFound"
    assert {reason for reason, _ in warnings(facts)} == {"ToolsListFailed", "RegistryRefNotFound"}


def test_a_pin_of_the_wrong_type_keeps_the_server_running_and_says_so() -> None:
    note = RegistryNote("RegistryRefInvalid", "workload 'team-a/web' is a container server but its pinned registry "
                        "entry a/r is a remote server; the pin is ignored")
    facts = ServerFacts(runtime=pods_status([pod("web-0")], SELECTOR), registry=("a", "web"), registry_note=note)
    status = render_status(facts)
    assert status["phase"] == "Running"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["RegistryMatched"]["status"] == "True" and "the pin is ignored" in conditions[
        "RegistryMatched"]["message"]
    assert ("RegistryRefInvalid", note.message) in warnings(facts)


def test_repeated_tool_names_are_the_servers_fault_not_the_specs() -> None:
    tools = [{"name": "a", "description": "first"}, {"name": "b"}, {"name": "a", "description": "second"},
             {"name": ""}]
    kept, repeated = distinct_tools(tools)
    assert [t["name"] for t in kept] == ["a", "b"] and kept[0]["description"] == "first"
    assert repeated == ["a", "(unnamed)"]
    facts = ServerFacts(runtime=pods_status([pod("web-0")], SELECTOR), generation=1, tools_generation=1,
                        tool_count=2, repeated_tools=tuple(repeated))
    status = render_status(facts)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Running"
    assert conditions["Ready"]["reason"] == "PodsReady"
    assert conditions["ToolsIndexed"]["status"] == "True"
    assert conditions["ToolsIndexed"]["reason"] == "DuplicateToolNames"
    assert "the MCP server must be fixed" in conditions["ToolsIndexed"]["message"]
    assert "InvalidSpec" not in {c["reason"] for c in status["conditions"]}
    assert [reason for reason, _ in warnings(facts)] == ["DuplicateToolNames"]


def test_task_only_tools_are_named_in_the_tools_condition() -> None:
    facts = ServerFacts(runtime=pods_status([pod("web-0")], SELECTOR), generation=1, tools_generation=1,
                        tool_count=12, task_only_tools=("simulate-research-query",))
    [tools] = [c for c in render_status(facts)["conditions"] if c["type"] == "ToolsIndexed"]
    assert tools["reason"] == "ToolsListed"
    assert tools["message"].startswith("12 tools indexed; 1 left out because they only run as MCP tasks")
    assert "simulate-research-query" in tools["message"]


def test_a_name_too_long_for_the_default_selector_says_what_to_do() -> None:
    name = "a-very-long-mcp-server-name-that-is-fine-for-kubernetes-objects-x"
    assert len(name) > 63
    view = parse_server(server({"image": "x/y", "endpoint": "http://e/mcp"}, name=name))
    assert view.spec_error is None
    # A pod carrying the label cannot even be created; none can match.
    result = pods_status([pod("p-0", labels={"app": "other"})], view.selector)
    assert result.status is WorkloadStatus.STOPPED
    assert result.code == "PodSelectorUnmatchable"
    assert "label values are at most 63 characters and this one has 65" in result.message
    assert "set spec.podSelector" in result.message
    facts = ServerFacts(runtime=result)
    assert ("PodSelectorUnmatchable", result.message) in warnings(facts)
    # A 63-character name still gets the ordinary answer.
    short = parse_server(server({"image": "x/y", "endpoint": "http://e/mcp"}, name=name[:63]))
    assert pods_status([], short.selector).code == "NoPods"


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    facts = ServerFacts(runtime=pods_status([], SELECTOR))
    first = render_status(facts, now="2024-01-01T00:00:00Z")
    facts.runtime = pods_status([pod("web-0", phase="Pending", ready=False)], SELECTOR)
    second = render_status(facts, first["conditions"], now="2024-01-01T00:01:00Z")
    ready = {c["type"]: c for c in second["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert ready["reason"] == "PodPending"
    assert ready["lastTransitionTime"] == "2024-01-01T00:00:00Z"  # still False: no transition
    facts.runtime = pods_status([pod("web-0")], SELECTOR)
    third = render_status(facts, second["conditions"], now="2024-01-01T00:02:00Z")
    assert {c["type"]: c for c in third["conditions"]}["Ready"]["lastTransitionTime"] == "2024-01-01T00:02:00Z"


def test_same_status_ignores_timestamps_only() -> None:
    facts = ServerFacts(runtime=pods_status([], SELECTOR))
    a = render_status(facts, now="2024-01-01T00:00:00Z")
    b = render_status(facts, now="2024-01-02T00:00:00Z")
    assert same_status(a, b)
    facts.tool_count = 1
    assert not same_status(a, render_status(facts))
    assert not same_status(a, None)


def test_merge_conditions_from_scratch() -> None:
    from mcp_optimizer.operator.status import Condition

    merged = merge_conditions([], [Condition("Ready", "True", "R", "m")], now="T", generation=2)
    assert merged == [
        {"type": "Ready", "status": "True", "reason": "R", "message": "m", "lastTransitionTime": "T",
         "observedGeneration": 2}
    ]
