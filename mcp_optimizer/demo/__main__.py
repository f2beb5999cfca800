"""The demo behind ``scripts/demo``: the operator for real, on the local control plane.

``python -m mcp_optimizer.demo up --state DIR --kubeconfig FILE --crd FILE`` starts three MCP
servers on loopback (a stdio server behind an HTTP bridge, a streamable HTTP one and an SSE one,
see :mod:`mcp_optimizer.demo.servers`), applies the MCPServer CRD, a registry catalog and an
MCPServer for each, starts ``mcp-optimizer run`` with its MCP endpoint, waits until every server
is Running, then runs a ``find_tool`` and a ``call_tool`` and prints them as commands to re-run.
``down --state DIR`` stops what ``up`` started (by the process ids it recorded, nothing else).

Every process runs in its own session with its log under ``DIR/logs``; ``DIR/pids`` lists them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mcp_optimizer.demo.servers import TRANSPORTS

NAMESPACE = "demo"
CATALOG = "demo-catalog"
WAIT_SECONDS = float(os.environ.get("MCP_OPTIMIZER_DEMO_WAIT", "300"))

# --- The demo's settings: the one place that opens what a default install keeps closed ---------
#: The demo's MCP servers listen on loopback. A default install must not fetch loopback or other
#: internal destinations (SSRF); when the operator's destination allow-list exists, this is the
#: one setting that opens it for the demo (loopback only), and nothing else does.
DEMO_ALLOWED_DESTINATIONS = "127.0.0.1/32"
DEMO_ENV = {
    # Read by the destination allow-list once it is wired (not read by this version).
    "MCP_OPTIMIZER_ALLOWED_DESTINATIONS": DEMO_ALLOWED_DESTINATIONS,
    # No auth, chosen explicitly: the endpoint listens on 127.0.0.1 only (--mcp-host below), and
    # the MCP Inspector's CLI, which the demo points people to, cannot send an Authorization header.
    "MCP_OPTIMIZER_AUTH_MODE": "none",
    "MCP_OPTIMIZER_AUTH_TOKENS_FILE": "",
    "MCP_OPTIMIZER_AUTH_TOKENS": "",
    "MCP_OPTIMIZER_RESYNC_INTERVAL": "60",
}

DESCRIPTIONS = {
    "time": "Current time in any timezone and conversions between timezones",
    "calculator": "Exact arithmetic: sums, products and percentages",
    "text": "Text utilities: word counts and URL slugs",
}


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, deadline: float, what: str, log: Path) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: {what} did not start listening on port {port}; see {log}") from None
            time.sleep(0.2)


class Processes:
    """Background processes of the demo, recorded in ``state/pids`` (one ``pid name`` a line)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.file = state / "pids"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=env)
        with self.file.open("a") as pids:
            pids.write(f"{process.pid} {name}\n")
        return log

    def recorded(self) -> list[tuple[int, str]]:
        if not self.file.exists():
            return []
        return [(int(pid), name) for pid, _, name in
                (line.partition(" ") for line in self.file.read_text().splitlines() if line.strip())]

    def stop_all(self) -> None:
        for pid, name in reversed(self.recorded()):
            if not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            print(f"demo: stopped {name} (pid {pid})")
        self.file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def apply_cluster(kubeconfig: str, crd: Path, urls: dict[str, str]) -> None:
    """The CRD, the demo namespace, a registry catalog and one MCPServer per demo server."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    ext, core, objects = client.ApiextensionsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
    crd_body = yaml.safe_load(crd.read_text())
    _create_or_replace(ext.create_custom_resource_definition, ext.replace_custom_resource_definition,
                       ext.read_custom_resource_definition, crd_body)
    _wait_until_served(objects)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    catalog = {"remote_servers": {name: {"url": urls[name], "description": DESCRIPTIONS[name],
                                         "transport": TRANSPORTS[name]}
                                  for name in ("calculator", "text")}}
    configmap = {"metadata": {"name": CATALOG, "labels": {"mcp-optimizer.dev/registry-catalog": "true"}},
                 "data": {"registry.json": json.dumps(catalog, indent=2)}}
    _create_or_replace(core.create_namespaced_config_map, core.replace_namespaced_config_map,
                       core.read_namespaced_config_map, configmap, NAMESPACE)
    _apply_mcpservers(objects, urls)
    api.close()


def _create_or_replace(create: Any, replace: Any, read: Any, body: dict[str, Any], *args: Any) -> None:
    from kubernetes import client

    try:
        create(*args, body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        current = read(body["metadata"]["name"], *args)
        version = current["metadata"]["resourceVersion"] if isinstance(current, dict) else (
            current.metadata.resource_version)
        body["metadata"]["resourceVersion"] = version
        replace(body["metadata"]["name"], *args, body)


def _wait_until_served(objects: Any) -> None:
    """Until the API server serves the new CRD's resources (a minute at most)."""
    from kubernetes import client

    deadline = time.monotonic() + 60
    while True:
        try:
            objects.list_namespaced_custom_object("mcp-optimizer.dev", "v1alpha1", NAMESPACE, "mcpservers", limit=1)
            return
        except client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _apply_mcpservers(objects: Any, urls: dict[str, str]) -> None:
    def create(namespace: str, body: dict[str, Any]) -> Any:
        return objects.create_namespaced_custom_object("mcp-optimizer.dev", "v1alpha1", namespace,
                                                       "mcpservers", body)

    def read(name: str, namespace: str) -> Any:
        return objects.get_namespaced_custom_object("mcp-optimizer.dev", "v1alpha1", namespace,
                                                    "mcpservers", name)

    def replace(name: str, namespace: str, body: dict[str, Any]) -> Any:
        return objects.replace_namespaced_custom_object("mcp-optimizer.dev", "v1alpha1", namespace,
                                                        "mcpservers", name, body)

    for name, url in urls.items():
        body = {"apiVersion": "mcp-optimizer.dev/v1alpha1", "kind": "MCPServer", "metadata": {"name": name},
                "spec": {"url": url, "transport": TRANSPORTS[name]}}
        _create_or_replace(create, replace, read, body, NAMESPACE)


