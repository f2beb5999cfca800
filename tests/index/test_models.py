"""The embedding model is a setting: the index records which model made its vectors, a change of
model re-embeds once (a migration, not a wipe), and keyword-only mode needs no model at all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.embeddings import Embedder, EmbeddingError, FastEmbedder, from_bytes, mean_pool, model_spec
from mcp_optimizer.embeddings.model import E5_SMALL, MINILM, WORDLLAMA
from mcp_optimizer.ingest import Indexer
from tests.support.shared import shared_model_path

from .helpers import entry, tool, workload

TOOLS = [tool("get_forecast", "Weather forecast for a city", city="City name"),
         tool("get_alerts", "Severe weather alerts for a state", state="Two-letter code")]
ISSUES = [tool("create_issue", "Create a new issue in a GitHub repository", title="Issue title")]


@pytest.fixture  # per test: its embedding cache must not carry texts from the other backend's run
def wordllama() -> FastEmbedder:
    model = FastEmbedder(shared_model_path("wordllama-l2-supercat-256"), WORDLLAMA)
    model.load()
    return model


async def _populate(index: Indexer) -> None:
    await index.load_catalog("c", [entry("github", package="ghcr.io/github/github-mcp-server",
                                         description="GitHub's MCP server", tools=["create_issue"])])
    await index.apply_workload(workload("ns/gh", package="ghcr.io/github/github-mcp-server:v2", tools=ISSUES))
    await index.apply_workload(workload("ns/weather", package="ghcr.io/x/weather", tools=TOOLS))
    await index.apply_workload(workload("ns/empty", package="ghcr.io/x/empty", tools=[]))


async def _vector_lengths(index: Indexer) -> set[int]:
    async with index.engine.connect() as conn:
        lengths = set()
        for table in ("workload_tool_vectors", "registry_tool_vectors", "workload_server_vector",
                      "registry_server_vector"):
            dims = "vec_length(embedding)" if conn.dialect.name == "sqlite" else "vector_dims(embedding)"
            lengths |= set((await conn.execute(text(f"SELECT {dims} FROM {table}"))).scalars())
        for table in ("tools_workload", "tools_registry"):
            lengths |= {len(b) // 4 for b in (await conn.execute(text(
                f"SELECT details_embedding FROM {table} WHERE details_embedding IS NOT NULL"))).scalars()}
        return lengths


async def test_a_new_model_reembeds_every_stored_text_once(
    settings: Settings, embedder: Embedder, wordllama: FastEmbedder
) -> None:
    index = await Indexer.open(settings, embedder)
    await _populate(index)
    assert await index.recorded_embedding_model() == MINILM.fingerprint
    assert await _vector_lengths(index) == {384}
    await index.close()

    before = wordllama.texts_embedded
    index = await Indexer.open(settings, wordllama)
    # Registry server + its tool, the linked workload's tool, the two weather tools, the empty
    # workload's own description: six texts, each through the model once.
    assert wordllama.texts_embedded - before == 6
    assert await index.recorded_embedding_model() == WORDLLAMA.fingerprint
    assert await _vector_lengths(index) == {256}  # vec0 tables recreated for 256 dimensions
    weather = await index.workloads.get_by_workload_name("ns/weather")
    linked = await index.workloads.get_by_workload_name("ns/gh")
    registry = await index.registry.get_by_name("c", "github")
    assert weather is not None and linked is not None and registry is not None
    # Servers keep their rules: a linked workload inherits its entry's vector, an unlinked one
    # mean-pools its tools'.
    assert linked.server_embedding == registry.server_embedding
    tools = await index.workload_tools.list_by_server(weather.id)
    assert weather.server_embedding is not None and all(t.details_embedding is not None for t in tools)
    assert np.allclose(from_bytes(weather.server_embedding),
                       mean_pool([from_bytes(t.details_embedding or b"") for t in tools]), atol=1e-6)
    hits = await ToolSearch(index.engine, wordllama).find_tools("weather forecast for a city", mode="vector")
    assert hits[0].tool == "get_forecast"
    await index.close()

    # Not on every start: the same model again embeds nothing.
    before = wordllama.texts_embedded
    index = await Indexer.open(settings, wordllama)
    assert wordllama.texts_embedded == before
    await index.close()
    index = await Indexer.open(settings, embedder)  # and back
    assert await _vector_lengths(index) == {384}
    assert (await ToolSearch(index.engine, embedder).find_tools("open a github issue"))[0].tool == "create_issue"
    await index.close()


async def test_a_failed_reembedding_leaves_the_index_as_it_was(
    tmp_path: Path, settings: Settings, embedder: Embedder
) -> None:
    index = await Indexer.open(settings, embedder)
    await _populate(index)
    await index.close()
    broken = FastEmbedder(tmp_path / "no-model-here", WORDLLAMA)
    with pytest.raises(EmbeddingError, match=r"no model\.onnx"):
        await Indexer.open(settings, broken)
    before = embedder.texts_embedded
    index = await Indexer.open(settings, embedder)
    assert embedder.texts_embedded == before
    assert await index.recorded_embedding_model() == MINILM.fingerprint
    assert await _vector_lengths(index) == {384}
    assert (await ToolSearch(index.engine, embedder).find_tools("weather forecast"))[0].tool == "get_forecast"
    await index.close()


async def test_keyword_only_mode_loads_no_model_and_embeds_nothing(settings: Settings, embedder: Embedder) -> None:
    with_model = settings
    settings = replace(settings, search_mode="bm25", embedding_model_path=None)  # and no model path at all
    index = await Indexer.open(settings)
    assert index.embedder is None
    await _populate(index)
    weather = await index.workloads.get_by_workload_name("ns/weather")
    assert weather is not None and weather.status == "RUNNING" and weather.index_error is None
    assert await _vector_lengths(index) == set()
    search = ToolSearch(index.engine, None)
    for mode in ("hybrid", "vector", "bm25"):  # every mode is BM25 without a model
        assert (await search.find_tools("severe weather alerts", mode=mode))[0].tool == "get_alerts"
    await index.load_catalog("c2", [entry("postgres", package="ghcr.io/x/pg", description="Query PostgreSQL",
                                          tools=["execute_sql"])])
    [hit] = await search.find_registry_servers("postgres sql", limit=1)
    assert hit.name == "postgres"
    assert await index.recorded_embedding_model() is None
    await index.close()

    # A model later embeds everything once, and vector search works.
    index = await Indexer.open(with_model, embedder)
    assert await index.recorded_embedding_model() == MINILM.fingerprint
    assert await _vector_lengths(index) == {384}
    hits = await ToolSearch(index.engine, embedder).find_tools("will it rain tomorrow", mode="vector")
    assert hits[0].tool == "get_forecast"
    await index.close()


async def test_keyword_only_writes_make_the_next_model_start_reembed(settings: Settings, embedder: Embedder) -> None:
    index = await Indexer.open(settings, embedder)
    await _populate(index)
    await index.close()
    index = await Indexer.open(replace(settings, search_mode="bm25"))
    await index.apply_workload(workload("ns/files", package="ghcr.io/x/files",
                                        tools=[tool("read_file", "Read a file from disk")]))
    assert await index.recorded_embedding_model() is None  # a tool without a vector: forget the model
    await index.close()
    index = await Indexer.open(settings, embedder)
    hits = await ToolSearch(index.engine, embedder).find_tools("read a file from disk", mode="vector")
    assert hits[0].tool == "read_file"
    await index.close()


def test_queries_and_passages_get_their_own_prefixes() -> None:
    e5 = FastEmbedder(shared_model_path("multilingual-e5-small-q4"), E5_SMALL)
    passage, query = e5.embed(["weather forecast"])[0], e5.embed(["weather forecast"], query=True)[0]
    assert not np.allclose(passage, query)
    # The same text embedded with the prefix written out gives the same vector as the prefix added.
    plain = FastEmbedder(shared_model_path("multilingual-e5-small-q4"), model_spec(E5_SMALL.name, passage_prefix=""))
    plain._model = e5._model
    assert np.allclose(plain.embed(["query: weather forecast"])[0], query, atol=1e-6)


def test_the_model_is_described_by_settings() -> None:
    assert Settings().embedding_model_spec() == MINILM
    custom = Settings(embedding_model_name="acme/embedder", embedding_dim=128, embedding_query_prefix="q: ")
    assert (custom.embedding_model_spec().dim, custom.embedding_model_spec().query_prefix) == (128, "q: ")
    with pytest.raises(EmbeddingError, match="MCP_OPTIMIZER_EMBEDDING_DIM"):
        Settings(embedding_model_name="acme/embedder").embedding_model_spec()
    with pytest.raises(ValueError, match="SEARCH_MODE"):
        Settings(search_mode="semantic")  # type: ignore[arg-type]  # the point: a mode the type refuses


def test_a_dimension_that_does_not_match_the_model_is_a_clear_error(wordllama: FastEmbedder) -> None:
    wrong = FastEmbedder(wordllama.model_path, model_spec(WORDLLAMA.name, dim=384))
    wrong._model = wordllama._model
    with pytest.raises(EmbeddingError, match="does not match"):
        wrong.embed(["anything"])
