"""What a new user sees of ``mcp-optimizer run``: how long SIGTERM takes, and how many log lines.

A real ``mcp-optimizer run`` process against the local control plane, with MCP servers that
behave like the real ones (a stdio server behind an HTTP bridge, pre-2026 servers that answer the
protocol probe with HTTP 400): it indexes them, answers MCP calls, and is stopped with SIGTERM,
once idle and once with an MCP client session open. Printed per round: seconds from SIGTERM to
process exit, ERROR lines and tracebacks, log lines in all and the per-request HTTP lines.

    python -m bench.first_contact [--rounds 3] [--servers 6]
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config

from bench.common import base_parser, print_header
from bench.harness import cluster, create_mcpserver
from mcp_optimizer.mcp.client import McpClientError, call_tool
from mcp_optimizer.operator.mapping import GROUP, PLURAL, VERSION
from mcp_optimizer.testing.mcp_servers import LOOPBACK, LOOPBACK_POLICY, McpTestServer, make_tool
from mcp_optimizer.testing.stdio_bridge import StdioBridge
from tests.support.ports import free_port
from tests.support.shared import model_path

NAMESPACE = "default"



def tools(i: int) -> list[dict[str, Any]]:
    return [make_tool(f"tool_{i}_{j}", f"Tool {j} of server {i}: look up record {j} in system {i}")
            for j in range(5)]


def running(objects: client.CustomObjectsApi, count: int) -> bool:
    listing = cast(dict[str, Any], objects.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL))
    items = listing["items"]
    return len(items) == count and all((i.get("status") or {}).get("phase") == "Running" for i in items)


async def one_round(kubeconfig: str, servers: int, with_session: bool, workdir: Path) -> dict[str, Any]:
    mcp_port = free_port()
    log_path = workdir / f"run-{'session' if with_session else 'idle'}-{time.monotonic():.0f}.log"
    (workdir / "index.db").unlink(missing_ok=True)
    # The servers and the endpoint are on loopback: admitted, and the endpoint without auth.
    env = {**os.environ, "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(model_path()),
           "MCP_OPTIMIZER_AUTH_MODE": "none", "MCP_OPTIMIZER_ALLOWED_DESTINATIONS": ",".join(LOOPBACK)}
    command = [sys.executable, "-m", "mcp_optimizer", "--db", str(workdir / "index.db"), "run",
               "--kubeconfig", kubeconfig, "--namespaces", NAMESPACE, "--mcp-host", "127.0.0.1",
               "--mcp-port", str(mcp_port), "--metrics-port", "0"]
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    objects = client.CustomObjectsApi(api)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 (starting it is instant; it runs on its own)
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not running(objects, servers):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"servers did not become Running; see {log_path}")
            await asyncio.sleep(0.5)
        url = f"http://127.0.0.1:{mcp_port}/mcp"
        for i in range(servers):
            # Statuses may still say Running from the previous round: wait until this process answers.
            while True:
                try:
                    result = await call_tool(url, "streamable-http", "call_tool",
                                             {"server_name": f"{NAMESPACE}/s{i}", "tool_name": f"tool_{i}_0"}, 60,
                                             policy=LOOPBACK_POLICY)
                    if not result["isError"]:
                        break
                except McpClientError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the MCP endpoint did not answer; see {log_path}")
                await asyncio.sleep(0.5)
        async with AsyncExitStack() as stack:
            if with_session:
                from mcp.client.client import Client

                session = await stack.enter_async_context(Client(url))
                await session.list_tools()
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 60)
            took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
        api.close()
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    return {"stop_s": took, "exit": code, "errors": sum(" ERROR " in line for line in lines),
            "tracebacks": text.count("Traceback"), "lines": len(lines),
            "http_lines": sum("HTTP Request:" in line for line in lines)}


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", type=int, default=6, help="MCPServers (half stdio behind a bridge)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.servers = 1, 2
    print_header("mcp-optimizer run: stop time and log volume", args)
    with cluster(None) as kube:
        workdir = Path(tempfile.mkdtemp(prefix="mcp-bench-first-contact-"))
        async with AsyncExitStack() as stack:
            for i in range(args.servers):
                if i % 2:
                    server: Any = stack.enter_context(McpTestServer(tools(i), legacy=True))
                    spec = {"url": server.url}
                else:
                    server = await stack.enter_async_context(StdioBridge(tools(i), name=f"s{i}"))
                    spec = {"url": server.url, "transport": "stdio"}
                create_mcpserver(kube.objects, NAMESPACE, f"s{i}", spec)
            for with_session in (False, True):
                results = [await one_round(kube.kubeconfig, args.servers, with_session, workdir)
                           for _ in range(args.rounds)]
                label = "with an MCP session open" if with_session else "idle"
                stops = ", ".join(f"{r['stop_s']:.2f}" for r in results)
                print(f"SIGTERM -> exit, {label}: {stops} s (exit codes {[r['exit'] for r in results]})")
                print(f"  log lines per run: {[r['lines'] for r in results]}, of them per-request HTTP lines: "
                      f"{[r['http_lines'] for r in results]}; ERROR lines: {[r['errors'] for r in results]}, "
                      f"tracebacks: {[r['tracebacks'] for r in results]}")
        kube.api.close()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    asyncio.run(main())
