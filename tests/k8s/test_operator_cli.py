"""``mcp-optimizer run``: operator, MCP endpoint and liveness probe in one process; SIGTERM stops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

# The harness is also a plugin (its fixtures: ns, kube, start_operator, probe, ...); let pytest
# rewrite its asserts although this module imports it first.
pytest.register_assert_rewrite("tests.k8s.harness")
pytest_plugins = ["tests.k8s.harness"]

from mcp_optimizer.mcp import McpClientError, call_tool, list_tools  # noqa: E402
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool  # noqa: E402
from tests.k8s.harness import eventually, http_get  # noqa: E402

pytestmark = pytest.mark.kube


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("mode", ["hybrid", "bm25"])
async def test_run_command(ns, kube, kubeconfig, op_settings, tmp_path, mode):
    mcp_port, health_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        # Keyword-only: no model at all (the path points nowhere, so loading one would fail).
        "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(op_settings.embedding_model_path if mode == "hybrid"
                                                  else tmp_path / "no-model"),
        "MCP_OPTIMIZER_SEARCH_MODE": mode,
        "MCP_OPTIMIZER_NAMESPACES": ns,
        "MCP_OPTIMIZER_MCP_HOST": "127.0.0.1",
        "MCP_OPTIMIZER_MCP_PORT": str(mcp_port),
        "MCP_OPTIMIZER_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health_port}/healthz",
        "MCP_OPTIMIZER_METRICS_PORT": str(metrics_port),
        "MCP_OPTIMIZER_LOG_FORMAT": "json",
    }
    command = [
        sys.executable, "-c", "import sys; from mcp_optimizer.cli.main import main; sys.exit(main())",
        "--db", str(tmp_path / "index.db"), "run", "--kubeconfig", kubeconfig,
    ]
    log = (tmp_path / "run.log").open("wb")
    with McpTestServer([make_tool("book_flight", "Book a flight between two airports")]) as server:
        kube.create_server(ns, "travel", {"url": server.url})
        process = await asyncio.create_subprocess_exec(*command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await eventually(lambda: kube.server_status(ns, "travel").get("phase") == "Running", timeout=60,
                             what="the operator indexed the server")

            await eventually(lambda: http_get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200,
                             what="liveness probe")
            await eventually(lambda: http_get(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 200,
                             what="readiness")
            status, metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200
            assert 'mcp_optimizer_reconciles_total{kind="MCPServer",outcome="ok"}' in metrics
            assert 'mcp_optimizer_workload_tools{status="RUNNING"} 1.0' in metrics

            endpoint = f"http://127.0.0.1:{mcp_port}/mcp"

            async def tools() -> list[str]:
                try:
                    return [t["name"] for t in await list_tools(endpoint, timeout=5)]
                except McpClientError:
                    return []

            names = await eventually(tools, what="MCP endpoint")
            assert "find_tool" in names
            result = await call_tool(endpoint, "streamable-http", "find_tool",
                                     {"tool_description": "book a flight", "tool_keywords": "flight"}, timeout=10)
            assert "book_flight" in str(result["content"])
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                raise
            finally:
                log.close()
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    # Structured logs: one JSON object per line, one line per reconcile with what changed.
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    reconciles = [r for r in records if r["logger"] == "mcp_optimizer.reconcile"]
    travel = [r for r in reconciles if r.get("resource") == f"{ns}/travel" and r["kind"] == "MCPServer"]
    assert travel and travel[0]["outcome"] == "ok" and "status RUNNING, 1 tools" in travel[0]["changes"]
    assert isinstance(travel[0]["duration_ms"], float)

