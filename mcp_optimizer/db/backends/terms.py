"""The terms of full-text rows and queries, exactly as FTS5's tokenizer makes them.

PostgreSQL has no FTS5, and its own parser and stemmer (``english_stem`` is Snowball, not
Porter; its parser keeps ``bar-baz`` as a token as well as its parts) would make other terms
than the SQLite index, so the two backends would not rank alike. Instead the terms are made
here, by FTS5 itself, with the index's tokenizer (``porter unicode61 remove_diacritics 2``) in
an in-memory SQLite table, and stored in PostgreSQL's term tables at write time: both backends
see the same terms, per column, with the same counts, and the BM25 of
:mod:`mcp_optimizer.db.backends.postgres` is FTS5's formula over them.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mcp_optimizer.db.engine import sqlite_module
from mcp_optimizer.db.virtual import FTS_COLUMNS, FTS_TOKENIZER

#: FTS5's BM25 constants (sqlite/ext/fts5/fts5_aux.c) and its floor for a phrase's IDF.
BM25_K1 = 1.2
BM25_B = 0.75
MIN_IDF = 1e-6


@dataclass(frozen=True)
class DocumentTerms:
    """One full-text row: each term's count per column (:data:`FTS_COLUMNS` order) and the
    row's length in tokens (all columns)."""

    counts: dict[str, list[int]]
    length: int


_local = threading.local()


@contextmanager
def _tokenizer() -> Iterator[Any]:
    """This thread's in-memory FTS5 table (made once per thread: 5 ms), emptied after each use."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite_module().connect(":memory:", check_same_thread=True)
        columns = ", ".join(FTS_COLUMNS)
        conn.execute(f"CREATE VIRTUAL TABLE doc USING fts5({columns}, tokenize = '{FTS_TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE doc_terms USING fts5vocab(doc, 'instance')")
        _local.conn = conn
    try:
        yield conn
    finally:
        conn.execute("DELETE FROM doc")


def document_terms(rows: Iterable[tuple[int, Sequence[str]]]) -> dict[int, DocumentTerms]:
    """The terms of each (row id, column texts) as FTS5 indexes them."""
    rows = list(rows)
    if not rows:
        return {}
    with _tokenizer() as conn:
        placeholders = ", ".join("?" for _ in FTS_COLUMNS)
        conn.executemany(f"INSERT INTO doc(rowid, {', '.join(FTS_COLUMNS)}) VALUES (?, {placeholders})",
                         [(row_id, *fields) for row_id, fields in rows])
        index = {column: i for i, column in enumerate(FTS_COLUMNS)}
        result: dict[int, DocumentTerms] = {row_id: DocumentTerms({}, 0) for row_id, _ in rows}
        lengths: dict[int, int] = dict.fromkeys(result, 0)
        for term, row_id, column in conn.execute("SELECT term, doc, col FROM doc_terms"):
            result[row_id].counts.setdefault(term, [0] * len(FTS_COLUMNS))[index[column]] += 1
            lengths[row_id] += 1
        return {row_id: DocumentTerms(doc.counts, lengths[row_id]) for row_id, doc in result.items()}


def phrase_terms(words: Sequence[str]) -> list[list[str]]:
    """The terms of each query phrase (a word of :func:`~mcp_optimizer.db.search.fts_query`), in order.

    A word the tokenizer splits (``get_user``: FTS5 reads it as the phrase "get user") gives
    several terms."""
    return [list(_word_terms(word)) for word in words]


@functools.lru_cache(maxsize=65536)
def _word_terms(word: str) -> tuple[str, ...]:
    with _tokenizer() as conn:
        conn.execute("INSERT INTO doc(rowid, name) VALUES (1, ?)", (word,))
        return tuple(term for (term,) in conn.execute("SELECT term FROM doc_terms ORDER BY offset"))


def idf(rows: int, hits: int) -> float:
    """FTS5's IDF of a phrase found in ``hits`` of ``rows`` rows (floored at a small positive value)."""
    value = math.log((rows - hits + 0.5) / (hits + 0.5)) if rows else MIN_IDF
    return value if value > 0 else MIN_IDF
