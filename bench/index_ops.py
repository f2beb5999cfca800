"""Index operations at scale: SC-1..SC-4, SC-8, SC-10, SC-12 of ../shared/SPEC.md.

Builds an index of 1000 registry servers and 1000 workload servers (``--quick``: 200 + 200)
generated from the real catalogs with a fixed seed (see :mod:`bench.common`):

* registry servers: variants of the 102 ToolHive entries (at most 4 of their tool names each),
  except the first ``targets`` ones, which get 20 real tool definitions each;
* workloads: 5 linked to each target (20 tools each), then half the rest linked one-to-one to
  other registry servers under another tag / URL spelling (3 tools), the others unlisted (3 tools).

Then times, each operation many times on the full index (restoring what it changed, untimed,
between samples so that every sample sees the same index):

* SC-1/SC-2 cold ingest against the model alone on the same unique texts, and the unchanged reload;
* SC-3 ``Indexer.delete_registry_servers`` of a target (20 tools, 5 linked workloads that fall back);
* SC-4 ``Indexer.delete_workload`` of a workload with 20 tools;
* SC-8 ``Indexer.unlink_workloads`` (unlink + mean-pool) of a 20-tool workload;
* SC-10 renaming a target in its catalog (``load_catalog``): 5 workloads re-embed 20 tools each;
* SC-12 ``apply_workload`` with the image changed (re-match, same tools).
"""

from __future__ import annotations

import asyncio
import random
import statistics
from dataclasses import replace

from bench.common import (
    SEED,
    RecordingEmbedder,
    Report,
    base_parser,
    load_embedder,
    make_workload,
    model_alone_seconds,
    ms_summary,
    percentile,
    print_header,
    sample_tools,
    scale_catalog,
    stopwatch,
    temp_index,
    uncached,
)
from mcp_optimizer.catalog import CatalogEntry
from mcp_optimizer.ingest import Indexer, WorkloadSpec

CATALOG = "bench"
LINKED_PER_TARGET = 5
TARGET_TOOLS = 20
OTHER_TOOLS = 3
#: Registry entries keep at most this many of their ToolHive tool names (names only, as there).
REGISTRY_TOOLS = 4


