"""The operator heals its index (issue 10, point 6), against the real control plane.

Each fault is real (:mod:`tests.support.faults`): garbage in the file's header or pages, a
text file or another program's database in its place, the file deleted under the process, a full
tmpfs (or SQLite's page cap where this process cannot mount). Each test asserts that the fault is
detected and reported (log, Event on the operator's Pod, metric, ``/readyz``), that the index
repairs itself without a restart, and that nothing else was lost: every catalog and MCPServer is
back in search with a truthful status.

``mcp-optimizer run`` runs as a real subprocess where ``/readyz`` and the MCP endpoint matter,
in-process (:class:`~tests.k8s.harness.OperatorThread`) elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes.client import ApiClient

from mcp_optimizer.config import Settings
from mcp_optimizer.db.health import damaged_copies
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.mcp import McpClientError, call_tool
from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import LOOPBACK, LOOPBACK_POLICY, HangingServer, McpTestServer, make_tool
from tests.k8s.harness import IndexProbe, Kube, OperatorFactory, eventually, http_get, legacy_catalog
from tests.k8s.kubelet import set_pod_status
from tests.support import faults
from tests.support.ports import free_port

pytestmark = pytest.mark.kube

TRANSLATE = [make_tool("translate_text", "Translate text between languages"),
             make_tool("detect_language", "Detect the language of a text")]
WEATHER = [make_tool("get_forecast", "Get the weather forecast for a city")]
OPERATOR_POD = "mcp-optimizer-0"


def entry(url: str, description: str = "Translation service") -> dict[str, Any]:
    return {"url": url, "description": description, "tools": ["translate_text"]}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def pod(ns: str, kube: Kube) -> dict[str, Any]:
    """A Pod object standing for the operator's own (the downward API would name it); Events go
    there. The operator's settings that name it."""
    kube.create_pod(ns, OPERATOR_POD, instance="mcp-optimizer-operator")
    meta = kube.core.read_namespaced_pod(OPERATOR_POD, ns).metadata
    assert meta is not None and meta.uid is not None
    uid = meta.uid
    return {"pod_name": OPERATOR_POD, "pod_namespace": ns, "pod_uid": uid}


@pytest.fixture
def translator(ns: str, kube: Kube) -> Iterator[str]:
    """The remote MCPServer ``translator``, listed in the catalog ``registry``: its workload name."""
    with McpTestServer(TRANSLATE) as remote:
        kube.put_catalog(ns, "registry", legacy_catalog(remote_servers={"translator": entry(remote.url)}))
        kube.create_server(ns, "translator", {"url": remote.url})
        yield workload_name(ns, "translator")


@pytest.fixture
def weather(ns: str, kube: Kube, kube_api: ApiClient) -> Iterator[str]:
    """The container MCPServer ``weather`` with its Running pod: its workload name."""
    with McpTestServer(WEATHER) as server:
        kube.create_server(ns, "weather", {"image": "ghcr.io/acme/weather:1", "endpoint": server.url})
        kube.create_pod(ns, "weather-0", instance="weather")
        set_pod_status(kube_api, ns, "weather-0", "Running")
        yield workload_name(ns, "weather")


async def both_found(probe: IndexProbe, translator: str, weather: str, *, timeout: float = 15.0) -> None:
    """Search finds the translator's tool (within ``timeout``) and the weather server's."""
    await eventually(lambda: probe.found("translate text", translator), timeout=timeout)
    await eventually(lambda: probe.found("weather forecast for a city", weather))


def pod_events(kube: Kube, ns: str) -> list[tuple[str, str, str]]:
    return kube.events(ns, OPERATOR_POD)


def has_pod_event(kube: Kube, ns: str, reason: str, type_: str, *needles: str) -> bool:
    return any(r == reason and t == type_ and all(n in m for n in needles) for t, r, m in pod_events(kube, ns))



