"""The fake embedder unit tests use instead of the model (tests/support/fake_embedder.py): what
they rely on is that it is deterministic, of the real dimension and unit length, and behaves as an
Embedder (cache, observers). Its rankings are never asserted anywhere: they mean nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from mcp_optimizer.embeddings import EMBEDDING_DIM
from mcp_optimizer.embeddings.model import MINILM
from tests.support.fake_embedder import FAKE_MODEL, FakeEmbedder, hashed_bag_of_words


def test_vectors_are_unit_length_of_the_real_dimension() -> None:
    vectors = FakeEmbedder().embed(["query the analytics database", "", "!!!", "a a a"])
    assert vectors.shape == (4, EMBEDDING_DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_the_same_text_gives_the_same_vector_in_another_process() -> None:
    code = (
        "from tests.support.fake_embedder import hashed_bag_of_words; "
        "print(hashed_bag_of_words('Get the weather forecast').tobytes().hex())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert bytes.fromhex(other) == hashed_bag_of_words("Get the weather forecast").tobytes()


def test_shared_words_make_texts_closer_than_unrelated_ones() -> None:
    base, near, far = FakeEmbedder().embed(
        ["list the tables of a database", "list database tables", "post a message to a channel"]
    )
    assert float(base @ near) > 0.5 > abs(float(base @ far))


def test_it_is_an_embedder_with_its_cache_and_observers() -> None:
    fake = FakeEmbedder()
    calls: list[tuple[int, float]] = []
    fake.observers.append(lambda texts, seconds: calls.append((texts, seconds)))
    fake.embed(["one text", "another text"])
    fake.embed(["one text"])  # cached: the "model" does not run
    assert fake.texts_embedded == 2 and len(calls) == 1 and calls[0][0] == 2


def test_its_fingerprint_is_no_real_models() -> None:
    # An index written with the fake is re-embedded, not trusted, when the real model opens it.
    assert FAKE_MODEL.fingerprint != MINILM.fingerprint and FAKE_MODEL.dim == MINILM.dim
