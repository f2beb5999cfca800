"""The one fusion of every search: pure functions over ranked lists."""

from __future__ import annotations

import pytest

from mcp_optimizer.db.fusion import fuse, margin, minmax


def _order(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda k: (-scores[k], k))


def test_rrf_uses_ranks_only() -> None:
    bm25 = [("a", 100.0), ("b", 1.0)]
    vector = [("b", 0.9), ("a", 0.1)]
    scores = fuse([bm25, vector], "rrf", k=60)
    assert scores["a"] == pytest.approx(scores["b"]) == pytest.approx(1 / 61 + 1 / 62)


def test_minmax_lets_a_half_weight_list_break_near_ties_only() -> None:
    # A near-tie in BM25 (10 vs 9.8 of 10): the vector list decides.
    near = fuse([[("a", 10.0), ("b", 9.8)], [("b", 0.8), ("a", 0.2)]], "minmax", weights=[1, 0.5], floors=[0, None])
    assert _order(near) == ["b", "a"]
    # A clear lead (10 vs 3): it stays, however sure the vector list is.
    clear = fuse([[("a", 10.0), ("b", 3.0)], [("b", 0.9), ("a", 0.1)]], "minmax", weights=[1, 0.5], floors=[0, None])
    assert _order(clear) == ["a", "b"]
    # At equal weights the same vector list would overturn it.
    assert _order(fuse([[("a", 10.0), ("b", 3.0)], [("b", 0.9), ("a", 0.1)]], "minmax", floors=[0, None])) == \
        ["b", "a"]


def test_minmax_floor_keeps_a_short_list_honest() -> None:
    # Without a floor the second of two matches always scales to 0, however close it was.
    assert minmax([("a", 10.0), ("b", 9.9)]) == {"a": 1.0, "b": 0.0}
    assert minmax([("a", 10.0), ("b", 9.9)], floor=0.0) == pytest.approx({"a": 1.0, "b": 0.99})
    assert minmax([("a", 0.7)]) == {"a": 1.0}
    assert minmax([("a", 0.5), ("b", 0.5)]) == {"a": 1.0, "b": 1.0}


def test_a_candidate_of_one_list_only_gets_that_list_alone() -> None:
    scores = fuse([[("a", 4.0)], [("b", 0.9), ("c", 0.5)]], "minmax", weights=[1, 0.5], floors=[0, None])
    assert scores == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0})
    assert fuse([[], [("b", 0.9)]], "minmax") == {"b": 1.0}
    assert fuse([[], []], "minmax") == {}


def test_confidence_shrinks_a_list_when_the_other_is_sure() -> None:
    sure_bm25 = [("a", 10.0), ("b", 1.0), ("c", 0.0)]  # leads by 9 of a range of 10: margin 0.9
    unsure_vector = [("b", 0.90), ("c", 0.89), ("a", 0.10)]
    assert margin(sure_bm25) == pytest.approx(0.9)
    scores = fuse([sure_bm25, unsure_vector], "confidence", weights=[1, 1], floors=[0, None])
    assert _order(scores)[0] == "a"
    assert _order(fuse([sure_bm25, unsure_vector], "minmax", floors=[0, None]))[0] == "b"


def test_weights_and_floors_must_match_the_lists() -> None:
    with pytest.raises(ValueError, match="one weight"):
        fuse([[("a", 1.0)]], weights=[1.0, 2.0])