def server_phases(kubeconfig: str) -> dict[str, tuple[str, int, str]]:
    """name -> (phase, tool count, Ready message) of the demo's MCPServers."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    try:
        listing: dict[str, Any] = client.CustomObjectsApi(api).list_namespaced_custom_object(  # type: ignore[assignment]
            "mcp-optimizer.dev", "v1alpha1", NAMESPACE, "mcpservers")
    finally:
        api.close()
    phases = {}
    for item in listing["items"]:
        status = item.get("status") or {}
        ready: dict[str, Any] = next((c for c in status.get("conditions") or () if c["type"] == "Ready"), {})
        phases[item["metadata"]["name"]] = (status.get("phase") or "Pending", status.get("toolCount") or 0,
                                            ready.get("message", ""))
    return phases


def up(args: argparse.Namespace) -> int:
    state: Path = args.state.resolve()
    processes = Processes(state)
    if any(_alive(pid) for pid, _ in processes.recorded()):
        print(f"demo: already running (state in {state}); stop it first with: scripts/demo stop", file=sys.stderr)
        return 1
    processes.file.unlink(missing_ok=True)
    # A fresh index beside a fresh cluster: nothing of an earlier run to garbage-collect.
    for stale in state.glob("index.db*"):
        stale.unlink()
    python = sys.executable
    mcp_port, metrics_port, time_port, calculator_port, text_port = free_ports(5)
    deadline = time.monotonic() + WAIT_SECONDS

    print("demo: starting three MCP servers on 127.0.0.1 (stdio behind an HTTP bridge, streamable HTTP, SSE)")
    logs = {
        "time": processes.start("time-server", [python, "-m", "mcp_optimizer.testing.stdio_bridge", "--port",
                                                str(time_port), "--", python, "-m", "mcp_optimizer.demo.servers",
                                                "time"]),
        "calculator": processes.start("calculator-server", [python, "-m", "mcp_optimizer.demo.servers",
                                                            "calculator", "--port", str(calculator_port)]),
        "text": processes.start("text-server", [python, "-m", "mcp_optimizer.demo.servers", "text", "--port",
                                                str(text_port)]),
    }
    ports = {"time": time_port, "calculator": calculator_port, "text": text_port}
    for name, port in ports.items():
        wait_for_port(port, deadline, f"the {name} server", logs[name])
    urls = {"time": f"http://127.0.0.1:{time_port}/mcp", "calculator": f"http://127.0.0.1:{calculator_port}/mcp",
            "text": f"http://127.0.0.1:{text_port}/sse"}

    print(f"demo: applying the CRD, namespace {NAMESPACE!r}, catalog {CATALOG!r} and three MCPServers")
    apply_cluster(args.kubeconfig, args.crd, urls)

    env = {**os.environ, **DEMO_ENV}
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    print(f"demo: starting the operator (MCP endpoint {mcp_url})")
    operator_log = processes.start("operator", [
        python, "-m", "mcp_optimizer", "--db", str(state / "index.db"), "run", "--kubeconfig", args.kubeconfig,
        "--namespaces", NAMESPACE, "--mcp-host", "127.0.0.1", "--mcp-port", str(mcp_port),
        "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
    ], env=env)
    wait_for_port(mcp_port, deadline, "the operator's MCP endpoint", operator_log)

    phases: dict[str, tuple[str, int, str]] = {}
    while time.monotonic() < deadline:
        phases = server_phases(args.kubeconfig)
        if len(phases) == len(urls) and all(phase == "Running" for phase, _, _ in phases.values()):
            break
        time.sleep(1)
    else:
        for name, (phase, _, message) in sorted(phases.items()):
            print(f"  {name}: {phase} {message}", file=sys.stderr)
        print(f"demo: the servers did not all become Running; see {operator_log}", file=sys.stderr)
        return 1
    print("demo: MCPServers in namespace demo:")
    for name, (phase, tools, _) in sorted(phases.items()):
        print(f"  {name:<12} {phase:<8} {tools} tools  ({TRANSPORTS[name]})")

    cli = shlex.quote(args.cli)
    find = f"{cli} mcp-call {mcp_url} find_tool {shlex.quote('tool_description=what time is it in Tokyo')} limit=2"
    call = (f"{cli} mcp-call {mcp_url} call_tool server_name=demo/time tool_name=get_current_time "
            + shlex.quote('parameters={"timezone": "Asia/Tokyo"}'))
    for title, command in (("find_tool", find), ("call_tool", call)):
        print(f"\ndemo: {title}:\n  {command}")
        result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            print(f"demo: {title} failed; see {operator_log}", file=sys.stderr)
            return 1
        print("\n".join("    " + line for line in _summary(result.stdout)))
    print(f"""