class RunProcess:
    """``mcp-optimizer run`` as a subprocess: its ports, its log, a clean stop."""

    def __init__(self, *, db: Path, kubeconfig: str, ns: str, log: Path, pod: dict[str, str],
                 env: dict[str, str] | None = None, model: Path) -> None:
        self.mcp_port, self.metrics_port = free_port(), free_port()
        self.db = db
        self.log_path = log
        self.env = {
            **os.environ,
            "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model),
            "MCP_OPTIMIZER_NAMESPACES": ns,
            "MCP_OPTIMIZER_MCP_HOST": "127.0.0.1",
            "MCP_OPTIMIZER_MCP_PORT": str(self.mcp_port),
            "MCP_OPTIMIZER_METRICS_PORT": str(self.metrics_port),
            "MCP_OPTIMIZER_MCP_TIMEOUT": "4",
            "MCP_OPTIMIZER_RESYNC_INTERVAL": "3600",
            "MCP_OPTIMIZER_INDEX_HEAL_INTERVAL": "1",
            "MCP_OPTIMIZER_POD_NAME": pod["pod_name"],
            "MCP_OPTIMIZER_POD_NAMESPACE": pod["pod_namespace"],
            "MCP_OPTIMIZER_POD_UID": pod["pod_uid"],
            # The test's namespace holds its catalogs; its MCP servers run on loopback, which the
            # operator refuses unless admitted; find_tool is called without a token, on loopback.
            "MCP_OPTIMIZER_CATALOG_NAMESPACES": ns,
            "MCP_OPTIMIZER_ALLOWED_DESTINATIONS": ",".join(LOOPBACK),
            "MCP_OPTIMIZER_AUTH_MODE": "none",
            **(env or {}),
        }
        self.command = [sys.executable, "-c", "import sys; from mcp_optimizer.cli.main import main; sys.exit(main())",
                        "--db", str(db), "run", "--kubeconfig", kubeconfig]
        self._log = log.open("ab")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def readyz(self) -> tuple[int, str]:
        """(status, body): a 503 says why it is not ready."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1]

    async def find_tool(self, query: str) -> str:
        """The text of ``find_tool``'s answer ("error: ..." when it failed)."""
        try:
            result = await call_tool(f"http://127.0.0.1:{self.mcp_port}/mcp", "streamable-http", "find_tool",
                                     {"tool_description": query, "tool_keywords": query}, timeout=15,
                                     policy=LOOPBACK_POLICY)
        except McpClientError as exc:
            return f"error: {exc}"
        text = " ".join(str(block.get("text", "")) for block in result["content"])
        return f"error: {text}" if result.get("isError") else text

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)
        self._log.close()

    def stop(self) -> str:
        """SIGTERM; the process must exit cleanly. Returns its log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
            assert code == 0, self.log()[-3000:]
        self._log.close()
        return self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class StartProcess(Protocol):
    """The ``run_process`` fixture: starts ``mcp-optimizer run`` as a process for namespace ``ns``."""

    def __call__(
        self, ns: str, pod: dict[str, str], *, db: Path | None = None, env: dict[str, str] | None = None
    ) -> RunProcess: ...


@pytest.fixture
def run_process(kubeconfig: str, op_settings: Settings, tmp_path: Path) -> Iterator[StartProcess]:
    started: list[RunProcess] = []

    def start(ns: str, pod: dict[str, str], *, db: Path | None = None, env: dict[str, str] | None = None) -> RunProcess:
        assert op_settings.embedding_model_path is not None
        process = RunProcess(db=db or op_settings.db_path, kubeconfig=kubeconfig, ns=ns, pod=pod, env=env,
                             log=tmp_path / f"run-{len(started)}.log", model=op_settings.embedding_model_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(30)


def tool_count(kube: Kube, ns: str, name: str) -> int | None:
    return kube.server_status(ns, name).get("toolCount")


def tools_indexed(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.condition(ns, name, "ToolsIndexed")


# ------------------------------------------------------------------------------ at start


DAMAGES: dict[str, Callable[[Path], object]] = {
    "bad header": faults.corrupt_header,
    "corrupt pages": faults.corrupt_pages,
    "not a database": faults.not_a_database,
    "wrong schema": lambda path: faults.wrong_schema(path, revision="9999_from_the_future"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
async def test_a_damaged_index_at_start_is_moved_aside_and_rebuilt(
    ns: str,
    kube: Kube,
    pod: dict[str, Any],
    start_operator: OperatorFactory,
    probe: IndexProbe,
    op_settings: Settings,
    translator: str,
    weather: str,
    damage: str,
) -> None:
    first = start_operator([ns], catalog_namespaces=(ns,), **pod)
    await both_found(probe, translator, weather)
    first.stop()
    await probe.close()

    DAMAGES[damage](op_settings.db_path)
    damaged = op_settings.db_path.read_bytes()
    start_operator([ns], catalog_namespaces=(ns,), **pod)  # starts: no crash loop, no traceback

    await both_found(probe, translator, weather, timeout=30)
    assert await probe.catalogs() == {f"{ns}/registry"}
    assert (await probe.workload(translator) or {}).get("registry_server_name") == "translator"
    copies = damaged_copies(op_settings.db_path)
    assert len(copies) == 1 and copies[0].read_bytes() == damaged  # kept for forensics
    await eventually(lambda: has_pod_event(kube, ns, "IndexRebuilt", "Warning", "corrupt", str(copies[0])))
    assert kube.condition(ns, "translator", "ToolsIndexed")["status"] == "True"


# ------------------------------------------------------------------------------ at run time


async def test_corruption_at_run_time_fails_readyz_and_repairs_itself(
    ns: str,
    kube: Kube,
    pod: dict[str, Any],
    run_process: StartProcess,
    op_settings: Settings,
    probe: IndexProbe,
    embedder: Embedder,
    translator: str,
) -> None:
    with HangingServer() as hanging:
        # Its tools/list hangs (4 s timeout): every full pass takes that long, so the repair is seen.
        kube.create_server(ns, "stuck", {"url": hanging.url})
        operator = run_process(ns, pod)
        await eventually(lambda: operator.readyz()[0] == 200, timeout=90, what="ready after the first pass")
        assert "translate_text" in await operator.find_tool("translate text into french")

        faults.corrupt_pages(op_settings.db_path)
        # The next search hits the damage (it used to answer "internal error" forever)...
        answer = await operator.find_tool("translate text into french")
        assert answer.startswith("error:") and "cannot be read right now" in answer
        status, why = await eventually(lambda: _not_ready(operator), timeout=20, what="/readyz fails")
        assert status == 503 and "repaired" in why and "corrupt" in why
        # ... and the operator repairs it by itself.
        await eventually(lambda: operator.readyz()[0] == 200, timeout=60, what="ready again")
        assert "translate_text" in await operator.find_tool("translate text into french")
        await probe.close()
        assert await probe.catalogs() == {f"{ns}/registry"}
        assert (await probe.workload(translator) or {}).get("registry_server_name") == "translator"
        assert await probe.workload(workload_name(ns, "stuck")) is not None
        assert tools_indexed(kube, ns, "translator")["status"] == "True"
        copies = damaged_copies(op_settings.db_path)
        assert len(copies) == 1
        for reason, type_ in (("IndexUnhealthy", "Warning"), ("IndexRebuilt", "Warning"), ("IndexRecovered", "Normal")):
            await eventually(lambda r=reason, t=type_: has_pod_event(kube, ns, r, t), what=reason)
        metrics = operator.metrics()
        assert 'mcp_optimizer_index_rebuilds_total{kind="corrupt"} 1.0' in metrics
        assert "mcp_optimizer_index_healthy 1.0" in metrics
        assert operator.process.poll() is None  # never restarted
        log = operator.stop()
    # One line each, SQLite's words: no traceback and never the SQL (its parameters are users' data).
    assert "sqlalchemy.exc" not in log and "pysqlite3" not in log and "SELECT" not in log


def _not_ready(operator: RunProcess) -> tuple[int, str] | None:
    status, body = operator.readyz()
    return (status, body) if status == 503 else None


async def test_a_full_disk_fails_readyz_claims_nothing_and_recovers_when_space_returns(
    ns: str, kube: Kube, pod: dict[str, Any], run_process: StartProcess, tmp_path: Path, embedder: Embedder
) -> None:
    many = [make_tool(f"tool_{i:03d}", f"Tool number {i} of the catalog server") for i in range(20)]
    with faults.FullDisk(tmp_path, size=48 * 1024 * 1024) as disk, McpTestServer(TRANSLATE) as first, \
            McpTestServer(many) as big:
        db = disk.dir / "index.db"
        kube.create_server(ns, "translator", {"url": first.url})
        operator = run_process(ns, pod, db=db, env=disk.env)
        await eventually(lambda: operator.readyz()[0] == 200, timeout=90, what="ready")
        assert "translate_text" in await operator.find_tool("translate text")

        disk.fill(db)
        kube.create_server(ns, "big", {"url": big.url})
        await eventually(lambda: tools_indexed(kube, ns, "big").get("reason") == "IndexUnavailable", timeout=120,
                         what="the big server's status says the index could not take it")
        condition = tools_indexed(kube, ns, "big")
        assert condition["status"] == "False" and "full" in condition["message"]
        assert tool_count(kube, ns, "big") == 0  # no claim of tools that were not written
        status, why = operator.readyz()
        assert status == 503 and "full" in why
        await eventually(lambda: has_pod_event(kube, ns, "IndexUnhealthy", "Warning", "full"))
        assert "tool_001" not in await operator.find_tool("tool number 1 of the catalog server")
        assert "translate_text" in await operator.find_tool("translate text")  # nothing else lost

        disk.free(db)
        await eventually(lambda: operator.readyz()[0] == 200, timeout=90, what="ready again without a restart")
        await eventually(lambda: tools_indexed(kube, ns, "big").get("status") == "True", timeout=30)
        assert tool_count(kube, ns, "big") == 20
        assert "tool_001" in await operator.find_tool("tool number 1 of the catalog server")
        assert "translate_text" in await operator.find_tool("translate text")
        await eventually(lambda: has_pod_event(kube, ns, "IndexRecovered", "Normal"))
        assert 'mcp_optimizer_index_rebuilds_total{kind="full"}' not in operator.metrics()  # waited, not rebuilt
        assert operator.process.poll() is None
        log = operator.stop()
    assert "sqlalchemy.exc" not in log and "pysqlite3" not in log and "INSERT" not in log


async def test_an_index_deleted_under_the_operator_is_rebuilt(
    ns: str,
    kube: Kube,
    kube_api: ApiClient,
    pod: dict[str, Any],
    start_operator: OperatorFactory,
    probe: IndexProbe,
    op_settings: Settings,
    translator: str,
    weather: str,
) -> None:
    start_operator([ns], catalog_namespaces=(ns,), index_heal_interval=0.5, **pod)
    await both_found(probe, translator, weather)
    await probe.close()

    faults.remove_index(op_settings.db_path)
    await eventually(lambda: has_pod_event(kube, ns, "IndexRebuilt", "Warning", "deleted"), timeout=30)
    await probe.close()
    await both_found(probe, translator, weather, timeout=30)
    assert await probe.catalogs() == {f"{ns}/registry"}
    # The pod fast path writes into the new file too.
    set_pod_status(kube_api, ns, "weather-0", "Running", ready=False, waiting_reason="CrashLoopBackOff")
    await eventually(lambda: _status_is(probe, weather, "ERROR"))
    await eventually(lambda: has_pod_event(kube, ns, "IndexRecovered", "Normal"))


async def _status_is(probe: Any, name: str, status: str) -> bool:
    return bool(await probe.status(name) == status)


# ------------------------------------------------------------------------------ readiness


async def test_readyz_waits_for_the_first_full_pass(
    ns: str, kube: Kube, pod: dict[str, Any], run_process: StartProcess, translator: str
) -> None:
    with HangingServer() as hanging:
        names = ["translator"]
        for i in range(3):  # each answers nothing: its first sync ends with the 4 s tools/list timeout
            kube.create_server(ns, f"stuck-{i}", {"url": hanging.url})
            names.append(f"stuck-{i}")
        operator = run_process(ns, pod)
        seen_starting = False
        while True:
            status, body = await asyncio.to_thread(operator.readyz)
            if status == 503:
                seen_starting = True
                assert "not ready" in body
            if status == 200:
                break
            assert operator.process.poll() is None, operator.log()[-3000:]
            await asyncio.sleep(0.05)
        assert seen_starting
        # The moment /readyz turns ready, every MCPServer listed at start has had its first sync.
        statuses = {name: kube.server_status(ns, name) for name in names}
        assert all(s.get("observedGeneration") == 1 for s in statuses.values()), statuses
        assert tools_indexed(kube, ns, "translator")["status"] == "True"
        for i in range(3):
            assert tools_indexed(kube, ns, f"stuck-{i}")["reason"] == "ToolsListFailed"
        assert "mcp_optimizer_ready 1.0" in operator.metrics()
        operator.stop()


# ------------------------------------------------------------------------------ chunked catalogs


def big_catalog(count: int, *, version: int = 1) -> dict[str, Any]:
    return legacy_catalog(servers={
        f"server-{i:04d}": {"image": f"ghcr.io/acme/server-{i:04d}:1", "description": f"Server {i} v{version}",
                            "tools": [f"read_{i}", f"write_{i}"]}
        for i in range(count)
    })


async def _catalog_rows(probe: Any, catalog: str) -> int:
    return len(await probe.registry_servers(catalog))


async def test_a_catalog_load_killed_midway_is_finished_at_the_next_start(
    ns: str,
    kube: Kube,
    run_process: StartProcess,
    start_operator: OperatorFactory,
    probe: IndexProbe,
    op_settings: Settings,
    pod: dict[str, Any],
) -> None:
    catalog = f"{ns}/big"
    with McpTestServer(TRANSLATE) as remote:
        kube.create_server(ns, "server-0100", {"url": remote.url})
        operator = run_process(ns, pod, env={"MCP_OPTIMIZER_CATALOG_CHUNK_SECONDS": "0"})
        await eventually(lambda: operator.readyz()[0] == 200, timeout=90, what="ready")
        kube.put_catalog(ns, "big", big_catalog(400))
        await eventually(lambda: _between(probe, catalog, 20, 400), timeout=120, interval=0.01,
                         what="part of the catalog written")
        operator.kill()  # SIGKILL midway: only the committed chunks are in the index
        partial = await _catalog_rows(probe, catalog)
        assert 20 < partial < 400
        await probe.close()

        start_operator([ns], catalog_namespaces=(ns,), **pod)
        await eventually(lambda: _catalog_has(probe, catalog, 400), timeout=120, what="the whole catalog")
        names = await probe.registry_servers(catalog)
        assert names == [f"server-{i:04d}" for i in range(400)]
        tools = await probe._rows("SELECT count(*) AS n FROM tools_registry")
        assert tools[0]["n"] == 800


async def test_a_catalog_changed_midway_ends_as_its_last_version(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    catalog = f"{ns}/big"
    start_operator([ns], catalog_namespaces=(ns,), catalog_chunk_seconds=0.0)
    kube.put_catalog(ns, "big", big_catalog(300))
    await eventually(lambda: _between(probe, catalog, 10, 300), timeout=120, interval=0.01)
    second = big_catalog(150, version=2)
    second["servers"]["renamed-0000"] = second["servers"].pop("server-0000")
    kube.put_catalog(ns, "big", second)
    expected = sorted(["renamed-0000", *(f"server-{i:04d}" for i in range(1, 150))])
    await eventually(lambda: _names_are(probe, catalog, expected), timeout=180, what="the second version")
    rows = await probe._rows("SELECT description FROM mcpservers_registry WHERE catalog = :c", c=catalog)
    assert {r["description"].split()[-1] for r in rows} == {"v2"}


async def _between(probe: Any, catalog: str, low: int, high: int) -> bool:
    return low < await _catalog_rows(probe, catalog) < high


async def _catalog_has(probe: Any, catalog: str, count: int) -> bool:
    return await _catalog_rows(probe, catalog) == count


async def _names_are(probe: Any, catalog: str, names: list[str]) -> bool:
    return bool(await probe.registry_servers(catalog) == names)
