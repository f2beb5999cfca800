"""A deterministic stand-in for the embedding model, for unit tests that do not test retrieval.

:class:`FakeEmbedder` is an :class:`~mcp_optimizer.embeddings.Embedder` (same cache, batching,
prefixes, observers and async helpers; only :meth:`_embed_batch` differs) whose vectors are hashed
bags of words: each lower-cased word of a text adds +1 or -1 to one of the model's 384 dimensions,
both chosen by the word's BLAKE2b hash, and the sum is L2-normalised. The same text gives the same
vector in every process and on every machine; texts sharing words are closer than texts that do
not, and a text without words gets one fixed unit vector, so nothing downstream meets a zero
vector (mean pooling, cosine distance).

What it is for: handler, operator, status, mapping and endpoint-bounds tests, which need an index
with vectors in it but assert what is written, reported or refused, never which tools a query
finds. They then no longer load the ONNX model: on the shared development machine (2 cores, under
load) loading it took 5.1 s and embedding 200 short tool texts 9.6 s, against 0.05 s here.

What it is NOT for: any assertion on search results. Hashed words know no synonyms, so rankings
made with it say nothing about the product; retrieval, ingest and end-to-end tests keep the real
model (the root conftest's ``embedder`` fixture).

Its :class:`~mcp_optimizer.embeddings.ModelSpec` has its own name, so an index file it wrote records
a fingerprint no real model has, and an Indexer opening that file with the real model re-embeds
everything instead of mixing the two kinds of vectors.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import numpy.typing as npt

from mcp_optimizer.embeddings import EMBEDDING_DIM, Embedder, ModelSpec

#: The fake's model description: the real model's dimension, so the index schema is the same.
FAKE_MODEL = ModelSpec("tests/hashed-bag-of-words", EMBEDDING_DIM)

_WORD = re.compile(r"[a-z0-9]+")


def _slot(word: str, dim: int) -> tuple[int, float]:
    """The dimension a word adds to and the sign it adds with."""
    digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return digest % dim, 1.0 if (digest >> 63) & 1 else -1.0


def hashed_bag_of_words(text: str, dim: int = EMBEDDING_DIM) -> npt.NDArray[np.float32]:
    """The unit vector of ``text``: its words hashed into ``dim`` signed buckets."""
    vector = np.zeros(dim, dtype=np.float32)
    for word in _WORD.findall(text.lower()) or [""]:
        index, sign = _slot(word, dim)
        vector[index] += sign
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:  # words cancelled out: fall back to the wordless text's vector
        index, sign = _slot("", dim)
        vector[index] = sign
        norm = 1.0
    return vector / norm


class FakeEmbedder(Embedder):
    """Hashed bag-of-words vectors of the real dimension; see the module docstring for when to use it."""

    def __init__(self, spec: ModelSpec = FAKE_MODEL, *, batch_size: int = 64) -> None:
        super().__init__(spec, batch_size=batch_size)

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([hashed_bag_of_words(text, self.dim) for text in texts]).astype(np.float32)
