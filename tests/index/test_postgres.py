"""What only PostgreSQL has: its migrations, its keyword scoring being FTS5's BM25, its URL
errors, the HNSW setting, and what the SQLite-only machinery does there.

Every other index test runs on PostgreSQL too (``settings`` is parametrised, tests/support/backends.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_optimizer.config import Settings
from mcp_optimizer.db import migrate
from mcp_optimizer.db.backends import backend_of
from mcp_optimizer.db.engine import IndexOpenError, create_engine, describe_location
from mcp_optimizer.db.health import FaultKind, IndexFault, classify
from mcp_optimizer.db.models import Base, WorkloadStatus
from mcp_optimizer.db.search import BM25_COLUMN_WEIGHTS, ToolSearch, fts_words
from mcp_optimizer.db.virtual import WORKLOAD_TOOL_FTS
from mcp_optimizer.embeddings import FastEmbedder
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.mcp.tokens import tool_tokens
from tests.support import postgres
from tests.support.shared import model_path

from .helpers import entry, tool, workload

SIDE_TABLES = {"registry_server_vector", "registry_tool_vectors", "workload_server_vector", "workload_tool_vectors",
               "registry_tool_fts", "workload_tool_fts", "registry_tool_fts_terms", "workload_tool_fts_terms"}


@pytest.fixture
def database() -> Iterator[str]:
    url = postgres.fresh_database("pgonly")
    yield url
    postgres.drop_database(url)


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    made = create_engine(database)
    yield made
    await made.dispose()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await backend_of(engine).table_names(conn)


async def test_migrations_from_empty_to_head_match_the_models(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    await migrate.upgrade(engine)  # idempotent
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert await _tables(engine) == set(Base.metadata.tables) | SIDE_TABLES | {"alembic_version"}

    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={
            "include_name": lambda name, type_, parent: not (type_ == "table" and name in SIDE_TABLES)})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        assert (await conn.execute(text("SELECT extname FROM pg_extension WHERE extname = 'vector'"))).scalar()


async def test_downgrade_and_upgrade_round_trip(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "base"))
    assert await _tables(engine) <= {"alembic_version"}
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_downgrade_to_0002_and_back_keeps_rows_and_token_counts(database: str, embedder: FastEmbedder) -> None:
    """0003 backfills token estimates on PostgreSQL in Python (SQLite's json_object is SQLite's):
    the same numbers as mcp.tokens.tool_tokens."""
    settings = Settings(embedding_model_path=model_path()).with_index(database)
    index = await Indexer.open(settings, embedder)
    await index.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v2", tools=[
        tool("create_issue", "Create a GitHub issue — ünïcode"), tool("set_units", "Choose units", unit="a unit")]))
    async with index.engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "0002"))
    await index.close()
    upgraded = await Indexer.open(settings, embedder)
    try:
        async with upgraded.engine.connect() as conn:
            stored = (await conn.execute(text("SELECT details, token_count FROM tools_workload"))).all()
        assert len(stored) == 2
        for details, token_count in stored:
            details = json.loads(details) if isinstance(details, str) else details
            assert token_count == tool_tokens(details["name"], details["description"], details["inputSchema"])
        hits = await ToolSearch(upgraded.engine, embedder).find_tools("units", mode="bm25")
        assert [h.tool for h in hits] == ["set_units"]
    finally:
        await upgraded.close()


CORPUS = [
    tool("create_issue", "Create a new issue in a GitHub repository", title="The issue's title"),
    tool("list_issues", "List issues of a repository, filtered by state and labels", state="open or closed"),
    tool("search_code", "Search code across repositories", query="Search terms; supports qualifiers"),
    tool("get_weather", "Get the current weather for a city", city="City name, e.g. Paris"),
    tool("get_forecast", "Weather forecast for the next days in a city", days="How many days ahead"),
    tool("send_message", "Send a message to a Slack channel", channel="The channel", text="Message text"),
    tool("run_query", "Run a read-only SQL query against the PostgreSQL database", sql="The SQL statement"),
    tool("list_tables", "List the tables of the database schema", schema="Schema name"),
    tool("résumé_parse", "Parse a résumé (CV) into structured fields: naïve café-grade extraction"),
    tool("running_jobs", "Show jobs that are running, ran or will run; runs of runners"),
]
PHRASE_QUERY = "get_weather city"
QUERIES = ["create an issue on github", "weather in paris tomorrow", "run an SQL query on postgres",
           "list repository issues with label bug", "resume cafe naive", "running runs", "slack channel message",
           "get_weather city", "tables of the schema", "nothing matches this xyzzy"]


async def _keyword_scores(indexer: Indexer, query: str, weights: tuple[float, ...]) -> list[tuple[str, float]]:
    search = ToolSearch(indexer.engine, None, bm25_columns=weights)
    async with indexer.engine.connect() as conn:
        rows = await search.backend.keyword_hits(
            conn, WORKLOAD_TOOL_FTS, fts_words(query), weights, 50,
            [("tools_workload t", "t.id = f.rowid")], [], {}, columns="t.name")
    return [(str(row.name), float(row.score)) for row in rows]


@pytest.mark.parametrize("weights", [BM25_COLUMN_WEIGHTS, (1.0, 1.0, 1.0, 1.0), (0.5, 2.0, 0.7, 1.3)])
async def test_keyword_scores_are_fts5s_bm25(tmp_path: Path, database: str, weights: tuple[float, ...]) -> None:
    """The same tools on both databases: PostgreSQL's SQL BM25 over FTS5's terms gives FTS5's
    bm25() score for every hit, in the same order (stems, diacritics, repeated stems, column
    weights, a stopped server's tools counting in the statistics)."""
    answers = []
    for location in (tmp_path / "i.db", database):
        settings = Settings(search_mode="bm25").with_index(location)
        indexer = await Indexer.open(settings, None)
        try:
            await indexer.apply_workload(workload("ns/a", url="https://a.example/mcp", tools=CORPUS[:6]))
            await indexer.apply_workload(workload("ns/b", url="https://b.example/mcp", tools=CORPUS[6:]))
            await indexer.apply_workload(workload("ns/off", url="https://c.example/mcp", tools=CORPUS[:3],
                                                  status=WorkloadStatus.STOPPED))
            answers.append({q: await _keyword_scores(indexer, q, weights) for q in QUERIES})
        finally:
            await indexer.close()
    sqlite, pg = answers
    assert any(sqlite[q] for q in QUERIES) and not sqlite["nothing matches this xyzzy"]
    # A word FTS5's tokenizer splits ("get_weather") is an adjacent-token phrase in FTS5 and its
    # terms one by one here (postgres.py says why): same best hit, other scores.
    assert pg[PHRASE_QUERY][0][0] == sqlite[PHRASE_QUERY][0][0] == "get_weather"
    for query in (q for q in QUERIES if q != PHRASE_QUERY):
        assert [name for name, _ in pg[query]] == [name for name, _ in sqlite[query]], query
        expected = [score for _, score in sqlite[query]]
        assert [score for _, score in pg[query]] == pytest.approx(expected, abs=1e-6), query


async def test_a_bad_url_or_a_server_that_does_not_answer_is_one_clear_line() -> None:
    secret = "s3cr3t-pw"
    with pytest.raises(IndexOpenError) as bad_driver:
        create_engine(f"mysql+pymysql://u:{secret}@db.example/index")
    assert "mysql+pymysql" in str(bad_driver.value) and secret not in str(bad_driver.value)
    with pytest.raises(IndexOpenError) as no_database:
        create_engine(f"postgresql+psycopg://u:{secret}@db.example")
    assert "names no database" in str(no_database.value) and secret not in str(no_database.value)
    # A port nobody listens on: refused at once, named by host and database, never the password.
    unreachable = f"postgresql+psycopg://indexer:{secret}@127.0.0.1:1/mcp_index"
    with pytest.raises(IndexOpenError) as refused:
        await Indexer.open(Settings(search_mode="bm25").with_index(unreachable), None)
    message = str(refused.value)
    assert "127.0.0.1:1/mcp_index" in message and secret not in message and "\n" not in message.strip()
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert secret not in describe_location(unreachable)


async def test_a_wrong_password_is_named_without_the_password(database: str) -> None:
    # pgserver trusts local connections; a user that does not exist is refused by the server.
    url = database.replace("postgres:@", "nobody:wrong-pw@", 1)
    with pytest.raises(IndexOpenError) as refused:
        await Indexer.open(Settings(search_mode="bm25").with_index(url), None)
    assert "wrong-pw" not in str(refused.value) and "nobody" in str(refused.value)


async def test_hnsw_setting_builds_and_drops_the_indexes_and_search_still_answers(
    database: str, embedder: FastEmbedder
) -> None:
    settings = replace(Settings(embedding_model_path=model_path()).with_index(database), pg_hnsw=True)

    async def hnsw_indexes(indexer: Indexer) -> set[str]:
        async with indexer.engine.connect() as conn:
            return set((await conn.execute(text(
                "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'"))).scalars())

    indexer = await Indexer.open(settings, embedder)
    try:
        assert await hnsw_indexes(indexer) == {"ix_registry_tool_vectors_hnsw", "ix_workload_tool_vectors_hnsw"}
        await indexer.apply_workload(workload("ns/a", url="https://a.example/mcp", tools=CORPUS))
        search = ToolSearch(indexer.engine, embedder, hnsw_ef_search=settings.pg_hnsw_ef_search)
        hits = await search.find_tools("what will the weather be like in Lyon", mode="vector", limit=3)
        assert hits[0].tool in {"get_weather", "get_forecast"}
        async with indexer.engine.connect() as conn:
            await search._tune_knn(conn, 50)
            plan = "\n".join((await conn.execute(text(
                "EXPLAIN SELECT rowid FROM workload_tool_vectors ORDER BY embedding <=> "
                "(SELECT embedding FROM workload_tool_vectors LIMIT 1) LIMIT 5"))).scalars())
        assert "ix_workload_tool_vectors_hnsw" in plan or "Seq Scan" in plan  # 10 rows: the planner may scan
    finally:
        await indexer.close()
    reopened = await Indexer.open(replace(settings, pg_hnsw=False), embedder)
    try:
        assert await hnsw_indexes(reopened) == set()
    finally:
        await reopened.close()


async def test_what_sqlite_only_machinery_does_on_postgresql(database: str, embedder: FastEmbedder) -> None:
    """No file: nothing to inspect, watch, move aside or rebuild; the open check is that the
    database answers and reaches head; a PostgreSQL error is not an index fault to repair."""
    indexer = await Indexer.open(Settings(embedding_model_path=model_path()).with_index(database), embedder,
                                 repair=True)
    try:
        assert indexer.path is None and indexer.file_fault() is None and indexer.repaired is None
        assert await migrate.current_revision(indexer.engine) == migrate.head_revision()
        with pytest.raises(RuntimeError, match="cannot be rebuilt"):
            await indexer.rebuild(IndexFault(FaultKind.CORRUPT, "not a file"))
        # A PostgreSQL error is the server's business, never a fault that moves anything.
        async with indexer.engine.connect() as conn:
            with pytest.raises(DBAPIError) as failed:
                await conn.execute(text("SELECT * FROM no_such_table"))
        assert classify(failed.value) is None
    finally:
        await indexer.close()


async def test_the_asyncpg_driver_indexes_and_searches_alike(database: str, embedder: FastEmbedder) -> None:
    url = database.replace(f"{postgres.DRIVER}://", "postgresql+asyncpg://", 1)
    indexer = await Indexer.open(Settings(embedding_model_path=model_path()).with_index(url), embedder)
    try:
        await indexer.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server",
                                               tools=["create_issue"])])
        await indexer.apply_workload(workload("ns/a", url="https://a.example/mcp", tools=CORPUS))
        search = ToolSearch(indexer.engine, embedder)
        assert [h.tool for h in await search.find_tools("weather forecast for Paris", limit=2)] == [
            "get_forecast", "get_weather"]
        assert [h.name for h in await search.find_registry_servers("create a github issue")] == ["github"]
    finally:
        await indexer.close()
