"""The embedding model: fastembed's ONNX runtime over a local copy of a sentence embedder.

Which model is a setting (:class:`ModelSpec`: name, dimension, query and passage prefixes);
:data:`KNOWN_MODELS` describes the ones this project has measured (bench/RESULTS.md).

Everything in the index that needs a vector goes through :class:`Embedder`, which adds two
things the raw model lacks:

* an LRU cache keyed by text, so the same tool text is never embedded twice in one process
  (re-matching, retries and rename races all hit it);
* length-sorted, size-budgeted batching: ONNX pads every text of a batch to the longest one,
  and tool descriptions range from five words to pages. Texts are sorted by length and a batch
  is closed when (texts in it) x (longest text) would pass a character budget, so short texts
  run in large batches and long ones in small batches. Measured on the 527 LiveMCPBench tools
  (2 cores): fixed batches of 64 ran 113 texts/s, of 8 ran 202/s, the 2000-character budget
  188/s; on short texts the budget runs 1756/s against 1398/s for fixed batches of 64;
* one model run at a time: concurrent ONNX runs on two cores gain no throughput but each holds
  its own working memory (six at once peaked at 1.2 GB against 440 MB for one).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from mcp_optimizer.errors import McpOptimizerError

if TYPE_CHECKING:
    from mcp_optimizer.config import Settings

#: The dimension of the default model's vectors (the schema's first revision was made for it).
EMBEDDING_DIM = 384

Vector = npt.NDArray[np.float32]


class EmbeddingError(McpOptimizerError, RuntimeError):
    """The model could not be loaded or could not embed a text."""


@dataclass(frozen=True)
class ModelSpec:
    """What the index needs to know about an embedding model besides its files.

    ``name`` is fastembed's model name; a model fastembed does not describe itself is registered
    with mean pooling and L2 normalisation (``TextEmbedding.add_custom_model``). Asymmetric
    models (e5) were trained with a prefix on each side and rank worse without them.
    """

    name: str
    dim: int
    query_prefix: str = ""
    passage_prefix: str = ""
    #: Cosine similarity below which a vector hit counts only if full-text search found it too:
    #: a query no tool answers then returns nothing. Each model has its own scale (e5 puts
    #: unrelated texts near 0.8, MiniLM near 0.2), so each known model's floor sits at the same
    #: place: the 25th percentile of the similarity between a dev-set query and its relevant
    #: tool (where MiniLM's long-standing 0.3 is; 10,000 pairs, bench/RESULTS.md).
    min_similarity: float = 0.3

    @property
    def fingerprint(self) -> str:
        """What identifies the vectors this model makes of stored texts: the index records it
        and re-embeds when it changes (the query prefix does not change stored vectors)."""
        return f"{self.name}|dim={self.dim}|passage={self.passage_prefix!r}"


MINILM = ModelSpec("sentence-transformers/all-MiniLM-L6-v2", 384, min_similarity=0.30)
E5_SMALL = ModelSpec("intfloat/multilingual-e5-small", 384, query_prefix="query: ", passage_prefix="passage: ",
                     min_similarity=0.82)
WORDLLAMA = ModelSpec("dleemiller/word-llama-l2-supercat", 256, min_similarity=0.28)
#: The models measured on every retrieval slice (bench/retrieval.py), by fastembed name.
KNOWN_MODELS = {spec.name: spec for spec in (MINILM, E5_SMALL, WORDLLAMA)}


def model_spec(
    name: str, *, dim: int | None = None, query_prefix: str | None = None, passage_prefix: str | None = None
) -> ModelSpec:
    """The spec of model ``name``: a known model's, with any of its fields overridden; another
    model needs its dimension."""
    known = KNOWN_MODELS.get(name)
    if known is None and dim is None:
        raise EmbeddingError(
            f"unknown embedding model {name!r}: set its dimension (MCP_OPTIMIZER_EMBEDDING_DIM); "
            f"known models: {', '.join(KNOWN_MODELS)}")
    return ModelSpec(
        name,
        dim if dim is not None else known.dim,  # type: ignore[union-attr]
        query_prefix if query_prefix is not None else (known.query_prefix if known else ""),
        passage_prefix if passage_prefix is not None else (known.passage_prefix if known else ""),
        known.min_similarity if known else ModelSpec.min_similarity,
    )


def to_bytes(vector: Vector) -> bytes:
    """The float32 little-endian layout sqlite-vec reads."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> Vector:
    return cast(Vector, np.frombuffer(blob, dtype="<f4").astype(np.float32))


