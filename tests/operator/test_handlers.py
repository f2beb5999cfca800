"""The handlers' kopf semantics and the reconciler's ordering rules, without a cluster.

The reconciler runs against a real index (the shared ``indexer`` fixture) with a recording status
writer and a scripted ``tools/list``.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.mcp import McpClientError
from mcp_optimizer.operator import mcpservers, workloads
from mcp_optimizer.operator.mapping import PodState, ServerView, parse_server
from mcp_optimizer.operator.runner import OperatorContext
from mcp_optimizer.operator.status import same_status
from mcp_optimizer.operator.workloads import Outcome, WorkloadReconciler, backoff


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[tuple[str, str, dict[str, Any]]] = []

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.writes.append((namespace, name, status))
        return True

    def last(self, name: str) -> dict[str, Any]:
        return next(s for _, n, s in reversed(self.writes) if n == name)


class ScriptedTools:
    def __init__(
        self, tools: list[dict[str, Any]] | None = None, error: str | None = None, reason: str = "connect"
    ) -> None:
        self.tools = tools if tools is not None else [{"name": "echo", "description": "Echo text back"}]
        self.error = error
        self.reason = reason
        self.calls = 0

    async def __call__(
        self, endpoint: str, transport: str, timeout: float, *, namespace: str | None, policy: Any
    ) -> list[dict[str, Any]]:
        self.calls += 1
        if self.error:
            raise McpClientError(self.error, endpoint=endpoint, transport=transport, reason=self.reason)  # type: ignore[arg-type]
        return self.tools


def body(name: str = "echo", *, generation: int = 1, uid: str = "uid-1", **spec: Any) -> kopf.Body:
    """An MCPServer as kopf hands it to a handler."""
    return kopf.Body(cast(kopf.RawBody, {
        "metadata": {"namespace": "ns", "name": name, "uid": uid, "generation": generation},
        "spec": spec or {"url": "https://echo.example.com/mcp"},
    }))


def running_pod(name: str, instance: str) -> PodState:
    return PodState.from_body({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/instance": instance}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })


@pytest.fixture
def writer() -> RecordingWriter:
    return RecordingWriter()


def reconciler(indexer: Indexer, writer: RecordingWriter, tools: ScriptedTools) -> WorkloadReconciler:
    return WorkloadReconciler(indexer, writer, mcp_timeout=1.0, list_tools=tools)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ handlers


def _memo(reconciler: object) -> OperatorContext:
    """The handlers' memo as far as these handlers read it: only its reconciler."""
    return cast(OperatorContext, SimpleNamespace(reconciler=reconciler))


class FailingReconciler:
    async def forget(self, view: ServerView) -> None:
        raise RuntimeError("database is locked")


async def test_delete_retries_then_lets_go() -> None:
    memo = _memo(FailingReconciler())
    logger = logging.getLogger("test.handlers")
    with pytest.raises(kopf.TemporaryError) as exc:
        await mcpservers.delete_server(body=body(), memo=memo, retry=0, logger=logger)
    assert exc.value.delay == backoff(0)
    # The last attempt returns normally: kopf removes the finalizer, deletion is never blocked.
    await mcpservers.delete_server(body=body(), memo=memo, retry=mcpservers.DELETE_ATTEMPTS - 1, logger=logger)


async def test_invalid_spec_is_permanent(indexer: Indexer, writer: RecordingWriter) -> None:
    memo = _memo(reconciler(indexer, writer, ScriptedTools()))
    with pytest.raises(kopf.PermanentError, match=r"spec\.endpoint is required"):
        await mcpservers.reconcile_server(body=body(image="a/b"), memo=memo, retry=0)
    assert writer.last("echo")["phase"] == "Error"


async def test_tools_failure_is_temporary_with_backoff(indexer: Indexer, writer: RecordingWriter) -> None:
    memo = _memo(reconciler(indexer, writer, ScriptedTools(error="connection refused")))
    with pytest.raises(kopf.TemporaryError) as exc:
        await mcpservers.reconcile_server(body=body(), memo=memo, retry=3)
    assert exc.value.delay == backoff(3) == 8
    assert await indexer.workload_names() == {"ns/echo"}
    status = writer.last("echo")
    assert status["phase"] == "Error"
    # The timer does not raise (it must keep ticking); it starts the re-probe loop.
    await mcpservers.resync_server(body=body(), memo=memo, logger=logging.getLogger("test.handlers"))
    await memo.reconciler.close()


async def test_a_refused_or_oversized_server_is_retried_at_the_probe_interval(
    indexer: Indexer, writer: RecordingWriter
) -> None:
    """A rule or a bound is not fixed in seconds: no fast backoff that lists (and parses) a
    hostile server's answer again and again."""
    for reason, code in (("limit", "LimitExceeded"), ("destination", "DestinationRefused")):
        tools = ScriptedTools(error=f"refused ({reason})", reason=reason)
        rec = WorkloadReconciler(indexer, writer, mcp_timeout=1.0, list_tools=tools, probe_interval=45.0)  # type: ignore[arg-type]
        memo = _memo(rec)
        with pytest.raises(kopf.TemporaryError) as exc:
            await mcpservers.reconcile_server(body=body(), memo=memo, retry=0)
        assert exc.value.delay == 45.0
        assert writer.last("echo")["conditions"][0]["reason"] == code
        assert rec.retry_delay(parse_server(body()), 10) == 60.0  # the backoff's cap, if longer


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff(i) for i in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