def build_data(servers: int, targets: int) -> tuple[list[CatalogEntry], list[WorkloadSpec]]:
    rng = random.Random(SEED)
    entries = scale_catalog(servers, seed=SEED, rich=targets, rich_tools=TARGET_TOOLS)
    entries = [e if i < targets else e.model_copy(update={"tools": e.tools[:REGISTRY_TOOLS]})
               for i, e in enumerate(entries)]
    specs = []
    for i in range(servers):
        if i < targets * LINKED_PER_TARGET:
            link: CatalogEntry | None = entries[i // LINKED_PER_TARGET]
            tools = sample_tools(rng, TARGET_TOOLS)
        elif i % 2 == 0:
            link = entries[i]
            tools = sample_tools(rng, OTHER_TOOLS)
        else:
            link = None
            tools = sample_tools(rng, OTHER_TOOLS)
        specs.append(make_workload(i, tools, link=link, respell=i))
    return entries, specs


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def cold_ingest(indexer: Indexer, entries: list[CatalogEntry], specs: list[WorkloadSpec],
                      report: Report) -> None:
    embedder = indexer.embedder
    assert isinstance(embedder, RecordingEmbedder)
    embedder.recorded.clear()
    seconds_before = embedder.seconds_embedding
    with stopwatch() as t_catalog:
        result = await indexer.load_catalog(CATALOG, entries)
    assert len(result.added) == len(entries) and not result.warnings, result.warnings
    linked = 0
    with stopwatch() as t_workloads:
        for spec in specs:
            res = await indexer.apply_workload(spec)
            assert res.error is None, res.error
            linked += res.registry_server_name is not None
    total = t_catalog[0] + t_workloads[0]
    texts = list(embedder.recorded)
    in_model = embedder.seconds_embedding - seconds_before
    alone = model_alone_seconds(embedder, texts)
    ratio = total / alone
    # total - in_model is the index's own work (plans, SQL); in_model - alone is how the ingest
    # calls the model (one call per workload, each batch padded to its longest text) versus
    # one length-sorted call over everything.
    report.add(f"SC-1/2 cold ingest {len(entries)} registry + {len(specs)} workloads ({linked} linked)",
               f"{total:.1f} s ({t_catalog[0]:.1f} s catalog + {t_workloads[0]:.1f} s workloads), "
               f"{len(texts)} unique texts, {in_model:.1f} s of it in the model, {total - in_model:.1f} s "
               f"index work; model alone on the same texts in one call {alone:.1f} s "
               f"({len(texts) / alone:.0f} texts/s) = {ratio:.2f}x",
               "no conflicts; <= 1.25x model alone", ratio <= 1.25)
    embedder.recorded.clear()
    with stopwatch() as t:
        again = await indexer.load_catalog(CATALOG, entries)
    report.add("SC-1 reload the unchanged catalog", f"{t[0]:.2f} s, {again.texts_embedded} texts embedded, "
               f"{len(again.unchanged)} unchanged", "< 2 s, 0 embeddings",
               t[0] < 2 and again.texts_embedded == 0 and not embedder.recorded)
    with stopwatch() as t:
        for spec in specs:
            await indexer.apply_workload(spec)
    report.add("re-apply every unchanged workload (operator resync)",
               f"{t[0]:.2f} s for {len(specs)} ({t[0] / len(specs) * 1000:.2f} ms each), "
               f"{len(embedder.recorded)} texts embedded")


async def delete_registry(indexer: Indexer, entries: list[CatalogEntry], targets: int, reps: int,
                          report: Report) -> None:
    samples = []
    for rep in range(reps):
        for i in range(targets):
            row = await indexer.registry.get_by_name(CATALOG, entries[i].name)
            assert row is not None
            linked = await indexer.workloads.list_servers_by_registry(row.id)
            assert len(linked) == LINKED_PER_TARGET, (rep, i, len(linked))
            with stopwatch() as t:
                unlinked = await indexer.delete_registry_servers([row.id])
            samples.append(t[0])
            assert len(unlinked) == LINKED_PER_TARGET
            await indexer.load_catalog(CATALOG, entries)  # restore: re-adds it and re-links the 5
    report.add(f"SC-3 delete a registry server ({TARGET_TOOLS} tools, {LINKED_PER_TARGET} linked workloads fall "
               "back)", ms_summary(samples), "p99 < 10 ms (promised < 100 ms)", percentile(samples, 99) < 0.010)
    # The operator deletes through a catalog change: the whole catalog is re-planned.
    samples = []
    for i in range(min(targets, 5)):
        with stopwatch() as t:
            await indexer.load_catalog(CATALOG, entries[:i] + entries[i + 1:])
        samples.append(t[0])
        await indexer.load_catalog(CATALOG, entries)
    report.add(f"  same through a catalog change (load_catalog of {len(entries) - 1} entries, re-match)",
               ms_summary(samples))


async def delete_workload(indexer: Indexer, specs: list[WorkloadSpec], count: int, report: Report) -> None:
    samples = []
    for spec in specs[:count]:
        with stopwatch() as t:
            assert await indexer.delete_workload(spec.workload_name)
        samples.append(t[0])
        await indexer.apply_workload(spec)  # restore (embeddings come from the cache)
    report.add(f"SC-4 delete a workload server ({TARGET_TOOLS} tools)", ms_summary(samples),
               "p99 < 10 ms (promised < 100 ms)", percentile(samples, 99) < 0.010)


async def fallback(indexer: Indexer, specs: list[WorkloadSpec], count: int, report: Report) -> None:
    samples = []
    for spec in specs[:count]:
        row = await indexer.workloads.get_by_workload_name(spec.workload_name)
        assert row is not None and row.registry_server_id is not None
        with stopwatch() as t:
            await indexer.unlink_workloads([row.id])
        samples.append(t[0])
        after = await indexer.workloads.get_by_workload_name(spec.workload_name)
        assert after is not None and after.registry_server_id is None and after.server_embedding is not None
        await indexer.rematch_workloads([spec.workload_name])  # restore the link
    report.add(f"SC-8 fallback after unlink (mean-pool {TARGET_TOOLS} tool vectors)", ms_summary(samples),
               "p99 < 20 ms (promised < 200 ms)", percentile(samples, 99) < 0.020)


async def reingest(indexer: Indexer, specs: list[WorkloadSpec], entries: list[CatalogEntry], count: int,
                   report: Report) -> None:
    embedder = indexer.embedder
    assert embedder is not None
    samples = []
    before = embedder.texts_embedded
    for n, spec in enumerate(specs[:count]):
        assert spec.package is not None or spec.url is not None
        if spec.package is not None:
            changed = replace(spec, package=spec.package.rpartition(":")[0] + f":reingest-{n}")
        else:
            assert spec.url is not None
            changed = replace(spec, url=spec.url.rstrip("/") + "/" if not spec.url.endswith("/")
                              else spec.url.rstrip("/"))
        with stopwatch() as t:
            result = await indexer.apply_workload(changed)
        samples.append(t[0])
        assert result.registry_server_name == spec.name, (result.registry_server_name, spec.name)
    embedded = embedder.texts_embedded - before
    report.add(f"SC-12 re-ingest with a changed image tag / URL spelling (re-match, link kept, "
               f"{TARGET_TOOLS} tools)", f"{ms_summary(samples)}; {embedded} texts embedded",
               "p99 < 30 ms (promised < 300 ms)", percentile(samples, 99) < 0.030)
    # An identifier that now matches *another* registry server: the link moves, so the tools are
    # re-embedded with the new server's name as context (the model's time is the floor).
    samples, texts = [], 0
    pool = [e for e in entries[len(specs) // 2:] if not e.remote]
    for n, spec in enumerate(specs[:min(count, 20)]):
        target = pool[n % len(pool)]
        assert target.package is not None
        changed = replace(spec, url=None, package=target.package.rpartition(":")[0] + ":moved")
        before = embedder.texts_embedded
        with stopwatch() as t:
            result = await indexer.apply_workload(changed)
        samples.append(t[0])
        texts += embedder.texts_embedded - before
        assert result.registry_server_name == target.name
        await indexer.apply_workload(spec)  # restore
    report.add("  re-ingest with an image of another registry server (link moves, tools re-embedded)",
               f"{ms_summary(samples)}; {texts / len(samples):.0f} texts embedded each")


async def rename(indexer: Indexer, entries: list[CatalogEntry], count: int, report: Report) -> None:
    embedder = indexer.embedder
    assert isinstance(embedder, RecordingEmbedder)
    per_workload, floors, texts = [], [], []
    for n in range(count):
        old = entries[n]
        new = old.model_copy(update={"name": f"{old.name}-renamed"})
        entries[n] = new
        embedder.recorded.clear()
        with stopwatch() as t:
            result = await indexer.load_catalog(CATALOG, entries)
        assert result.renamed == [(old.name, new.name)], result.renamed
        relinked = [r for r in result.rematched if r.registry_server_name == new.name]
        assert len(relinked) == LINKED_PER_TARGET, len(relinked)
        # The new name is context for the registry entry's own 20 tools and its server text too,
        # and identical tools among the 5 workloads share a text: about 5 x 20 + 21 texts.
        per_workload.append(t[0] / LINKED_PER_TARGET)
        texts.append(len(embedder.recorded))
        floors.append(model_alone_seconds(embedder, embedder.recorded) / LINKED_PER_TARGET)
    report.add(f"SC-10 rename a registry server: re-embed a linked workload's {TARGET_TOOLS} tools "
               f"({LINKED_PER_TARGET} workloads per rename, catalog of {len(entries)} re-planned)",
               f"per workload {ms_summary(per_workload)}; {statistics.fmean(texts):.0f} texts per rename; "
               f"the model alone on the same texts: p50 {percentile(floors, 50) * 1000:.1f} ms per workload",
               "< 150 ms per workload (promised < 500 ms)", percentile(per_workload, 50) < 0.150)


async def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--servers", type=int, help="registry servers and workloads each (default 1000)")
    args = parser.parse_args()
    servers = args.servers or (200 if args.quick else 1000)
    targets = 5 if args.quick else 20
    reps = 1 if args.quick else 3
    print_header(f"Index operations, {servers} registry + {servers} workload servers", args)
    entries, specs = build_data(servers, targets)
    embedder = load_embedder()
    # The model's own speed on short texts, the floor of every embedding figure below.
    probe = [f"{spec.name}: {tool['name']}" for spec in specs[:50] for tool in (spec.tools or [])[:4]]
    probe_s = model_alone_seconds(uncached(embedder), probe)
    print(f"model speed on short texts: {len(probe) / probe_s:.0f} texts/s (batch size {embedder.batch_size})\n")
    report = Report()
    async with temp_index(embedder, backend=args.db) as indexer:
        await cold_ingest(indexer, entries, specs, report)
        target_specs = specs[:targets * LINKED_PER_TARGET]
        await delete_registry(indexer, entries, targets, reps, report)
        await delete_workload(indexer, target_specs, 100 if not args.quick else 20, report)
        await fallback(indexer, target_specs, 100 if not args.quick else 20, report)
        await reingest(indexer, target_specs, entries, 100 if not args.quick else 20, report)
        await rename(indexer, entries, targets if not args.quick else 3, report)
        async with indexer.engine.connect() as conn:
            from sqlalchemy import text

            counts = {t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
                      for t in ("mcpservers_registry", "tools_registry", "mcpservers_workload", "tools_workload")}
        print(f"\nindex at the end: {counts}")
    report.print_table()


if __name__ == "__main__":
    asyncio.run(main())
