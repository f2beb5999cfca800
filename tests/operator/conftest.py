"""The operator's unit tests assert mapping, status and what the handlers write, never which tools
a query finds: their index is filled by the fake embedder instead of the ONNX model."""

from __future__ import annotations

import pytest

from mcp_optimizer.embeddings import Embedder
from tests.support.fake_embedder import FakeEmbedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return FakeEmbedder()