def mean_pool(vectors: Sequence[Vector] | npt.NDArray[np.float32]) -> Vector:
    """The L2-normalised mean of unit vectors: a server's embedding from its tools' embeddings."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) == 0:
        raise EmbeddingError("cannot mean-pool an empty set of vectors")
    mean = matrix.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return cast(Vector, (mean / norm if norm > 0 else mean).astype(np.float32))


class Embedder:
    """Embeds texts with a cache and length-sorted batches. Subclasses implement :meth:`_embed_batch`.

    Stored texts (tools, servers) are *passages*, user requests are *queries*; each side gets
    its own prefix from the :class:`ModelSpec`, and the cache is keyed by the prefixed text.
    Thread-safe; the async helpers run the model in a worker thread so the event loop keeps
    serving pod events and MCP requests while a catalog is embedded.
    """

    def __init__(
        self, spec: ModelSpec = MINILM, *, batch_size: int = 64, cache_size: int = 50_000, char_budget: int = 2000
    ) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.char_budget = char_budget
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        #: Texts actually run through the model (cache misses), for tests and benchmarks.
        self.texts_embedded = 0
        self.seconds_embedding = 0.0
        #: Called with (texts, seconds) after every call that ran the model (metrics).
        self.observers: list[Callable[[int, float], None]] = []
        #: Called with (texts done, texts to do) after every model run of a call (progress).
        self.batch_observers: list[Callable[[int, int], None]] = []

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        raise NotImplementedError

    def embed(self, texts: Sequence[str], *, query: bool = False) -> npt.NDArray[np.float32]:
        """Unit vectors for ``texts`` (passages, or queries when ``query``), in order, shape
        ``(len(texts), dim)``."""
        prefix = self.spec.query_prefix if query else self.spec.passage_prefix
        texts = [prefix + text for text in texts] if prefix else texts
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        missing = self._from_cache(texts, result)
        if not missing:
            return result
        unique = sorted(missing, key=len)
        started = time.perf_counter()
        matrix = self._run_model(unique)
        elapsed = time.perf_counter() - started
        for observer in self.observers:
            observer(len(unique), elapsed)
        with self._lock:
            self.texts_embedded += len(unique)
            self.seconds_embedding += elapsed
            for text, vector in zip(unique, matrix, strict=True):
                for i in missing[text]:
                    result[i] = vector
                self._cache[text] = vector
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _from_cache(self, texts: Sequence[str], result: npt.NDArray[np.float32]) -> dict[str, list[int]]:
        """Cached vectors into ``result``; the texts that are not cached, with their positions."""
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                cached = self._cache.get(text)
                if cached is not None:
                    self._cache.move_to_end(text)
                    result[i] = cached
                else:
                    missing.setdefault(text, []).append(i)
        return missing

    def _run_model(self, texts_by_length: list[str]) -> npt.NDArray[np.float32]:
        """The model's vectors for ``texts_by_length``, batch by batch (observers told of each)."""
        vectors: list[npt.NDArray[np.float32]] = []
        done = 0
        try:
            for batch in self._batches(texts_by_length):
                with self._model_lock:
                    vectors.append(self._embed_batch(batch))
                done += len(batch)
                for batch_observer in self.batch_observers:
                    batch_observer(done, len(texts_by_length))
        except EmbeddingError:
            raise
        except Exception as exc:  # the ONNX runtime raises its own types
            raise EmbeddingError(f"embedding failed: {exc}") from exc
        matrix = np.concatenate(vectors) if vectors else np.empty((0, self.dim), np.float32)
        if matrix.shape != (len(texts_by_length), self.dim):
            raise EmbeddingError(
                f"model {self.spec.name} gave vectors of shape {matrix.shape[1:]}, expected ({self.dim},): "
                "the configured dimension does not match the model")
        return matrix

    def _batches(self, texts_by_length: list[str]) -> list[list[str]]:
        """Split length-sorted texts so that no batch pads past the character budget."""
        batches: list[list[str]] = []
        current: list[str] = []
        for text in texts_by_length:  # each text is the longest of its batch so far
            if current and ((len(current) + 1) * len(text) > self.char_budget or len(current) >= self.batch_size):
                batches.append(current)
                current = []
            current.append(text)
        if current:
            batches.append(current)
        return batches

    def embed_one(self, text: str, *, query: bool = False) -> Vector:
        return cast(Vector, self.embed([text], query=query)[0])

    async def aembed(self, texts: Sequence[str], *, query: bool = False) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return await asyncio.to_thread(self.embed, list(texts), query=query)

    async def aembed_one(self, text: str, *, query: bool = False) -> Vector:
        return cast(Vector, (await self.aembed([text], query=query))[0])


