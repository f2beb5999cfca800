"""What the benchmarks that run the operator or the endpoint share: a control plane and the objects
of a cluster without a kubelet, MCP servers in a child process, the operator in this process, the
``mcp-optimizer`` console script in its own, and a process's memory.

* :func:`cluster`: ``scripts/control-plane`` in a temporary directory (or an existing cluster),
  the MCPServer CRD installed; the benchmark plays the kubelet (:func:`pod_status`).
* :class:`Farm`: ONE child process (``python -m bench.harness --farm-child N``) serving N real MCP
  servers over streamable HTTP on 127.0.0.1 (:class:`McpTestServerFarm`); server ``i`` serves the
  tools of LiveMCPBench server ``i mod 70``. :class:`ChildServers` is the child-process part, for
  benchmarks with servers of their own.
* :class:`OperatorThread`: :func:`mcp_optimizer.operator.run_operator` in its own thread and event
  loop, as ``mcp-optimizer run`` runs it, with :func:`operator_settings`.
* :func:`start_serve` and :func:`stop_process`: ``mcp-optimizer serve`` as its own process;
  :func:`proc_memory`: its RSS and peak RSS.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2
import yaml
from kubernetes import client, config
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from bench.common import REPO, livemcpbench_servers, model_path
from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.operator import run_operator
from mcp_optimizer.operator.mapping import GROUP, INSTANCE_LABEL, PLURAL, VERSION
from mcp_optimizer.testing.mcp_servers import LOOPBACK

CRD_FILE = REPO / "crds" / "mcpservers.mcp-optimizer.dev.yaml"
MERGE_PATCH = "application/merge-patch+json"


# ------------------------------------------------------------------------------ processes


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS, since the last reset) of a process, in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB."""
    return proc_memory(os.getpid())["VmHWM"]


def reset_peak(pid: int) -> None:
    """Resets a process's VmHWM to its current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def wait_or_kill(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Wait for a process told to stop; SIGKILL if it has not exited within ``timeout``."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within 30 s."""
    process.send_signal(signal.SIGTERM)
    wait_or_kill(process)


def console_script() -> str:
    """``mcp-optimizer``, the console script of this venv."""
    return str(Path(sys.executable).with_name("mcp-optimizer"))


def start_serve(db: Path, port: int, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """``mcp-optimizer serve`` on ``db`` in its own process, with the benchmarks' model and ``env``
    over this process's environment; its stderr is kept (a pipe) for when it fails."""
    command = [console_script(), "--db", str(db), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, env={**os.environ, "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path()), **env},
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mcp-optimizer serve exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"mcp-optimizer serve did not listen on {port} within {timeout} s")


@asynccontextmanager
async def mcp_session(url: str, timeout: float = 60.0) -> AsyncIterator[Client]:
    """An MCP client session on the endpoint at ``url`` (streamable HTTP, no tool cache)."""
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(timeout)) as http,
        Client(streamable_http_client(url, http_client=http), cache=None) as session,
    ):
        yield session


# ---------------------------------------------------------------------------- MCP servers


def announce_and_wait(urls: Mapping[str, Any]) -> None:
    """The child's side of :class:`ChildServers`: its URLs as the first line, then serve until the
    parent closes our stdin."""
    print(json.dumps(urls), flush=True)
    sys.stdin.read()


class ChildServers:
    """MCP servers in a child process (``python -m <args>``) until its stdin closes: the first line
    it prints is a JSON object of their URLs (:func:`announce_and_wait`)."""

    def __init__(self, *args: str, what: str = "the MCP servers") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} did not start")
        self.urls: dict[str, Any] = json.loads(line)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        wait_or_kill(self.process)

    def __enter__(self) -> ChildServers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def farm_tools(i: int) -> list[dict[str, Any]]:
    servers = livemcpbench_servers()
    return servers[i % len(servers)].tools


def server_name(i: int) -> str:
    servers = livemcpbench_servers()
    return f"{servers[i % len(servers)].k8s_name[:50]}-{i:03d}"


def farm_child(count: int) -> None:
    """Serve ``count`` MCP servers from this process until stdin closes."""
    from mcp_optimizer.testing.mcp_servers import McpTestServerFarm

    farm = McpTestServerFarm({server_name(i): farm_tools(i) for i in range(count)})
    farm.start()
    announce_and_wait({"base": farm.base_url})
    farm.stop()


class Farm(ChildServers):
    """The child process serving ``count`` MCP servers: server ``i`` at :meth:`url`."""

    def __init__(self, count: int) -> None:
        super().__init__("bench.harness", "--farm-child", str(count), what="the MCP server farm")
        self.base: str = self.urls["base"]

    def url(self, i: int) -> str:
        return f"{self.base}/s/{server_name(i)}/mcp"

    def __enter__(self) -> Farm:
        return self


# ------------------------------------------------------------------------ control plane


