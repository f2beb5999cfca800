"""ToolHive interop on the real control plane: ToolHive's real CRDs and example objects, its
operator played by writing status as it does, real MCP servers on 127.0.0.1 as its proxies.

What the issue asks, one test each: tools searchable when Ready and gone on Failed/Stopped within
a second, back on Ready; an MCPToolConfig change re-reads; MCPRemoteProxy and MCPServerEntry
indexed; registry matching by image and by URL against ToolHive's own catalog; a vMCP does not
double the results; ToolHive's MCPServer and ours of the same name are two workloads; deleting an
object removes its rows, and a restart removes the rows of objects deleted meanwhile. The
read-only guarantee is checked as the operator's ServiceAccount with list/watch only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client

# The harness is also a plugin (its fixtures: ns, kube, start_operator, probe, ...); let pytest
# rewrite its asserts although this module imports it first.
pytest.register_assert_rewrite("tests.k8s.harness")
pytest_plugins = ["tests.k8s.harness"]

from mcp_optimizer.mcp.auth import build_token_table  # noqa: E402
from mcp_optimizer.mcp.scope import AccessScope  # noqa: E402
from mcp_optimizer.operator.mapping import workload_name  # noqa: E402
from mcp_optimizer.testing import toolhive as th  # noqa: E402
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool  # noqa: E402
from mcp_optimizer.testing.shared import shared_dir  # noqa: E402
from tests.k8s.harness import OperatorThread, eventually, within  # noqa: E402

pytestmark = pytest.mark.kube

#: The issue: a phase change reaches search in under a second.
FAST = 1.0

FETCH_TOOLS = [
    make_tool("fetch", "Fetch a URL from the internet and return its content as markdown",
              {"type": "object", "properties": {"url": {"type": "string"}}}),
    make_tool("fetch_raw", "Download the raw bytes of a web page without converting them"),
]


def mcpserver(ns: str, name: str) -> str:
    return workload_name(ns, name, "MCPServer")


@pytest.fixture
def toolhive_crds(kube_api: client.ApiClient) -> None:
    """ToolHive's CRDs, installed (transformed for kube-apiserver 1.20) if they are not served."""
    if set(th.PLURALS.values()) - th.served_plurals(kube_api):
        th.install_crds(kube_api)


@pytest.fixture
def tns(ns: str, kube_api: client.ApiClient, toolhive_crds: None) -> Iterator[str]:
    """A test namespace whose ToolHive objects are deleted at teardown (after the operator stopped)."""
    yield ns
    th.empty_namespace(kube_api, ns)


async def _is(check: Any, expected: Any) -> bool:
    return await check() == expected


async def test_mcpserver_phase_drives_search(tns, kube_api, start_operator, probe):
    """ToolHive's fetch example, unchanged: Ready -> searchable, Failed/Stopped -> gone within a
    second (one write, no tools/list), Ready again -> back with the stored tools."""
    (server_doc,) = th.example("mcpserver_fetch")
    th.apply(kube_api, tns, server_doc)
    operator = start_operator([tns])
    counter = operator.list_tools
    assert counter is not None
    wl = mcpserver(tns, "fetch")

    def status() -> Any:
        return probe.status(wl)

    async def searchable() -> bool:
        return await probe.found("fetch a web page as markdown", wl, "fetch")

    # Created, no status yet (ToolHive has not reconciled it): indexed as STOPPED.
    await eventually(lambda: _is(status, "STOPPED"), what="indexed as STOPPED")
    row = await probe.workload(wl)
    assert row["name"] == "fetch" and row["package"] == "ghcr.io/stackloklabs/gofetch/server"
    assert row["namespace"] == tns and row["group"] == "default"

    with McpTestServer(FETCH_TOOLS) as proxy:
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Pending", url=proxy.url)
        await eventually(lambda: _is(status, "STOPPED"))
        assert counter.count(proxy.url) == 0
        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Ready")
        await eventually(searchable, what="tools searchable once Ready")
        assert await status() == "RUNNING"
        assert counter.count(proxy.url) == 1
        row = await probe.workload(wl)
        assert row["endpoint"] == proxy.url and row["transport"] == "streamable-http"

        for phase, expected in (("Failed", "ERROR"), ("Ready", "RUNNING"), ("Stopped", "STOPPED"),
                                ("Ready", "RUNNING"), ("Terminating", "STOPPED"), ("Ready", "RUNNING")):
            th.set_status(kube_api, "MCPServer", tns, "fetch", phase=phase, message=f"now {phase}")
            took = await within(FAST * 5, lambda expected=expected: _is(status, expected), what=f"{phase}")
            assert took < FAST, f"{phase} took {took:.2f}s to reach the index"
            assert await searchable() is (expected == "RUNNING")
        row = await probe.workload(wl)
        assert counter.count(proxy.url) == 1, "a phase change must not re-read tools"

        th.set_status(kube_api, "MCPServer", tns, "fetch", phase="Failed", message="CrashLoopBackOff")
        await eventually(lambda: _is(status, "ERROR"))
        assert "Failed: CrashLoopBackOff" in (await probe.workload(wl))["status_reason"]
