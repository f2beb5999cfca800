"""Every acceptance scenario of SPEC.md (S1.1 to S3.7) on a real index file with the real model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import numpy as np
import pytest
from sqlalchemy import text

from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.records import WorkloadServerRecord
from mcp_optimizer.embeddings import Embedder, EmbeddingError, from_bytes, mean_pool
from mcp_optimizer.embeddings.model import Vector
from mcp_optimizer.embeddings.texts import text_hash, tool_embedding_text
from mcp_optimizer.ingest import DuplicateRegistryServersError, Indexer

from .helpers import entry, tool, workload

GITHUB_IMAGE = "ghcr.io/github/github-mcp-server"
GITHUB_TOOLS = [tool("create_issue", "Create a new issue in a GitHub repository", title="Issue title"),
                tool("list_pull_requests", "List pull requests of a repository")]


async def count(indexer: Indexer, sql: str, **params: object) -> int:
    async with indexer.engine.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one())


def stored_vector(embedding: bytes | None) -> Vector:
    """A stored embedding as floats; fails when none was stored."""
    assert embedding is not None
    return from_bytes(embedding)


async def workload_row(indexer: Indexer, name: str) -> WorkloadServerRecord:
    row = await indexer.workloads.get_by_workload_name(name)
    assert row is not None
    return row


async def tool_embeddings(indexer: Indexer, name: str) -> dict[str, bytes | None]:
    row = await workload_row(indexer, name)
    return {t.name: t.details_embedding for t in await indexer.workload_tools.list_by_server(row.id)}


# --- Story 1: registry and workload data are kept apart ---------------------------------------


async def test_s1_1_remote_registry_server_stored_by_url_with_tools(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("notion", url="https://mcp.notion.com/mcp", tools=["search", "fetch"])])
    [row] = await indexer.registry.get_by_url("HTTPS://MCP.notion.com:443/mcp/")
    assert (row.name, row.remote, row.url) == ("notion", True, "https://mcp.notion.com/mcp")
    assert await indexer.registry_tools.count_by_server(row.id) == 2
    assert await count(indexer, "SELECT count(*) FROM registry_tool_vectors") == 2
    assert await count(indexer, "SELECT count(*) FROM registry_tool_fts") == 2
    assert await count(indexer, "SELECT count(*) FROM registry_server_vector WHERE server_id = :i", i=row.id) == 1
    assert await count(indexer, "SELECT count(*) FROM mcpservers_workload") == 0


async def test_s1_2_container_registry_server_stored_by_package(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=f"{GITHUB_IMAGE}:v1.0.0", tools=["create_issue"])])
    [row] = await indexer.registry.get_by_package(f"{GITHUB_IMAGE}:latest")
    assert (row.name, row.remote, row.package) == ("github", False, f"{GITHUB_IMAGE}:v1.0.0")
    assert await indexer.registry_tools.count_by_server(row.id) == 1
    assert await count(indexer, "SELECT count(*) FROM tools_workload") == 0


async def test_s1_3_workload_server_stored_by_workload_name(indexer: Indexer) -> None:
    result = await indexer.apply_workload(workload("ns/github", package=GITHUB_IMAGE, tools=GITHUB_TOOLS))
    assert result.tool_count == 2 and result.tools_embedded == 2
    row = await workload_row(indexer, "ns/github")
    assert row.name == "github" and row.status == "RUNNING"
    assert await count(indexer, "SELECT count(*) FROM tools_workload") == 2
    assert await count(indexer, "SELECT count(*) FROM workload_tool_vectors") == 2
    assert await count(indexer, "SELECT count(*) FROM workload_tool_fts") == 2
    assert await count(indexer, "SELECT count(*) FROM mcpservers_registry") == 0


async def test_s1_4_deleting_registry_server_keeps_workloads(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=GITHUB_IMAGE, tools=["create_issue"]),
                                     entry("other", package="ghcr.io/x/other", tools=["a"])])
    await indexer.apply_workload(workload("ns/gh", package=GITHUB_IMAGE, tools=GITHUB_TOOLS))
    await indexer.load_catalog("c", [entry("other", package="ghcr.io/x/other", tools=["a"])])
    assert await count(indexer, "SELECT count(*) FROM mcpservers_registry") == 1
    assert await count(indexer, "SELECT count(*) FROM tools_registry") == 1
    assert await count(indexer, "SELECT count(*) FROM registry_tool_vectors") == 1
    assert await count(indexer, "SELECT count(*) FROM registry_tool_fts") == 1
    row = await workload_row(indexer, "ns/gh")
    assert row.registry_server_id is None
    assert await count(indexer, "SELECT count(*) FROM tools_workload") == 2


async def test_s1_5_deleting_workload_keeps_registry(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=GITHUB_IMAGE, tools=["create_issue"])])
    await indexer.apply_workload(workload("ns/gh", package=GITHUB_IMAGE, tools=GITHUB_TOOLS))
    assert await indexer.delete_workload("ns/gh")
    for table in ("mcpservers_workload", "tools_workload", "workload_tool_vectors", "workload_tool_fts",
                  "workload_server_vector"):
        assert await count(indexer, f"SELECT count(*) FROM {table}") == 0, table
    assert await count(indexer, "SELECT count(*) FROM mcpservers_registry") == 1
    assert await count(indexer, "SELECT count(*) FROM tools_registry") == 1
    assert not await indexer.delete_workload("ns/gh")


# --- Story 2: workloads find their registry entry --------------------------------------------


async def test_s2_1_remote_workload_links_by_url_and_inherits(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("notion", url="https://mcp.notion.com/mcp",
                                           description="Notion workspace pages and databases")])
    result = await indexer.apply_workload(workload("ns/n", url="https://MCP.NOTION.COM/mcp/", tools=[tool("search")]))
    assert result.registry_server_name == "notion" and result.registry_catalog == "c"
    row = await workload_row(indexer, "ns/n")
    [registry] = await indexer.registry.get_by_url("https://mcp.notion.com/mcp")
    assert row.description == "Notion workspace pages and databases"
    assert row.server_embedding == registry.server_embedding
    assert row.embedding_context == "notion"


async def test_s2_2_container_workload_links_by_package_across_tags(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=f"{GITHUB_IMAGE}:v0.1.0")])
    result = await indexer.apply_workload(
        workload("ns/gh", package=f"{GITHUB_IMAGE}@sha256:{'a' * 64}", tools=GITHUB_TOOLS, name="my-github"))
    assert result.registry_server_name == "github"
    row = await workload_row(indexer, "ns/gh")
    [registry] = await indexer.registry.get_by_package(GITHUB_IMAGE)
    assert row.server_embedding == registry.server_embedding
    # The registry name is the context of the tool embeddings.
    stored = await indexer.workload_tools.list_by_server(row.id)
    assert {t.embedding_hash for t in stored} == {text_hash(tool_embedding_text("github", t)) for t in GITHUB_TOOLS}


async def test_matching_never_crosses_types(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("remote-one", url="https://example.com/mcp")])
    # A container whose image string happens to look like the URL's host must not match.
    result = await indexer.apply_workload(workload("ns/x", package="example.com/mcp", tools=[tool("a")]))
    assert result.registry_server_name is None


async def test_s2_3_unlinked_workload_mean_pools_its_tools(indexer: Indexer, embedder: Embedder) -> None:
    result = await indexer.apply_workload(workload("ns/solo", package="ghcr.io/me/solo", tools=GITHUB_TOOLS))
    assert result.registry_server_name is None
    row = await workload_row(indexer, "ns/solo")
    assert "solo" in row.description and "create_issue" in row.description
    expected = mean_pool(embedder.embed([tool_embedding_text("solo", t) for t in GITHUB_TOOLS]))
    assert np.allclose(stored_vector(row.server_embedding), expected, atol=1e-6)
    assert row.embedding_context == "solo"


async def test_s2_4_several_workloads_link_to_one_registry_server(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=GITHUB_IMAGE)])
    for i in range(3):
        await indexer.apply_workload(workload(f"ns{i}/gh", package=f"{GITHUB_IMAGE}:v{i}", tools=GITHUB_TOOLS))
    [registry] = await indexer.registry.list()
    linked = await indexer.workloads.list_servers_by_registry(registry.id)
    assert [w.workload_name for w in linked] == ["ns0/gh", "ns1/gh", "ns2/gh"]


async def test_s2_5_duplicate_matches_fail_naming_every_entry(indexer: Indexer) -> None:
    await indexer.load_catalog("a", [entry("heroku", package="ghcr.io/h/heroku:1"),
                                     entry("heroku-mcp-server", package="ghcr.io/h/heroku:2")])
    await indexer.load_catalog("b", [entry("heroku", package="ghcr.io/h/heroku")])
    with pytest.raises(DuplicateRegistryServersError) as info:
        await indexer.apply_workload(workload("ns/h", package="ghcr.io/h/heroku:3", tools=[tool("deploy")]))
    message = str(info.value)
    for name in ("a/heroku", "a/heroku-mcp-server", "b/heroku"):
        assert name in message
    assert sorted(info.value.matches) == [("a", "heroku"), ("a", "heroku-mcp-server"), ("b", "heroku")]
    # Kept, visible, and out of search until resolved.
    row = await workload_row(indexer, "ns/h")
    assert row.status == "ERROR" and "3 registry entries match" in (row.status_reason or "")
    assert row.registry_server_id is None


async def test_duplicates_resolved_by_pin_and_by_catalog_fix(indexer: Indexer) -> None:
    await indexer.load_catalog("a", [entry("heroku", package="ghcr.io/h/heroku"),
                                     entry("heroku-mcp-server", package="ghcr.io/h/heroku")])
    with pytest.raises(DuplicateRegistryServersError):
        await indexer.apply_workload(workload("ns/h", package="ghcr.io/h/heroku", tools=[tool("deploy")]))
    # Fixing the catalog re-matches the workload and clears the error.
    result = await indexer.load_catalog("a", [entry("heroku", package="ghcr.io/h/heroku")])
    [rematched] = result.rematched
    assert rematched.status == WorkloadStatus.RUNNING and rematched.registry_server_name == "heroku"
    # A pin picks one entry even when aliases exist.
    await indexer.load_catalog("a", [entry("heroku", package="ghcr.io/h/heroku"),
                                     entry("heroku-mcp-server", package="ghcr.io/h/heroku")])
    pinned = await indexer.apply_workload(workload("ns/p", package="ghcr.io/h/heroku", tools=[tool("deploy")],
                                                   ref=("a", "heroku-mcp-server")))
    assert pinned.registry_server_name == "heroku-mcp-server" and pinned.status == WorkloadStatus.RUNNING


async def test_pin_of_the_wrong_type_is_ignored_and_the_workload_matched_by_its_image(indexer: Indexer) -> None:
    # A container server can never be a remote entry: the pin is a mistake in registry metadata,
    # which must not take a working server out of search. It is reported, and the workload is
    # matched as if unpinned.
    await indexer.load_catalog("a", [entry("remote", url="https://r.example/mcp"),
                                     entry("c", package="ghcr.io/c/c:1.0")])
    result = await indexer.apply_workload(workload("ns/c", package="ghcr.io/c/c", tools=[tool("x")],
                                                   ref=("a", "remote")))
    assert result.status == WorkloadStatus.RUNNING and result.error is None
    assert result.registry_server_name == "c"
    assert result.registry_note is not None and result.registry_note.code == "RegistryRefInvalid"
    assert "container server but its pinned registry entry a/remote is a remote" in result.registry_note.message
    assert (await workload_row(indexer, "ns/c")).status == "RUNNING"
    # With no entry of its own kind it stays searchable, unlinked.
    other = await indexer.apply_workload(workload("ns/d", package="ghcr.io/d/d", tools=[tool("y")],
                                                  ref=("a", "remote")))
    assert other.status == WorkloadStatus.RUNNING and other.registry_server_name is None
    assert other.registry_note is not None and other.registry_note.code == "RegistryRefInvalid"


async def test_pin_to_missing_entry_links_when_it_appears(indexer: Indexer) -> None:
    result = await indexer.apply_workload(workload("ns/c", package="ghcr.io/c/c", tools=[tool("x")], ref=("a", "c")))
    assert result.registry_server_name is None and result.registry_note is not None
    assert result.registry_note.code == "RegistryRefNotFound" and "not found" in result.registry_note.message
    load = await indexer.load_catalog("a", [entry("c", package="ghcr.io/other/image")])
    assert [r.registry_server_name for r in load.rematched] == ["c"]


class FailingEmbedder:
    """Stands in for a model whose runtime fails: a fault the real model does not produce on demand."""

    async def aembed(self, texts: Sequence[str], *, query: bool = False) -> NoReturn:
        raise EmbeddingError("embedding failed: onnxruntime out of memory")

    async def aembed_one(self, text: str, *, query: bool = False) -> NoReturn:
        raise EmbeddingError("embedding failed: onnxruntime out of memory")


async def test_s2_6_embedding_failure_still_creates_workload_with_error_status(indexer: Indexer) -> None:
    real = indexer.embedder
    indexer.embedder = FailingEmbedder()  # type: ignore[assignment]
    result = await indexer.apply_workload(workload("ns/solo", package="ghcr.io/me/solo", tools=GITHUB_TOOLS))
    assert result.status == WorkloadStatus.ERROR and isinstance(result.error, EmbeddingError)
    row = await workload_row(indexer, "ns/solo")
    assert row.status == "ERROR" and "out of memory" in (row.status_reason or "")
    assert await count(indexer, "SELECT count(*) FROM tools_workload") == 2
    # A status change from the cluster does not hide the index error ...
    await indexer.set_workload_status("ns/solo", WorkloadStatus.RUNNING)
    assert (await workload_row(indexer, "ns/solo")).status == "ERROR"
    # ... and a later successful ingestion clears it.
    indexer.embedder = real
    result = await indexer.apply_workload(workload("ns/solo", package="ghcr.io/me/solo", tools=GITHUB_TOOLS))
    assert result.status == WorkloadStatus.RUNNING and result.tools_embedded == 2


# --- Story 3: links stay stable while things change -------------------------------------------


async def _linked(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=GITHUB_IMAGE, tools=["create_issue"])])
    await indexer.apply_workload(workload("ns/gh", package=GITHUB_IMAGE, tools=GITHUB_TOOLS))


async def test_s3_1_tools_added_keep_link(indexer: Indexer) -> None:
    await _linked(indexer)
    before = await workload_row(indexer, "ns/gh")
    result = await indexer.apply_workload(
        workload("ns/gh", package=GITHUB_IMAGE, tools=[*GITHUB_TOOLS, tool("merge_pull_request")]))
    after = await workload_row(indexer, "ns/gh")
    assert result.tools_embedded == 1  # only the new tool
    assert after.registry_server_id == before.registry_server_id
    assert after.server_embedding == before.server_embedding and after.description == before.description


async def test_s3_2_tools_removed_keep_link(indexer: Indexer) -> None:
    await _linked(indexer)
    before = await workload_row(indexer, "ns/gh")
    result = await indexer.apply_workload(workload("ns/gh", package=GITHUB_IMAGE, tools=GITHUB_TOOLS[:1]))
    after = await workload_row(indexer, "ns/gh")
    assert result.tools_embedded == 0 and result.tool_count == 1
    assert after.registry_server_id == before.registry_server_id
    assert after.server_embedding == before.server_embedding
    assert await count(indexer, "SELECT count(*) FROM workload_tool_vectors") == 1
    assert await count(indexer, "SELECT count(*) FROM workload_tool_fts") == 1


async def test_s3_3_registry_deleted_workload_falls_back(indexer: Indexer, embedder: Embedder) -> None:
    await _linked(indexer)
    await indexer.delete_catalog("c")
    row = await workload_row(indexer, "ns/gh")
    assert row.registry_server_id is None and row.registry_server_name is None
    assert row.description.startswith("MCP server gh")
    # Re-matched after the catalog change: tools now use the workload's own name as context.
    expected = mean_pool(embedder.embed([tool_embedding_text("gh", t) for t in GITHUB_TOOLS]))
    assert np.allclose(stored_vector(row.server_embedding), expected, atol=1e-6)


async def test_registry_delete_op_alone_mean_pools_without_the_model(indexer: Indexer) -> None:
    await _linked(indexer)
    [registry] = await indexer.registry.list()
    stored = await tool_embeddings(indexer, "ns/gh")
    assert indexer.embedder is not None
    embedded = indexer.embedder.texts_embedded
    unlinked = await indexer.delete_registry_servers([registry.id])
    assert len(unlinked) == 1
    row = await workload_row(indexer, "ns/gh")
    expected = mean_pool([stored_vector(v) for v in stored.values()])
    assert np.allclose(stored_vector(row.server_embedding), expected, atol=1e-6)
    # One commit, before any re-match: the entry is gone and nothing of it is left on the
    # workload (link, description, vector), and the model was not called.
    assert unlinked == [row.id] and indexer.embedder.texts_embedded == embedded
    assert await indexer.registry.get_by_id(registry.id) is None
    assert row.registry_server_id is None and row.registry_catalog is None
    assert row.description == "MCP server gh with tools: create_issue, list_pull_requests"
    assert row.server_embedding != registry.server_embedding
    assert await count(indexer, "SELECT count(*) FROM workload_server_vector WHERE server_id = :i", i=row.id) == 1


async def test_s3_4_registry_entry_appearing_later_links(indexer: Indexer) -> None:
    await indexer.apply_workload(workload("ns/gh", package=GITHUB_IMAGE, tools=GITHUB_TOOLS))
    result = await indexer.load_catalog("c", [entry("github", package=f"{GITHUB_IMAGE}:v2")])
    assert [(r.workload_name, r.registry_server_name) for r in result.rematched] == [("ns/gh", "github")]
    row = await workload_row(indexer, "ns/gh")
    assert row.embedding_context == "github"


async def test_s3_5_registry_tool_changes_do_not_touch_workloads(indexer: Indexer) -> None:
    await _linked(indexer)
    before = await workload_row(indexer, "ns/gh")
    embeddings = await tool_embeddings(indexer, "ns/gh")
    assert indexer.embedder is not None
    embedded_before = indexer.embedder.texts_embedded
    result = await indexer.load_catalog(
        "c", [entry("github", package=GITHUB_IMAGE, tools=["create_issue", "fork_repository"])])
    assert result.updated == ["github"]
    assert all(r.tools_embedded == 0 for r in result.rematched)
    after = await workload_row(indexer, "ns/gh")
    assert await tool_embeddings(indexer, "ns/gh") == embeddings
    assert after.registry_server_id == before.registry_server_id
    # Only the registry's new tool (and its changed server text, if any) was embedded.
    assert indexer.embedder.texts_embedded - embedded_before <= 2


async def test_s3_6_registry_rename_reembeds_linked_tools(indexer: Indexer) -> None:
    await _linked(indexer)
    before = await tool_embeddings(indexer, "ns/gh")
    result = await indexer.load_catalog("c", [entry("github-official", package=GITHUB_IMAGE, tools=["create_issue"])])
    assert result.renamed == [("github", "github-official")] and not result.removed
    [rematched] = result.rematched
    assert rematched.registry_server_name == "github-official" and rematched.tools_embedded == 2
    row = await workload_row(indexer, "ns/gh")
    assert row.embedding_context == "github-official"
    after = await tool_embeddings(indexer, "ns/gh")
    assert all(after[name] != before[name] for name in before)


async def test_s3_7_reingest_with_new_package_updates_in_place_and_relinks(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=GITHUB_IMAGE), entry("gitlab", package="ghcr.io/gl/gl")])
    await indexer.apply_workload(workload("ns/x", package=GITHUB_IMAGE, tools=GITHUB_TOOLS))
    before = await workload_row(indexer, "ns/x")
    result = await indexer.apply_workload(workload("ns/x", package="ghcr.io/gl/gl:1", tools=GITHUB_TOOLS))
    after = await workload_row(indexer, "ns/x")
    assert after.id == before.id and after.package == "ghcr.io/gl/gl:1"
    assert result.registry_server_name == "gitlab"
    # Switching to a URL makes it remote and unlinked.
    result = await indexer.apply_workload(workload("ns/x", url="https://x.example/mcp", tools=GITHUB_TOOLS))
    assert result.registry_server_name is None and (await workload_row(indexer, "ns/x")).remote


async def test_unchanged_catalog_reload_embeds_nothing(indexer: Indexer) -> None:
    entries = [entry(f"s{i}", package=f"ghcr.io/x/s{i}", tools=[f"t{i}a", f"t{i}b"]) for i in range(20)]
    first = await indexer.load_catalog("c", entries)
    assert first.texts_embedded == 60
    assert indexer.embedder is not None
    embedded = indexer.embedder.texts_embedded
    again = await indexer.load_catalog("c", entries)
    assert again.texts_embedded == 0 and len(again.unchanged) == 20
    assert indexer.embedder.texts_embedded == embedded


async def test_image_tag_bump_reuses_stored_tool_embeddings(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("s", package="ghcr.io/x/s:1", tools=["a", "b", "c"])])
    result = await indexer.load_catalog("c", [entry("s", package="ghcr.io/x/s:2", tools=["a", "b", "c"])])
    assert result.updated == ["s"] and result.texts_embedded == 0


async def test_registry_delete_falls_back_every_linked_workload(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [entry("github", package=GITHUB_IMAGE)])
    toolsets = {f"ns{i}/gh": [tool(f"only_in_{i}", f"Tool number {i}"), *GITHUB_TOOLS[: i % 2 + 1]]
                for i in range(4)}
    for name, tools in toolsets.items():
        await indexer.apply_workload(workload(name, package=GITHUB_IMAGE, tools=tools))
    await indexer.apply_workload(workload("ns/empty", package=GITHUB_IMAGE, tools=[]))
    stored = {name: await tool_embeddings(indexer, name) for name in toolsets}
    [registry] = await indexer.registry.list()
    unlinked = await indexer.delete_registry_servers([registry.id])
    assert len(unlinked) == 5
    for name in toolsets:
        row = await workload_row(indexer, name)
        assert row.registry_server_id is None and f"only_in_{name[2]}" in row.description
        expected = mean_pool([stored_vector(v) for v in stored[name].values()])
        assert np.allclose(stored_vector(row.server_embedding), expected, atol=1e-6)
        assert await count(indexer, "SELECT count(*) FROM workload_server_vector WHERE server_id = :i", i=row.id) == 1
    empty = await workload_row(indexer, "ns/empty")
    assert empty.server_embedding is None and empty.description == "MCP server empty"
    assert await count(indexer, "SELECT count(*) FROM workload_server_vector WHERE server_id = :i", i=empty.id) == 0


async def test_tools_that_only_run_as_tasks_are_not_offered(indexer: Indexer) -> None:
    # server-everything's simulate-research-query declares execution.taskSupport "required": a
    # plain tools/call is refused, so call_tool could never run it and search must not offer it.
    research = {**tool("simulate_research_query", "Research a topic in depth and write a report"),
                "execution": {"taskSupport": "required"}}
    optional = {**tool("summarize", "Summarize a research report"), "execution": {"taskSupport": "optional"}}
    result = await indexer.apply_workload(workload("ns/everything", url="http://e.example/mcp",
                                                   tools=[research, optional, tool("echo", "Echo a message")]))
    assert result.task_only_tools == ["simulate_research_query"]
    assert result.tool_count == 2
    async with indexer.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT name FROM tools_workload ORDER BY name"))).scalars().all()
    assert stored == ["echo", "summarize"]
    # A re-match (a catalog change) keeps it out: the stored tools are the callable ones.
    await indexer.load_catalog("a", [entry("everything", url="http://e.example/mcp")])
    [rematched] = (await indexer.load_catalog("a", [entry("everything", url="http://e.example/mcp",
                                                          description="changed")])).rematched
    assert rematched.tool_count == 2