class ControlPlane:
    """``scripts/control-plane`` in a temporary state directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-bench-cp-"))
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "control-plane"), "start", str(self.dir)],
                                capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"scripts/control-plane start failed:\n{result.stderr}")
        self.kubeconfig = result.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        subprocess.run([sys.executable, str(REPO / "scripts" / "control-plane"), "stop", str(self.dir)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)  # stop keeps the logs; a benchmark does not need them


def install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD_FILE.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
            return
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.1)
    raise TimeoutError("the MCPServer CRD was not served within 60 s")


@dataclass
class Cluster:
    """A cluster with the MCPServer CRD installed, and its clients."""

    kubeconfig: str
    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create_namespace(self, prefix: str) -> str:
        """A fresh namespace ``<prefix>-<6 hex digits>``."""
        ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
        return ns


@contextmanager
def cluster(kubeconfig: str | None) -> Iterator[Cluster]:
    """The cluster of ``kubeconfig``, or a :class:`ControlPlane` of its own (stopped afterwards)."""
    plane = None if kubeconfig else ControlPlane()
    try:
        path = kubeconfig or (plane.kubeconfig if plane else "")
        api = config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
        install_crd(api)
        yield Cluster(path, api)
    finally:
        if plane is not None:
            plane.stop()


def pod_status(phase: str, *, ready: bool = True, waiting: str | None = None) -> dict[str, Any]:
    """A pod ``status`` as the kubelet reports it (the control plane has no kubelet): Running and
    Ready, or Running with its container waiting in ``waiting`` (e.g. CrashLoopBackOff)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = phase == "Running" and waiting is None
    is_ready = ready and started
    state: dict[str, Any] = ({"waiting": {"reason": waiting, "message": f"simulated {waiting}"}} if waiting
                             else {"running": {"startedAt": now}})
    container = {"name": "mcp", "ready": is_ready, "started": started, "restartCount": 3 if waiting else 0,
                 "image": "simulated", "imageID": "", "state": state}
    conditions = [{"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
                  for kind, ok in (("PodScheduled", True), ("Initialized", True), ("ContainersReady", is_ready),
                                   ("Ready", is_ready))]
    return {"status": {"phase": phase, "conditions": conditions, "containerStatuses": [container],
                       "startTime": now}}


def create_mcpserver(objects: client.CustomObjectsApi, ns: str, name: str, spec: dict[str, Any]) -> None:
    objects.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MCPServer", "metadata": {"name": name}, "spec": spec,
    })


def create_farm_server(kube: Cluster, ns: str, farm: Farm, i: int) -> None:
    """Farm server ``i`` as a container MCPServer with one Running pod (``<name>-0``)."""
    name = server_name(i)
    create_mcpserver(kube.objects, ns, name, {"image": f"ghcr.io/livemcpbench/{name}:1.0", "endpoint": farm.url(i)})
    kube.core.create_namespaced_pod(ns, {  # type: ignore[arg-type]
        "metadata": {"name": f"{name}-0", "labels": {INSTANCE_LABEL: name}},
        "spec": {"containers": [{"name": "mcp", "image": "example/mcp:1"}]},
    })
    kube.core.patch_namespaced_pod_status(f"{name}-0", ns, pod_status("Running"), _content_type=MERGE_PATCH)


# ------------------------------------------------------------------------------ operator


def operator_settings(db: Path, ns: str, embedder: Any, **more: Any) -> Settings:
    """The in-process operator's settings: namespace ``ns``, no periodic resync during a run."""
    # The farm's servers are on loopback, which the operator refuses unless it is admitted.
    return Settings(db_path=db, embedding_model_path=embedder.model_path, namespaces=(ns,), resync_interval=3600.0,
                    allowed_destinations=LOOPBACK, **more)


class OperatorThread:
    """``run_operator`` in its own thread and event loop (what ``mcp-optimizer run`` runs)."""

    def __init__(self, settings: Settings, kubeconfig: str, embedder: Any) -> None:
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                asyncio.run(run_operator(settings, kubeconfig=kubeconfig, embedder=embedder,
                                         stop_flag=self.stop_flag, ready_flag=self.ready_flag))
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name="operator", daemon=True)
        self.thread.start()
        if not self.ready_flag.wait(120) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(60)


async def visible(search: ToolSearch, workload: str, query: str) -> bool:
    """Whether ``find_tool`` for ``query`` finds a tool of ``workload``."""
    return bool(await search.find_tools(query, server=workload, limit=1))


async def until_search_agrees(
    search: ToolSearch, workload: str, query: str, want: bool, *, since: float, timeout: float, what: str
) -> float:
    """Polls search every 5 ms until ``workload`` is visible (``want``) or not; the seconds since
    ``since`` (a perf_counter value)."""
    while await visible(search, workload, query) != want:
        if time.perf_counter() - since > timeout:
            raise TimeoutError(f"{workload}: search did not follow {what} within {timeout:g} s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - since


def farm_query(i: int) -> str:
    """A query that finds farm server ``i``'s first tool."""
    tool = farm_tools(i)[0]
    return f"{tool['name']} {tool.get('description') or ''}"[:200]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--farm-child"]:
        farm_child(int(sys.argv[2]))
