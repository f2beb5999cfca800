"""Several `mcp-optimizer run --leader-election` processes over one shared index (issue 13, part 5).

Clients call ``find_tool`` continuously through a balancer that routes like a Service (only to
ready replicas) while the writer is SIGKILLed, the next writer is stopped with SIGTERM and a
reader is restarted. No call fails: a call in flight on a SIGKILLed process loses its connection
(as behind any Service) and is retried once by the client, as an agent retries a read; nothing
else may fail even once. MCPServers created during each failover reach search after it, and
every server's tools are listed by one replica, not by each.

The shared index is the ``index_url`` fixture's: a SQLite file on this host (WAL lets several
processes on one host share it) and a PostgreSQL database (pgserver), which replicas on several
nodes need.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from kubernetes import client

from mcp_optimizer.mcp import McpClientError, call_tool
from mcp_optimizer.testing.mcp_servers import LOOPBACK, LOOPBACK_POLICY, McpTestServer, make_tool
from tests.k8s.harness import Kube, eventually
from tests.support import postgres
from tests.support.balancer import Backend, ReadyBalancer
from tests.support.ports import free_port

pytestmark = pytest.mark.kube

LEASE = "mcp-optimizer-writer"
#: Short Lease timing with client-go's proportions: takeover after a kill within ~3 s.
LEASE_ENV = {
    "MCP_OPTIMIZER_LEASE_DURATION": "3",
    "MCP_OPTIMIZER_LEASE_RENEW_DEADLINE": "2",
    "MCP_OPTIMIZER_LEASE_RETRY_PERIOD": "0.5",
}
#: A new process starts kopf and imports the MCP stack: on a loaded 2-core machine, up to a minute.
START_TIMEOUT = 120.0



@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What every replica gets as ``--db``: the one shared index (a file on this host, or one
    PostgreSQL database, which is what replicas on several nodes share)."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared-index.db")
        return
    url = postgres.fresh_database("replicas")
    try:
        yield url
    finally:
        postgres.drop_database(url)


@dataclass
class Replica:
    """One `mcp-optimizer run` process, restartable on the same ports (a pod of a Deployment)."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    mcp_port: int
    metrics_port: int
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/readyz"

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    async def stop(self, sig: signal.Signals, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            if self._log is not None:
                self._log.close()
        return code

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log_path.read_text(errors="replace")[-2500:]


@dataclass
class Calls:
    """find_tool calls made by the clients: first-attempt failures (with when) and final failures."""

    ok: int = 0
    retried: list[tuple[float, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def lease_holder(kube_api: client.ApiClient, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE, namespace)
    except client.ApiException:
        return None
    return lease.spec.holder_identity if lease.spec is not None else None


async def client_loop(url: str, calls: Calls, stop: asyncio.Event) -> None:
    arguments = {"tool_description": "book a flight to Paris", "tool_keywords": "flight"}

    async def once() -> None:
        result = await call_tool(url, "streamable-http", "find_tool", arguments, timeout=10, policy=LOOPBACK_POLICY)
        if "book_flight" not in str(result["content"]):
            raise McpClientError(f"find_tool did not find book_flight: {str(result['content'])[:300]}")

    while not stop.is_set():
        try:
            await once()
        except McpClientError as first:
            calls.retried.append((time.monotonic(), str(first)[:300]))
            try:
                await once()
            except McpClientError as second:
                calls.failed.append(str(second)[:300])
                continue
        calls.ok += 1


async def found(url: str, query: str, tool: str) -> bool:
    try:
        result = await call_tool(url, "streamable-http", "find_tool", {"tool_description": query}, timeout=10,
                                 policy=LOOPBACK_POLICY)
    except McpClientError:
        return False
    return tool in str(result["content"])


@pytest.fixture
def mcp_servers() -> Iterator[dict[str, McpTestServer]]:
    servers = {
        "alpha": McpTestServer([make_tool("book_flight", "Book a flight between two airports")]),
        "beta": McpTestServer([make_tool("translate_text", "Translate text into another language")]),
        "gamma": McpTestServer([make_tool("resize_image", "Resize an image to a given width and height")]),
    }
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
async def replicas(ns: str, kubeconfig: str, index_url: str, tmp_path: Path) -> AsyncIterator[list[Replica]]:
    env = {
        **os.environ,
        **LEASE_ENV,
        "MCP_OPTIMIZER_LEADER_ELECTION": "true",
        "MCP_OPTIMIZER_OPERATOR_NAMESPACE": ns,  # the Lease's namespace and the catalog namespace
        "MCP_OPTIMIZER_NAMESPACES": ns,
        # Keyword-only: three processes without three copies of the model on two cores.
        "MCP_OPTIMIZER_SEARCH_MODE": "bm25",
        "MCP_OPTIMIZER_AUTH_MODE": "none",
        "MCP_OPTIMIZER_TOOLHIVE": "false",
        "MCP_OPTIMIZER_MCP_TIMEOUT": "3",
        # Longer than the balancer takes to see /readyz fail (a 0.2 s poll whose probes may wait
        # 0.5 s each, plus the event loop's lag under load), as the chart's 5 s is longer than
        # kube-proxy takes: with 1 s, a loaded run once sent a new call to a replica that had
        # just stopped accepting.
        "MCP_OPTIMIZER_SHUTDOWN_DELAY": "3",
        "MCP_OPTIMIZER_ALLOWED_DESTINATIONS": ",".join(LOOPBACK),
    }
    made = []
    for i in range(3):
        mcp_port, metrics_port, health_port = free_port(), free_port(), free_port()
        command = [
            sys.executable, "-c", "import sys; from mcp_optimizer.cli.main import main; sys.exit(main())",
            "--db", index_url, "run", "--kubeconfig", kubeconfig,
            "--mcp-host", "127.0.0.1", "--mcp-port", str(mcp_port),
            "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--liveness", f"http://127.0.0.1:{health_port}/healthz",
        ]
        made.append(Replica(f"replica-{i}", command, {**env, "MCP_OPTIMIZER_POD_NAME": f"replica-{i}"},
                            tmp_path / f"replica-{i}.log", mcp_port, metrics_port))
    yield made
    for replica in made:
        if replica.process is not None and replica.process.returncode is None:
            replica.process.kill()
            await replica.process.wait()


async def test_no_find_tool_call_fails_while_writers_die_and_replicas_restart(
    ns: str, kube: Kube, kube_api: client.ApiClient, replicas: list[Replica],
    mcp_servers: dict[str, McpTestServer],
) -> None:
    kube.create_server(ns, "alpha", {"url": mcp_servers["alpha"].url})
    balancer = await ReadyBalancer().start()
    by_name = {r.name: r for r in replicas}
    url = f"http://127.0.0.1:{balancer.port}/mcp"
    calls, stop_clients = Calls(), asyncio.Event()
    clients: list[asyncio.Task[None]] = []

    def logs() -> str:
        return "\n".join(r.tail() for r in replicas)

    async def all_ready(names: list[str]) -> None:
        try:
            await eventually(lambda: set(names) <= set(balancer.ready()), timeout=START_TIMEOUT,
                             what=f"{', '.join(names)} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None

    async def takeover(previous: str) -> str:
        await eventually(lambda: lease_holder(kube_api, ns) not in (None, previous), timeout=30,
                         what=f"another replica took the Lease from {previous}")
        holder = lease_holder(kube_api, ns)
        assert holder is not None
        return holder

    try:
        for replica in replicas:
            balancer.add(Backend(replica.name, replica.mcp_port, replica.ready_url))
            await replica.start()
        await all_ready([r.name for r in replicas])
        await eventually(lambda: found(url, "book a flight", "book_flight"), timeout=60, what="alpha searchable")
        # One writer: the server's tools were listed once, not once per replica.
        assert mcp_servers["alpha"].registry.lists == 1
        clients = [asyncio.create_task(client_loop(url, calls, stop_clients)) for _ in range(4)]
        await asyncio.sleep(2)

        # 1. SIGKILL the writer; an MCPServer created during the failover is found after it.
        first = lease_holder(kube_api, ns)
        assert first is not None
        killed_at = time.monotonic()
        await by_name[first].stop(signal.SIGKILL)
        kube.create_server(ns, "beta", {"url": mcp_servers["beta"].url})
        second = await takeover(first)
        await eventually(lambda: found(url, "translate text", "translate_text"), timeout=60,
                         what="beta (created during the failover) searchable")
        await by_name[first].start()  # back as a reader
        await all_ready([r.name for r in replicas])
        kill_window_end = time.monotonic()

        # 2. SIGTERM the new writer: it fails readiness, stops writing, releases, drains, exits 0.
        await asyncio.sleep(2)
        kube.create_server(ns, "gamma", {"url": mcp_servers["gamma"].url})
        assert await by_name[second].stop(signal.SIGTERM) == 0, logs()
        await takeover(second)
        await eventually(lambda: found(url, "resize an image", "resize_image"), timeout=60,
                         what="gamma (created during the handover) searchable")
        await by_name[second].start()
        await all_ready([r.name for r in replicas])

        # 3. Restart a reader.
        reader = next(r for r in replicas if r.name != lease_holder(kube_api, ns))
        assert await reader.stop(signal.SIGTERM) == 0, logs()
        await reader.start()
        await all_ready([r.name for r in replicas])
        await asyncio.sleep(2)
    finally:
        stop_clients.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await balancer.stop()

    sys.stderr.write(f"\n[find_tool calls: {calls.ok} ok, {len(calls.retried)} retried once (SIGKILL), "
                     f"{len(calls.failed)} failed; connections per replica {dict(balancer.routed)}, "
                     f"refused {balancer.refused}]\n")
    assert not calls.failed, f"{len(calls.failed)} calls failed: {calls.failed[:5]}\n{logs()}"
    assert calls.ok > 50, calls
    # Only the SIGKILL may cost a retry (its in-flight calls lost their connection).
    late = [(t - killed_at, why) for t, why in calls.retried if not killed_at <= t <= kill_window_end]
    assert not late, f"calls retried outside the SIGKILL: {late[:5]}"
    # Each server was listed by one writer at a time: once by its first writer, at most once more
    # by each writer that took over (a takeover resumes every MCPServer).
    assert mcp_servers["beta"].registry.lists <= 2 and mcp_servers["gamma"].registry.lists <= 2
    for name in ("alpha", "beta", "gamma"):
        assert kube.server_status(ns, name).get("phase") == "Running"
