"""Shared fixtures: the real embedding model (loaded once) and a fresh index file per test.

A directory or module whose tests never assert retrieval overrides ``embedder`` with
:class:`tests.support.fake_embedder.FakeEmbedder` (tests/operator/conftest.py does); ``indexer``
then indexes with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_optimizer.config import Settings
from mcp_optimizer.embeddings import Embedder, FastEmbedder
from mcp_optimizer.ingest import Indexer
from tests.support.shared import model_path

# The operator harness's fixtures (mcpserver_crd, ns, kube, op_settings, start_operator, probe) for
# tests/k8s and tests/deploy. Plugins listed here are imported before any test module, so pytest
# rewrites their asserts; pytest_plugins anywhere but the root conftest registers them for the
# whole session anyway (and in a non-root conftest is an error).
pytest_plugins = ["tests.k8s.harness"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A sqlite_only test runs on SQLite only: its PostgreSQL instance is not collected at all.
    from tests.support.backends import deselect_sqlite_only_on_postgres

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
async def indexer(settings: Settings, embedder: Embedder) -> AsyncIterator[Indexer]:
    index = await Indexer.open(settings, embedder)
    yield index
    await index.close()
