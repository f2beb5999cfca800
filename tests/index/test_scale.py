"""SC-1/SC-2: 1000 registry and 1000 workload servers ingest without conflicts (timing lives in bench/)."""

from __future__ import annotations

import random

from sqlalchemy import text

from mcp_optimizer.ingest import Indexer

from .helpers import entry, tool, workload


async def test_thousand_registry_and_thousand_workload_servers(indexer: Indexer) -> None:
    rng = random.Random(7)
    verbs = ["list", "get", "create", "delete", "search", "update"]
    nouns = ["issue", "file", "page", "user", "record", "ticket", "image", "message"]
    entries = []
    for i in range(1000):
        tools = [f"{rng.choice(verbs)}_{rng.choice(nouns)}_{i}" for _ in range(2)]
        if i % 2:
            entries.append(entry(f"srv-{i}", url=f"https://srv{i}.example.com/mcp", tools=sorted(set(tools))))
        else:
            entries.append(entry(f"srv-{i}", package=f"ghcr.io/org/srv-{i}:1.{i}", tools=sorted(set(tools))))
    result = await indexer.load_catalog("scale", entries)
    assert len(result.added) == 1000 and not result.warnings
    again = await indexer.load_catalog("scale", entries)
    assert again.texts_embedded == 0 and len(again.unchanged) == 1000

    linked = 0
    for i in range(1000):
        # Half match a registry entry (another tag or URL spelling), half run something unlisted.
        # Even i: the workload runs a listed server under another tag or URL spelling (odd
        # registry indices are remote, even ones containers); odd i: an unlisted server.
        j = (i + 1 if i % 4 == 0 else i) if i % 2 == 0 else i + 5000
        spec = (workload(f"ns{i % 10}/w{i}", url=f"https://SRV{j}.example.com:443/mcp/", tools=[tool(f"t{i}")])
                if j % 2 else
                workload(f"ns{i % 10}/w{i}", package=f"ghcr.io/org/srv-{j}:latest", tools=[tool(f"t{i}")]))
        res = await indexer.apply_workload(spec)
        linked += res.registry_server_name is not None
    assert linked == 500
    async with indexer.engine.connect() as conn:
        counts = [(await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
                  for t in ("mcpservers_registry", "mcpservers_workload", "workload_tool_vectors")]
    assert counts == [1000, 1000, 1000]