# ------------------------------------------------------------------------------ reconciler


async def test_remote_sync_reads_tools_and_reports(
    indexer: Indexer, writer: RecordingWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lastSyncTime has a resolution of one second: both syncs must happen within the same one.
    monkeypatch.setattr(workloads, "now_rfc3339", lambda: "2026-12-01T00:00:00Z")
    tools = ScriptedTools()
    rec = reconciler(indexer, writer, tools)
    assert await rec.sync(parse_server(body()), read_tools=True) is Outcome.OK
    assert tools.calls == 1
    status = writer.last("echo")
    assert status["phase"] == "Running"
    assert status["toolCount"] == 1
    assert status["observedGeneration"] == 1
    # An identical second sync writes no status, unless the clock passed a second boundary
    # between the two reads (lastSyncTime has a resolution of one second; on a loaded machine a
    # sync takes longer than that): then it writes that and nothing else.
    writes = len(writer.writes)
    assert await rec.sync(parse_server(body()), read_tools=True) is Outcome.OK
    rewritten = writer.writes[writes:]
    assert len(rewritten) <= 1
    if rewritten:
        again = rewritten[0][2]
        assert again["lastSyncTime"] > status["lastSyncTime"]
        assert same_status({**again, "lastSyncTime": None}, {**status, "lastSyncTime": None})


async def test_a_deleted_object_is_not_resurrected_by_a_late_sync(indexer: Indexer, writer: RecordingWriter) -> None:
    rec = reconciler(indexer, writer, ScriptedTools())
    view = parse_server(body())
    await rec.sync(view, read_tools=True)
    await rec.forget(view)
    assert await indexer.workload_names() == set()
    assert await rec.sync(view, read_tools=True) is Outcome.STALE
    assert await indexer.workload_names() == set()


async def test_an_older_generation_does_not_overwrite_a_newer_one(indexer: Indexer, writer: RecordingWriter) -> None:
    rec = reconciler(indexer, writer, ScriptedTools())
    old = parse_server(body(generation=1, url="https://echo.example.com/mcp", group="old"))
    new = parse_server(body(generation=2, url="https://echo.example.com/mcp", group="new"))
    rec.attach(pods={}, servers={"ns": [new]})
    assert await rec.sync(new, read_tools=True) is Outcome.OK
    assert await rec.sync(old, read_tools=True) is Outcome.STALE
    row = await indexer.workloads.get_by_workload_name("ns/echo")
    assert row is not None and row.group == "new"
    # Once the indices are attached, an object missing from them is gone.
    rec.attach(pods={}, servers={})
    assert await rec.sync(new, read_tools=True) is Outcome.STALE


async def test_pod_fast_path_writes_status_without_tools_list(indexer: Indexer, writer: RecordingWriter) -> None:
    tools = ScriptedTools()
    rec = reconciler(indexer, writer, tools)
    view = parse_server(body("web", image="ghcr.io/acme/web:1", endpoint="http://web/mcp"))
    other = parse_server(body("other", uid="uid-2", image="ghcr.io/acme/other:1", endpoint="http://other/mcp"))
    pods: dict[str, list[PodState]] = {"ns": []}
    rec.attach(pods=pods, servers={"ns": [view, other]})
    await rec.sync(view, read_tools=True)
    await rec.sync(other, read_tools=True)
    assert tools.calls == 0  # no pods: nothing to read
    assert await _status(indexer, "ns/web") == WorkloadStatus.STOPPED

    # A pod of "web" turns Running: only "web" is re-evaluated; its first Running reads tools.
    pods["ns"].append(running_pod("web-0", "web"))
    writes = len(writer.writes)
    await rec.pods_changed("ns", "web-0", {"app.kubernetes.io/instance": "web"})
    assert await _status(indexer, "ns/web") == WorkloadStatus.RUNNING
    assert {n for _, n, _ in writer.writes[writes:]} == {"web"}
    assert await _status(indexer, "ns/other") == WorkloadStatus.STOPPED
    for _ in range(100):  # the read runs in the background
        if writer.last("web")["toolCount"] == 1:
            break
        await asyncio.sleep(0.02)
    assert tools.calls == 1
    assert writer.last("web")["toolCount"] == 1

    # Not ready, then ready again: status only, the tools are not read again.
    pods["ns"][0] = PodState("web-0", pods["ns"][0].labels, "Running", ready=False)
    await rec.pods_changed("ns", "web-0", {"app.kubernetes.io/instance": "web"})
    assert await _status(indexer, "ns/web") == WorkloadStatus.STOPPED
    pods["ns"][0] = running_pod("web-0", "web")
    await rec.pods_changed("ns", "web-0", {"app.kubernetes.io/instance": "web"})
    assert await _status(indexer, "ns/web") == WorkloadStatus.RUNNING
    await rec.close()
    assert tools.calls == 1


async def _status(indexer: Indexer, name: str) -> WorkloadStatus:
    row = await indexer.workloads.get_by_workload_name(name)
    assert row is not None, name
    return WorkloadStatus(row.status)
