"""Shared fixtures: the real embedding model (loaded once) and a fresh index file per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_optimizer.config import Settings
from mcp_optimizer.embeddings import FastEmbedder
from mcp_optimizer.ingest import Indexer

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The ``shared/`` folder beside the repository (models and real data sets)."""
    env = os.environ.get("MCP_OPTIMIZER_SHARED")
    if env:
        return Path(env)
    for parent in REPO.parents:
        if (parent / "shared" / "models").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


def model_path() -> Path:
    env = os.environ.get("MCP_OPTIMIZER_EMBEDDING_MODEL_PATH")
    return Path(env) if env else shared_dir() / "models" / "all-MiniLM-L6-v2"


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
