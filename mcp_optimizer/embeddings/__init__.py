"""Text embeddings for servers, tools and queries."""

from mcp_optimizer.embeddings.model import (
    EMBEDDING_DIM,
    Embedder,
    EmbeddingError,
    FastEmbedder,
    from_bytes,
    mean_pool,
    to_bytes,
)

__all__ = ["EMBEDDING_DIM", "Embedder", "EmbeddingError", "FastEmbedder", "from_bytes", "mean_pool", "to_bytes"]
