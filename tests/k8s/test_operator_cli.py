"""``mcp-optimizer run``: operator, MCP endpoint and liveness probe in one process; SIGTERM stops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from mcp_optimizer.config import Settings
from mcp_optimizer.mcp import McpClientError, call_tool, list_tools
from mcp_optimizer.testing.mcp_servers import LOOPBACK, LOOPBACK_POLICY, McpTestServer, make_tool
from tests.k8s.harness import Kube, eventually, http_get
from tests.support.ports import free_port

pytestmark = pytest.mark.kube





def agent_token(kube: Kube, ns: str) -> str:
    """A ServiceAccount that may get MCPServers in ``ns``, and its token for the MCP endpoint."""
    kube.core.create_namespaced_service_account(ns, cast(Any, {"metadata": {"name": "agent"}}))
    rbac = client.RbacAuthorizationV1Api(kube.api)
    rule = {"apiGroups": ["mcp-optimizer.dev"], "resources": ["mcpservers"], "verbs": ["get"]}
    rbac.create_namespaced_role(ns, cast(Any, {"metadata": {"name": "agent"}, "rules": [rule]}))
    rbac.create_namespaced_role_binding(ns, cast(Any, {
        "metadata": {"name": "agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
    }))
    request: Any = {"spec": {"audiences": ["mcp-optimizer"], "expirationSeconds": 3600}}
    status = kube.core.create_namespaced_service_account_token("agent", ns, request).status
    assert status is not None
    return str(status.token)


@pytest.mark.parametrize("mode", ["hybrid", "bm25"])
async def test_run_command(
    ns: str, kube: Kube, kubeconfig: str, op_settings: Settings, tmp_path: Path, mode: str
) -> None:
    """`mcp-optimizer run` with no auth settings: Kubernetes auth, a caller needs its token."""
    mcp_port, health_port, metrics_port = free_port(), free_port(), free_port()
    auth = {"Authorization": f"Bearer {agent_token(kube, ns)}"}
    env = {
        **os.environ,
        # Keyword-only: no model at all (the path points nowhere, so loading one would fail).
        "MCP_OPTIMIZER_EMBEDDING_MODEL_PATH": str(op_settings.embedding_model_path if mode == "hybrid"
                                                  else tmp_path / "no-model"),
        "MCP_OPTIMIZER_SEARCH_MODE": mode,
        "MCP_OPTIMIZER_NAMESPACES": ns,
        # Flags override the environment: these must lose.
        "MCP_OPTIMIZER_MCP_HOST": "0.0.0.0",
        "MCP_OPTIMIZER_MCP_PORT": "1",
        "MCP_OPTIMIZER_METRICS_PORT": "1",
        "MCP_OPTIMIZER_LOG_FORMAT": "json",
        # The MCP server runs on loopback, which the operator refuses unless it is admitted.
        "MCP_OPTIMIZER_ALLOWED_DESTINATIONS": ",".join(LOOPBACK),
    }
    command = [
        sys.executable, "-c", "import sys; from mcp_optimizer.cli.main import main; sys.exit(main())",
        "--db", str(tmp_path / "index.db"), "run", "--kubeconfig", kubeconfig,
        "--mcp-host", "127.0.0.1", "--mcp-port", str(mcp_port), "--mcp-path", "/agents/mcp",
        "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
        "--liveness", f"http://127.0.0.1:{health_port}/healthz",
    ]
    log = (tmp_path / "run.log").open("wb")
    # A pre-2026 server (as most are): every connection's protocol probe gets HTTP 400.
    with McpTestServer([make_tool("book_flight", "Book a flight between two airports")], legacy=True) as server:
        kube.create_server(ns, "travel", {"url": server.url})
        process = await asyncio.create_subprocess_exec(*command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                # A new process loads the model and starts kopf: on a loaded 2-core machine that
                # alone has taken most of a minute.
                await eventually(lambda: kube.server_status(ns, "travel").get("phase") == "Running", timeout=120,
                                 what="the operator indexed the server")
            except AssertionError as exc:
                log.flush()
                tail = (tmp_path / "run.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{exc}\n--- mcp-optimizer run's log ---\n{tail}") from None

            await eventually(lambda: http_get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200,
                             what="liveness probe")
            await eventually(lambda: http_get(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 200,
                             what="readiness")
            status, metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200
            assert 'mcp_optimizer_reconciles_total{kind="MCPServer",outcome="ok"}' in metrics
            assert 'mcp_optimizer_workload_tools{status="RUNNING"} 1.0' in metrics

            endpoint = f"http://127.0.0.1:{mcp_port}/agents/mcp"

            async def tools() -> list[str]:
                try:
                    return [t["name"] for t in await list_tools(
                        endpoint, timeout=5, headers=auth, policy=LOOPBACK_POLICY)]
                except McpClientError:
                    return []

            names = await eventually(tools, what="MCP endpoint")
            assert "find_tool" in names
            result = await call_tool(endpoint, "streamable-http", "find_tool",
                                     {"tool_description": "book a flight", "tool_keywords": "flight"}, timeout=10,
                                     headers=auth, policy=LOOPBACK_POLICY)
            assert "book_flight" in str(result["content"])
            # Without a token: 401 before MCP.
            with pytest.raises(McpClientError, match="401"):
                await list_tools(endpoint, timeout=5, policy=LOOPBACK_POLICY)
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
    # Stopping is clean: no ERROR, no traceback (kopf used to cancel the endpoint's tasks).
    assert '"level": "ERROR"' not in output and "Traceback" not in output, output[-3000:]
    # Quiet: no per-request HTTP lines, so no "400 Bad Request" from the protocol probe either.
    assert "HTTP Request:" not in output and "400 Bad Request" not in output, output[-3000:]
    assert "Handler 'removed' succeeded" not in output
    # Structured logs: one JSON object per line, one line per reconcile with what changed.
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    reconciles = [r for r in records if r["logger"] == "mcp_optimizer.reconcile"]
    travel = [r for r in reconciles if r.get("resource") == f"{ns}/travel" and r["kind"] == "MCPServer"]
    assert travel and travel[0]["outcome"] == "ok" and "status RUNNING, 1 tools" in travel[0]["changes"]
    assert isinstance(travel[0]["duration_ms"], float)

