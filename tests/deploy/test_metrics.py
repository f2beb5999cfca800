"""mcp_optimizer.metrics: the series, the index gauges read from a real index, /metrics and /readyz."""

from __future__ import annotations

import asyncio
import urllib.request
from urllib.error import HTTPError

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_optimizer.catalog import parse_catalog
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.ingest import Indexer, WorkloadSpec
from mcp_optimizer.metrics import IndexCounts, Metrics, MetricsServer, start_metrics_server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


def test_reconcile_counts_and_durations_by_kind_and_outcome() -> None:
    m = Metrics()
    with m.reconcile("MCPServer") as timer:
        timer.outcome = "synced"
    with m.reconcile("MCPServer"):
        pass
    with pytest.raises(RuntimeError), m.reconcile("Catalog"):
        raise RuntimeError("boom")
    s = samples(m.render().decode())
    assert s[("mcp_optimizer_reconciles_total", (("kind", "MCPServer"), ("outcome", "synced")))] == 1
    assert s[("mcp_optimizer_reconciles_total", (("kind", "MCPServer"), ("outcome", "ok")))] == 1
    assert s[("mcp_optimizer_reconciles_total", (("kind", "Catalog"), ("outcome", "error")))] == 1
    assert s[("mcp_optimizer_reconcile_duration_seconds_count", (("kind", "Catalog"), ("outcome", "error")))] == 1


def test_find_tool_embedding_and_catalog_errors() -> None:
    m = Metrics()
    with m.time_find_tool():
        pass
    m.observe_embedding(3, 0.2)
    m.catalog_parse_error("ns/bad")

    class FakeEmbedder:
        texts_embedded = 42
        seconds_embedding = 1.5
        observers: list[object] = []

    m.watch_embedder(FakeEmbedder())
    s = samples(m.render().decode())
    assert s[("mcp_optimizer_find_tool_duration_seconds_count", ())] == 1
    assert s[("mcp_optimizer_embedding_duration_seconds_count", ())] == 1
    assert s[("mcp_optimizer_catalog_parse_errors_total", (("catalog", "ns/bad"),))] == 1
    assert s[("mcp_optimizer_embedded_texts_total", ())] == 42
    assert s[("mcp_optimizer_embedding_seconds_total", ())] == 1.5
    m.forget_catalog("ns/bad")
    assert ("mcp_optimizer_catalog_parse_errors_total", (("catalog", "ns/bad"),)) not in samples(m.render().decode())


CATALOG = """{
  "servers": {"pg": {"image": "ghcr.io/acme/pg-mcp:2", "description": "Postgres", "tools": ["query", "tables"]}},
  "remote_servers": {"weather": {"url": "https://weather.example/mcp", "description": "Weather", "tools": ["forecast"]}}
}"""


async def test_index_gauges_and_endpoints(indexer: Indexer) -> None:
    parsed = parse_catalog(CATALOG)
    await indexer.load_catalog("ns/catalog", parsed.entries, parsed.warnings)
    tools = [{"name": "forecast", "description": "Weather forecast", "inputSchema": {"type": "object"}}]
    await indexer.apply_workload(
        WorkloadSpec(
            workload_name="ns/weather",
            name="weather",
            url="https://weather.example/mcp",
            status=WorkloadStatus.RUNNING,
            tools=tools,
        )
    )
    await indexer.apply_workload(
        WorkloadSpec(
            workload_name="ns/pg", name="pg", package="ghcr.io/acme/pg-mcp:2", status=WorkloadStatus.STOPPED, tools=[]
        )
    )

    m = Metrics()
    m.watch_embedder(indexer.embedder)
    async with MetricsServer(m, host="127.0.0.1", port=0, index=IndexCounts(indexer.engine, ttl=0)) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert await get(f"{base}/readyz") == (503, "not ready: the first reconcile pass is not done\n")
        m.set_ready()
        assert (await get(f"{base}/readyz"))[0] == 200

        status, body = await get(f"{base}/metrics")
        assert status == 200
        s = samples(body)
        assert s[("mcp_optimizer_workload_servers", (("status", "RUNNING"),))] == 1
        assert s[("mcp_optimizer_workload_servers", (("status", "STOPPED"),))] == 1
        assert s[("mcp_optimizer_workload_servers", (("status", "ERROR"),))] == 0
        assert s[("mcp_optimizer_workload_tools", (("status", "RUNNING"),))] == 1
        assert s[("mcp_optimizer_registry_servers", (("catalog", "ns/catalog"),))] == 2
        assert s[("mcp_optimizer_registry_tools", (("catalog", "ns/catalog"),))] == 3
        assert s[("mcp_optimizer_ready", ())] == 1
        assert s[("mcp_optimizer_embedded_texts_total", ())] > 0

        # Deleting the catalog drops its series at the next scrape.
        await indexer.delete_catalog("ns/catalog")
        s = samples((await get(f"{base}/metrics"))[1])
        assert ("mcp_optimizer_registry_servers", (("catalog", "ns/catalog"),)) not in s


async def test_start_metrics_server_helper(indexer: Indexer) -> None:
    server = await start_metrics_server(Metrics(), host="127.0.0.1", port=0, engine=indexer.engine)
    try:
        status, body = await get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 200 and "mcp_optimizer_workload_servers" in body
    finally:
        await server.stop()


def test_embedding_duration_is_the_models_real_time(embedder: Embedder) -> None:
    # It used to stay at 0: nothing fed the histogram. The embedder now reports every call that
    # runs the model; cache hits do not run it and are not counted.
    m = Metrics()
    m.watch_embedder(embedder)
    try:
        before = embedder.seconds_embedding
        texts = [f"measure embedding time {i} {id(m)}" for i in range(40)]
        embedder.embed(texts)
        embedder.embed(texts)  # all cached
        spent = embedder.seconds_embedding - before
        s = samples(m.render().decode())
        assert s[("mcp_optimizer_embedding_duration_seconds_count", ())] == 1
        assert s[("mcp_optimizer_embedding_duration_seconds_sum", ())] == pytest.approx(spent)
        assert spent > 0.001  # 40 texts through the real model take milliseconds at least
    finally:
        embedder.observers.remove(m.observe_embedding)
