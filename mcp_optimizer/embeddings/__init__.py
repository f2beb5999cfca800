"""Text embeddings for servers, tools and queries."""

from mcp_optimizer.embeddings.model import (
    EMBEDDING_DIM,
    KNOWN_MODELS,
    Embedder,
    EmbeddingError,
    FastEmbedder,
    ModelSpec,
    configured_embedder,
    from_bytes,
    mean_pool,
    model_spec,
    to_bytes,
)

__all__ = [
    "EMBEDDING_DIM",
    "KNOWN_MODELS",
    "Embedder",
    "EmbeddingError",
    "FastEmbedder",
    "ModelSpec",
    "configured_embedder",
    "from_bytes",
    "mean_pool",
    "model_spec",
    "to_bytes",
]
