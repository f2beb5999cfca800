"""The lexical side of find_tool, part by part: BM25 alone on every dev-set slice.

Each variant builds the FTS5 rows of every tool of a set in a scratch SQLite database (the
index's own tokenizer, ``porter unicode61 remove_diacritics 2``, and column weights) and asks
every query of every slice, scored like ``bench.retrieval`` (R@1 / R@5 / MRR@10). Variants:

* ``before``: the rows before issue 14 (name + split name, description, argument names and
  descriptions; no server) with the old stopwords and column weights (2, 1, 0.5);
* ``no-args``: ``before`` without the argument column;
* ``+server``: ``before`` plus the server name as a column (weight 1);
* ``+enums``, ``+nested``: ``+server`` plus argument enum values / nested properties;
* ``+stopwords``: ``+server`` with enums and nested properties and the new query stopwords;
* ``now``: the index's rows and query as they are (``tool_fts_fields``, ``fts_query``,
  ``BM25_COLUMN_WEIGHTS``): ``+stopwords`` with the argument column at weight 1.

Run ``python -m bench.lexical`` (a minute; no model).
"""

from __future__ import annotations

import re
import sqlite3
import statistics
from collections.abc import Callable
from typing import Any

from bench.common import base_parser, print_header
from mcp_optimizer.db.search import BM25_COLUMN_WEIGHTS, fts_query
from mcp_optimizer.db.virtual import FTS_COLUMNS, FTS_TOKENIZER
from mcp_optimizer.embeddings.texts import split_identifier, tool_fts_fields
from tests.support.devsets import SLICES, QueryResult, dev_sets

#: The query stopwords before issue 14.
OLD_STOPWORDS = frozenset(
    [
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "could", "do", "does", "for", "from", "get", "got",
        "have", "how", "i", "in", "into", "is", "it", "its", "me", "my", "need", "of", "on", "or", "our", "please",
        "should", "so", "some", "that", "the", "their", "them", "then", "there", "these", "this", "to", "use",
        "using", "want", "was", "we", "what", "when", "where", "which", "who", "will", "with", "would", "you", "your",
    ]
)
_WORD = re.compile(r"\w+", re.UNICODE)

Row = dict[str, str]


def old_query(text: str) -> str:
    words: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word not in OLD_STOPWORDS and word not in words and (len(word) > 1 or not word.isascii()):
            words.append(word)
    return " OR ".join(f'"{w}"' for w in words[:64])


def _args(tool: dict[str, Any], *, enums: bool, nested: bool) -> str:
    words: list[str] = []

    def walk(properties: object, depth: int) -> None:
        if not isinstance(properties, dict):
            return
        for name, arg in properties.items():
            words.append(split_identifier(str(name)))
            if not isinstance(arg, dict):
                continue
            if arg.get("description"):
                words.append(str(arg["description"]))
            if enums and isinstance(arg.get("enum"), list):
                words.append(" ".join(str(v) for v in arg["enum"][:20]))
            if nested and depth < 2:
                walk(arg.get("properties"), depth + 1)
                if isinstance(arg.get("items"), dict):
                    walk(arg["items"].get("properties"), depth + 1)

    schema = tool.get("inputSchema")
    walk(schema.get("properties") if isinstance(schema, dict) else None, 1)
    return " ".join(words)


def _before(server: str, tool: dict[str, Any], *, enums: bool = False, nested: bool = False,
            with_server: bool = False, with_args: bool = True) -> Row:
    name = str(tool["name"])
    row = {"name": f"{name} {split_identifier(name)}", "description": str(tool.get("description") or ""),
           "args": _args(tool, enums=enums, nested=nested) if with_args else ""}
    if with_server:
        row["server"] = split_identifier(server)
    return row


def _now(server: str, tool: dict[str, Any]) -> Row:
    return dict(zip(FTS_COLUMNS, tool_fts_fields(tool, server), strict=True))


#: name -> (row builder, query builder, column weights by column name)
OLD_WEIGHTS = {"name": 2.0, "description": 1.0, "args": 0.5, "server": 1.0}
VARIANTS: dict[str, tuple[Callable[[str, dict[str, Any]], Row], Callable[[str], str], dict[str, float]]] = {
    "before": (_before, old_query, OLD_WEIGHTS),
    "no-args": (lambda s, t: _before(s, t, with_args=False), old_query, OLD_WEIGHTS),
    "+server": (lambda s, t: _before(s, t, with_server=True), old_query, OLD_WEIGHTS),
    "+enums": (lambda s, t: _before(s, t, with_server=True, enums=True), old_query, OLD_WEIGHTS),
    "+nested": (lambda s, t: _before(s, t, with_server=True, enums=True, nested=True), old_query, OLD_WEIGHTS),
    "+stopwords": (lambda s, t: _before(s, t, with_server=True, enums=True, nested=True), fts_query, OLD_WEIGHTS),
    "now": (_now, fts_query, dict(zip(FTS_COLUMNS, BM25_COLUMN_WEIGHTS, strict=True))),
}


def run_variant(name: str) -> dict[str, tuple[float, float, float]]:
    """(R@1, R@5, MRR@10) of BM25 alone per slice, for one variant."""
    make_row, make_query, weights = VARIANTS[name]
    out: dict[str, tuple[float, float, float]] = {}
    for devset in dev_sets():
        rows = [((server, str(tool["name"])), make_row(server, tool)) for server, tools in devset.servers
                for tool in tools]
        columns = list(rows[0][1])
        db = sqlite3.connect(":memory:")
        db.execute(f"CREATE VIRTUAL TABLE f USING fts5({', '.join(columns)}, tokenize = '{FTS_TOKENIZER}')")
        db.executemany(f"INSERT INTO f(rowid, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))})",
                       [(i, *(row[c] for c in columns)) for i, (_, row) in enumerate(rows)])
        bm25 = f"bm25(f, {', '.join(str(weights[c]) for c in columns)})"
        for slice_name, queries in devset.slices.items():
            results = []
            for query in queries:
                match = make_query(query.text)
                ids = [] if not match else [rowid for (rowid,) in db.execute(
                    f"SELECT rowid FROM f WHERE f MATCH ? ORDER BY {bm25}, rowid LIMIT 10", [match])]
                found = [rows[i][0] for i in ids]
                ranks = [next((rank for rank, pair in enumerate(found, start=1) if pair in group), None)
                         for group in query.groups]
                results.append(QueryResult(ranks, 0.0))
            out[slice_name] = tuple(statistics.fmean(r.metric(m) for r in results)  # type: ignore[assignment]
                                    for m in ("R@1", "R@5", "MRR@10"))
        db.close()
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    args = parser.parse_args()
    print_header("BM25 alone on every slice, by what the full-text row holds", args)
    print(f"| variant | {' | '.join(SLICES)} |\n|---|{'---|' * len(SLICES)}")
    print("| | " + " | ".join("R@1 / R@5 / MRR@10" for _ in SLICES) + " |")
    for name in VARIANTS:
        scores = run_variant(name)
        cells = " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*scores[s]) for s in SLICES)
        print(f"| {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
