"""Periodic resync, steady state (no reconcile loop), SSE servers and kopf's liveness endpoint."""

from __future__ import annotations

import asyncio
import socket

import pytest
from kubernetes.client import ApiClient

from mcp_optimizer.operator.mapping import workload_name
from mcp_optimizer.testing.mcp_servers import McpTestServer, make_tool
from tests.k8s.harness import IndexProbe, Kube, OperatorFactory, equals, eventually, http_get
from tests.k8s.kubelet import set_pod_status

pytestmark = pytest.mark.kube

TOOLS = [
    make_tool("send_email", "Send an email message to a recipient"),
    make_tool("list_inbox", "List the messages in the email inbox"),
]


async def test_resync_picks_up_tool_changes_and_keeps_unchanged_embeddings(
    ns: str, kube: Kube, kube_api: ApiClient, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    with McpTestServer(TOOLS) as remote, McpTestServer(TOOLS) as container:
        kube.create_server(ns, "mail", {"url": remote.url})
        kube.create_server(ns, "mail-box", {"image": "ghcr.io/acme/mail:1", "endpoint": container.url})
        kube.create_pod(ns, "mail-box-0", instance="mail-box")
        set_pod_status(kube_api, ns, "mail-box-0", "Running")
        start_operator([ns], resync_interval=1.5)
        for name, server in (("mail", remote), ("mail-box", container)):
            wl = workload_name(ns, name)
            await eventually(lambda wl=wl: probe.found("send an email", wl))
            before = await probe.tool_updates(wl)

            # The server changes its tools; nothing changes in the cluster.
            server.set_tools([*TOOLS, make_tool("delete_email", "Delete an email message")])
            await eventually(lambda wl=wl: probe.found("delete an email message", wl, "delete_email"), timeout=10)
            await eventually(lambda name=name: kube.server_status(ns, name).get("toolCount") == 3)
            after = await probe.tool_updates(wl)
            assert {k: after[k] for k in before} == before, "unchanged tools were re-embedded"

            server.set_tools(TOOLS[:1])
            await eventually(lambda wl=wl: equals(probe.tools(wl), ["send_email"]), timeout=10)


async def test_steady_state_writes_nothing(
    ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe
) -> None:
    """Status writes must not re-trigger the handlers: once settled, the object stays put."""
    with McpTestServer(TOOLS) as server:
        kube.create_server(ns, "mail", {"url": server.url})
        operator = start_operator([ns])
        counter = operator.list_tools
        assert counter is not None
        await eventually(lambda: kube.server_status(ns, "mail").get("phase") == "Running")
        await eventually(lambda: not (kube.server(ns, "mail") or {})["metadata"].get("annotations", {}).get(
            "mcp-optimizer.dev/sync-on-create"), what="kopf's progress annotation cleared")
        # Settled: no write for 2 s. A loaded machine may still see one late write of kopf's own
        # (e.g. a retry's bookkeeping) after the annotation clears; a reconcile loop never settles.
        settled = kube.server(ns, "mail")
        assert settled is not None
        for _ in range(10):
            await asyncio.sleep(2)
            now = kube.server(ns, "mail")
            assert now is not None
            if now["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]:
                break
            settled = now
        else:
            raise AssertionError(f"the MCPServer never settled: it is still being written: {settled}")
        calls = counter.count(server.url)
        await asyncio.sleep(3)  # an absence cannot be polled for
        later = kube.server(ns, "mail")
        assert later is not None
        assert later["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"], (settled, later)
        assert counter.count(server.url) == calls == 1


async def test_sse_server(ns: str, kube: Kube, start_operator: OperatorFactory, probe: IndexProbe) -> None:
    with McpTestServer(TOOLS) as server:
        kube.create_server(ns, "mail", {"url": server.sse_url, "transport": "sse"})
        start_operator([ns])
        await eventually(lambda: probe.found("send an email", workload_name(ns, "mail")))


async def test_liveness_endpoint(ns: str, start_operator: OperatorFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_operator([ns], liveness_endpoint=f"http://127.0.0.1:{port}/healthz")

    await eventually(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                     what="liveness endpoint answering 200")
