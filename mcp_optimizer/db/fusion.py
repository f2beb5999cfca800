"""Fusing ranked lists from several retrievers into one ranking (pure functions, no I/O).

Every search of the index (``find_tools``, ``find_registry_servers``) fuses its retrievers'
lists with :func:`fuse`, so one change of method changes both.

A *ranking* is a retriever's candidates, best first, each with that retriever's own score
(higher is better: BM25 relevance, cosine similarity). Methods:

* ``rrf``: reciprocal rank fusion, ``sum(w / (k + rank))``; scores are ignored, so a list's
  first candidate counts the same whether it leads by a mile or by nothing;
* ``minmax``: each list's scores scaled to [0, 1] (first 1; the bottom of the range is the
  list's *floor* when it has one, else its last score; a candidate a list lacks counts 0), then
  a weighted sum. A list of weight ``w`` can only overturn another list's lead of less than
  ``w`` of that list's range: with BM25 at 1 and the vector list at 0.5 (the default), the
  vector list breaks BM25's near-ties but cannot undo a clear lexical match. BM25's floor is 0,
  the score of a tool that shares no word with the query: scaled by its last score, a list of
  two matches would always put the second at 0, however close it was;
* ``confidence``: ``minmax`` where each list's weight also shrinks by how sure the *other* list
  is of its first candidate (its lead over the second, relative to its range: :func:`margin`).

Why ``minmax`` with the vector list at half weight is the default (``bench/RESULTS.md``,
"Fusion"): rank fusion let a weak embedder reorder BM25's confident answers; on the private
held-out set of short real requests the RRF default lost 8 points of R@5 to BM25 alone. On the
dev sets, with the vector list made artificially weak (for 30% of queries it answers another
query of the set: the loss the private set showed), equal-weight fusions fall below BM25 on
some slices and this one stays at or above BM25 on every slice.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal, TypeVar

K = TypeVar("K", bound=Hashable)
FusionMethod = Literal["rrf", "minmax", "confidence"]
FUSION_METHODS: tuple[FusionMethod, ...] = ("rrf", "minmax", "confidence")

Ranking = Sequence[tuple[K, float]]


def fuse(
    rankings: Sequence[Ranking[K]],
    method: FusionMethod = "minmax",
    *,
    weights: Sequence[float] | None = None,
    floors: Sequence[float | None] | None = None,
    k: float = 60.0,
) -> dict[K, float]:
    """The fused score of every candidate of ``rankings`` (higher is better). ``floors`` gives
    each list's score of "not relevant at all" where it has one (BM25: 0), for ``minmax``."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    floors = list(floors) if floors is not None else [None] * len(rankings)
    if len(weights) != len(rankings) or len(floors) != len(rankings):
        raise ValueError("one weight and one floor per ranking")
    if method == "confidence":
        margins = [margin(ranking) if ranking else 0.0 for ranking in rankings]
        weights = [w * (1.0 - max((m for j, m in enumerate(margins) if j != i), default=0.0))
                   for i, w in enumerate(weights)]
    fused: dict[K, float] = {}
    for ranking, weight, floor in zip(rankings, weights, floors, strict=True):
        if not ranking or weight == 0:
            continue
        if method == "rrf":
            contributions = {key: 1.0 / (k + rank) for rank, (key, _) in enumerate(ranking, start=1)}
        else:
            contributions = minmax(ranking, floor)
        for key, value in contributions.items():
            fused[key] = fused.get(key, 0.0) + weight * value
    return fused


def minmax(ranking: Ranking[K], floor: float | None = None) -> dict[K, float]:
    """Scores scaled to [0, 1] between ``floor`` (default: the lowest score) and the highest (a
    list of one, or of equal scores, without a floor is all 1)."""
    scores = [score for _, score in ranking]
    top = max(scores)
    bottom = min(min(scores), floor) if floor is not None else min(scores)
    span = top - bottom
    return {key: (score - bottom) / span if span > 0 else 1.0 for key, score in ranking}


def margin(ranking: Ranking[K]) -> float:
    """How sure a list is of its first candidate, in [0, 1]: the first score's lead over the
    second, relative to the spread of the whole list (1 for a list of one)."""
    if len(ranking) < 2:
        return 1.0
    scores = [score for _, score in ranking]
    span = max(scores) - min(scores)
    return (scores[0] - scores[1]) / span if span > 0 else 0.0
