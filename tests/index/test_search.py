"""Hybrid search: RUNNING filter, scoping, relevance floor, and user text that must not break FTS5."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import ToolSearch, fts_query
from mcp_optimizer.ingest import Indexer

from .helpers import entry, tool, workload

TOOLS = {
    "github": [tool("create_issue", "Create a new issue in a GitHub repository", title="Issue title"),
               tool("list_pull_requests", "List open pull requests of a repository")],
    "weather": [tool("get_forecast", "Get the weather forecast for a city", city="City name"),
                tool("get_alerts", "Severe weather alerts for a US state", state="Two-letter state code")],
    "files": [tool("read_file", "Read the contents of a file from disk", path="Path of the file"),
              tool("write_file", "Write text to a file on disk", path="Path of the file", content="Text")],
}


@pytest.fixture
async def search(indexer: Indexer) -> ToolSearch:
    groups = {"github": "dev", "weather": "ops", "files": "dev"}
    for name, tools in TOOLS.items():
        await indexer.apply_workload(workload(f"ns-{groups[name]}/{name}", package=f"ghcr.io/x/{name}",
                                              tools=tools, group=groups[name]))
    return ToolSearch(indexer.engine, indexer.embedder)


async def test_finds_the_right_tool_first(search: ToolSearch) -> None:
    for query, expected in [("report a bug on github", "create_issue"),
                            ("will it rain in Paris tomorrow", "get_forecast"),
                            ("read the contents of config.yaml from disk", "read_file")]:
        hits = await search.find_tools(query, limit=3)
        assert hits[0].tool == expected, (query, [h.tool for h in hits])
        assert hits[0].score >= hits[-1].score


async def test_returns_schema_and_server(search: ToolSearch) -> None:
    [hit] = await search.find_tools("weather forecast for a city", limit=1)
    assert (hit.server, hit.server_name, hit.tool, hit.group) == ("ns-ops/weather", "weather", "get_forecast", "ops")
    assert hit.input_schema["properties"]["city"]["description"] == "City name"


@pytest.mark.parametrize("status", [WorkloadStatus.STOPPED, WorkloadStatus.ERROR])
async def test_only_running_servers_tools_are_returned(
    indexer: Indexer, search: ToolSearch, status: WorkloadStatus
) -> None:
    assert any(h.server == "ns-ops/weather" for h in await search.find_tools("weather forecast"))
    await indexer.set_workload_status("ns-ops/weather", status)
    for mode in ("hybrid", "vector", "bm25"):
        hits = await search.find_tools("weather forecast", mode=mode)
        assert all(h.server != "ns-ops/weather" for h in hits), mode
    assert all(h.server != "ns-ops/weather" for h in await search.running_tools())
    await indexer.set_workload_status("ns-ops/weather", WorkloadStatus.RUNNING)
    assert (await search.find_tools("weather forecast"))[0].server == "ns-ops/weather"


async def test_group_namespace_and_server_filters(search: ToolSearch) -> None:
    assert all(h.group == "dev" for h in await search.find_tools("weather forecast", groups=["dev"]))
    hits = await search.find_tools("weather forecast", groups=["ops"])
    assert hits[0].tool == "get_forecast" and all(h.group == "ops" for h in hits)
    hits = await search.find_tools("write text to a file", groups=["dev", "ops"])
    assert hits[0].tool == "write_file"
    assert await search.find_tools("weather forecast", groups=[]) == []
    hits = await search.find_tools("file", namespaces=["ns-ops"])
    assert all(h.namespace == "ns-ops" for h in hits)
    hits = await search.find_tools("file", server="ns-dev/files")
    assert {h.tool for h in hits} == {"read_file", "write_file"}
    assert await search.find_tools("file", server="nope/none") == []


async def test_query_no_tool_answers_returns_nothing(search: ToolSearch) -> None:
    assert await search.find_tools("the of and") == []
    assert await search.find_tools("   ") == []
    assert await search.find_tools("quantum chromodynamics lattice gauge simulation") == []


@pytest.mark.parametrize("query", [
    '"', '""', "'", "*", "NEAR(a b)", "a NEAR/2 b", "-file", "file -", "(", ")", "((weather",
    "title:weather", "weather AND OR NOT", "^file", "file*", "\\", "{weather}", "😀 weather", "日本語のファイル",
    "x" * 5000, "; DROP TABLE tools_workload; --",
])
async def test_user_text_never_breaks_fts(search: ToolSearch, query: str) -> None:
    for mode in ("hybrid", "bm25"):
        hits = await search.find_tools(query, mode=mode)
        assert isinstance(hits, list)
    assert await search.running_tools()  # the table is intact


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('NEAR("xy" AND *)') == '"near" OR "xy"'
    assert fts_query("the of and") == ""
    assert fts_query("read", "read", "file") == '"read" OR "file"'


def test_fts_query_drops_request_filler_but_keeps_words_that_matter() -> None:
    assert fts_query("Hi, could you please help me find the user with id 7 and give me their details?") == \
        '"find" OR "user" OR "id" OR "details"'
    assert fts_query("turn off the lights, not all of them") == '"turn" OR "off" OR "lights" OR "not" OR "all"'


async def test_a_clear_word_match_is_not_overturned_by_the_embedding(search: ToolSearch) -> None:
    """BM25 leads the fusion: the vector list breaks near-ties but cannot undo an exact match of
    the tool's own words (a weak embedder must not drag a lexical answer down)."""
    hits = await search.find_tools("list open pull requests", limit=2)
    assert hits[0].tool == "list_pull_requests" and hits[0].bm25_rank == 1
    # With no word in common the embedding alone decides.
    [hit] = await search.find_tools("will it rain tomorrow", limit=1)
    assert hit.tool == "get_forecast" and hit.bm25_rank is None and hit.vector_rank == 1


