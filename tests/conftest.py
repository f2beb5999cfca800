"""Shared fixtures: the real embedding model (loaded once) and a fresh index file per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_optimizer.config import Settings
from mcp_optimizer.embeddings import FastEmbedder
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.testing.shared import model_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A sqlite_only test runs on SQLite only: its PostgreSQL instance is not collected at all.
    from tests.backends import deselect_sqlite_only_on_postgres

    items[:] = deselect_sqlite_only_on_postgres(items)


@pytest.fixture(scope="session")
def embedder() -> FastEmbedder:
    path = model_path()
    if not (path / "model.onnx").is_file():
        pytest.fail(f"embedding model not found at {path}: set MCP_OPTIMIZER_EMBEDDING_MODEL_PATH")
    model = FastEmbedder(path)
    model.load()
    return model


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db_path=tmp_path / "index.db", embedding_model_path=model_path())


@pytest.fixture
async def indexer(settings: Settings, embedder: FastEmbedder) -> AsyncIterator[Indexer]:
    index = await Indexer.open(settings, embedder)
    yield index
    await index.close()