#: Model names registered with fastembed in this process (registration is process-wide).
_registered: set[str] = set()
_register_lock = threading.Lock()


def _register_custom_model(spec: ModelSpec) -> None:
    """Describe a model fastembed does not know: mean pooling, L2-normalised, ``model.onnx``."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    with _register_lock:
        if spec.name in _registered:
            return
        known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
        if spec.name.lower() not in known:
            TextEmbedding.add_custom_model(
                model=spec.name, pooling=PoolingType.MEAN, normalization=True,
                sources=ModelSource(hf=spec.name), dim=spec.dim, model_file="model.onnx")
        _registered.add(spec.name)


class FastEmbedder(Embedder):
    """A sentence embedder (all-MiniLM-L6-v2 unless told otherwise) through fastembed, loaded
    from a local directory (never downloaded).

    fastembed applies the model's pooling and L2 normalisation itself. The model is loaded
    lazily on first use so that commands which never embed start instantly.
    """

    def __init__(
        self,
        model_path: Path | None,
        model: ModelSpec | str = MINILM,
        *,
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        super().__init__(model if isinstance(model, ModelSpec) else model_spec(model), batch_size=batch_size)
        self.model_path = model_path
        self.model_name = self.spec.name
        self.threads = threads
        self._model: object | None = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        """Load the ONNX model now (the operator does this at start to fail fast)."""
        with self._load_lock:
            if self._model is not None:
                return
            if self.model_path is None:
                raise EmbeddingError(
                    f"no embedding model configured: set MCP_OPTIMIZER_EMBEDDING_MODEL_PATH to the directory "
                    f"holding the ONNX export of {self.spec.name} (or MCP_OPTIMIZER_SEARCH_MODE=bm25 to run "
                    "without a model)"
                )
            if not (self.model_path / "model.onnx").is_file():
                raise EmbeddingError(f"no model.onnx in embedding model directory {self.model_path}")
            from fastembed import TextEmbedding

            try:
                _register_custom_model(self.spec)
                self._model = TextEmbedding(
                    self.spec.name, specific_model_path=str(self.model_path), threads=self.threads,
                    local_files_only=True,
                )
            except Exception as exc:
                raise EmbeddingError(f"cannot load embedding model from {self.model_path}: {exc}") from exc

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.load()
        model = self._model
        vectors = list(model.embed(texts, batch_size=len(texts)))  # type: ignore[union-attr]
        return np.asarray(vectors, dtype=np.float32)


def configured_embedder(settings: Settings) -> FastEmbedder | None:
    """The model ``settings`` name (not loaded yet), or None in keyword-only mode."""
    if settings.keyword_only:
        return None
    return FastEmbedder(settings.embedding_model_path, settings.embedding_model_spec(),
                        batch_size=settings.embedding_batch_size)