async def test_server_name_and_schema_words_are_searchable(indexer: Indexer) -> None:
    await indexer.apply_workload(workload("ns/acme-crm", package="ghcr.io/x/acme-crm", tools=[
        {"name": "getRecord", "description": "Fetch one record",
         "inputSchema": {"type": "object", "properties": {
             "unit": {"type": "string", "enum": ["fahrenheit", "celsius"]},
             "filter": {"type": "object", "properties": {"ownerEmail": {"description": "Owner mailbox"}}}}}},
    ]))
    search = ToolSearch(indexer.engine, indexer.embedder)
    for query in ("acme crm", "get record", "getRecord", "in fahrenheit", "owner email", "mailbox"):
        hits = await search.find_tools(query, mode="bm25")
        assert [h.tool for h in hits] == ["getRecord"], query


async def test_keywords_help_bm25(search: ToolSearch) -> None:
    hits = await search.find_tools("do the thing", keywords=["pull", "requests"], limit=1)
    assert hits[0].tool == "list_pull_requests"


async def test_registry_search_skips_running(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [
        entry("weather", package="ghcr.io/x/weather", description="Weather forecasts", tools=["get_forecast"]),
        entry("postgres", package="ghcr.io/x/pg", description="Query a PostgreSQL database", tools=["execute_sql"]),
    ])
    search = ToolSearch(indexer.engine, indexer.embedder)
    hits = await search.find_registry_servers("run a SQL query against postgres", limit=2)
    assert hits[0].name == "postgres" and "execute_sql" in hits[0].tools
    await indexer.apply_workload(workload("ns/pg", package="ghcr.io/x/pg:1", tools=[tool("execute_sql")]))
    assert "postgres" not in [h.name for h in await search.find_registry_servers("postgres sql database")]
    names = [h.name for h in await search.find_registry_servers("postgres sql database", exclude_running=False)]
    assert "postgres" in names


async def test_get_workload(indexer: Indexer, search: ToolSearch) -> None:
    info = await search.get_workload("ns-dev/files")
    assert info is not None and info.tool_names == ["read_file", "write_file"] and info.status == "RUNNING"
    assert await search.get_workload("missing") is None


async def test_registry_search_excludes_only_servers_running_in_scope(indexer: Indexer) -> None:
    await indexer.load_catalog("c", [
        entry("postgres", package="ghcr.io/x/pg", description="Query a PostgreSQL database", tools=["execute_sql"]),
    ])
    await indexer.apply_workload(workload("team-b/pg", package="ghcr.io/x/pg:1", tools=[tool("execute_sql")],
                                          group="b"))
    search = ToolSearch(indexer.engine, indexer.embedder)

    async def names(*, groups: Sequence[str] | None = None, namespaces: Sequence[str] | None = None) -> list[str]:
        hits = await search.find_registry_servers("postgres sql database", groups=groups, namespaces=namespaces)
        return [h.name for h in hits]

    assert "postgres" not in await names()  # runs somewhere
    assert "postgres" not in await names(groups=["b"])
    assert "postgres" in await names(groups=["a"])  # team A must not learn that team B runs it
    assert "postgres" in await names(groups=[])
    assert "postgres" in await names(namespaces=["team-a"])