demo: running. The MCP endpoint is {mcp_url}: re-run the commands above, or point any MCP
client at it, e.g. the MCP Inspector's CLI (it sends every argument as a string, which works):
  npx @modelcontextprotocol/inspector --cli {mcp_url} --transport http --method tools/call \\
    --tool-name find_tool --tool-arg 'tool_description=add two numbers' --tool-arg limit=1
Logs: {processes.logs}/
Cluster: KUBECONFIG={args.kubeconfig} kubectl get mcps -n {NAMESPACE}
Stop everything: scripts/demo stop""")
    return 0


def _summary(output: str) -> list[str]:
    """find_tool's answer as one line per tool (the schemas are long); anything else as it is."""
    try:
        answer = json.loads(output)
    except ValueError:
        return output.strip().splitlines()
    if isinstance(answer, dict) and isinstance(answer.get("tools"), list):
        lines = [f"{t['server']}  {t['tool']}: {t['description']}" for t in answer["tools"]]
        estimate = answer.get("token_estimate") or {}
        if "saved_percent" in estimate:
            lines.append(f"(input schemas omitted here; {estimate['saved_percent']}% of the tokens of all tools saved)")
        return lines
    return output.strip().splitlines()


def down(args: argparse.Namespace) -> int:
    Processes(args.state.resolve()).stop_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcp_optimizer.demo")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up")
    start.add_argument("--state", type=Path, required=True)
    start.add_argument("--kubeconfig", required=True)
    start.add_argument("--crd", type=Path, required=True)
    start.add_argument("--cli", default="mcp-optimizer", help="how the printed commands run the CLI")
    start.set_defaults(handler=up)
    stop = commands.add_parser("down")
    stop.add_argument("--state", type=Path, required=True)
    stop.set_defaults(handler=down)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
