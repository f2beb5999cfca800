"""Where the development data lives: the ``shared/`` folder beside the repository.

Tests, benchmarks and ``scripts/demo`` use the real embedding model and the real catalogs from
there; both locations can be overridden with environment variables (CI points the model at its
copy). This lookup relative to a checkout belongs here, under tests/: the package itself takes its
model path from its settings only.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (this file is ``tests/support/shared.py`` in a checkout).
REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``shared/`` beside the repository (models, data), or ``$MCP_OPTIMIZER_SHARED``."""
    env = os.environ.get("MCP_OPTIMIZER_SHARED")
    if env:
        return Path(env)
    for parent in REPO.parents:
        if (parent / "shared" / "models").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


def model_path() -> Path:
    """The embedding model directory: ``$MCP_OPTIMIZER_EMBEDDING_MODEL_PATH`` or the shared copy."""
    env = os.environ.get("MCP_OPTIMIZER_EMBEDDING_MODEL_PATH")
    return Path(env) if env else shared_dir() / "models" / "all-MiniLM-L6-v2"


def shared_model_path(folder: str) -> Path:
    """One of the models in ``shared/models`` (see its README), by folder name."""
    return shared_dir() / "models" / folder
