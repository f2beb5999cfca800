"""The embedder: real model, cache, budgeted batches in input order."""

from __future__ import annotations

import numpy as np

from mcp_optimizer.embeddings import FastEmbedder, mean_pool


def test_batches_respect_the_character_budget(embedder: FastEmbedder) -> None:
    texts = sorted([f"t{i}" for i in range(100)] + ["x" * 500, "y" * 900, "z" * 1500], key=len)
    batches = embedder._batches(texts)
    assert [t for batch in batches for t in batch] == texts
    for batch in batches:
        assert len(batch) <= embedder.batch_size
        assert len(batch) == 1 or len(batch) * max(map(len, batch)) <= embedder.char_budget


def test_embed_keeps_input_order_and_caches(embedder: FastEmbedder) -> None:
    texts = ["read a file from disk " * 30, "weather", "send an email to a colleague", "weather"]
    before = embedder.texts_embedded
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[1], vectors[3])
    for text, vector in zip(texts, vectors, strict=True):
        assert np.allclose(embedder.embed([text])[0], vector)  # the same, whichever batch it ran in
    assert embedder.texts_embedded - before <= 3  # duplicates and repeats come from the cache
    assert float(vectors[1] @ vectors[2]) < 0.5


def test_mean_pool_is_unit_length() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pooled = mean_pool(vectors)
    assert abs(float(np.linalg.norm(pooled)) - 1.0) < 1e-5
