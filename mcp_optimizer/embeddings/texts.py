"""The texts that are embedded and full-text indexed for servers and tools.

One place decides what a tool "says", so that ingestion, re-embedding and search agree.
The full-text row is the tool's whole vocabulary: its name split into words, its server's
name, its description, and its arguments (names split into words, descriptions, enum values,
one level of nested object properties). Each part was measured with BM25 alone on every
retrieval slice (``python -m bench.lexical``; bench/RESULTS.md, "Lexical side"): arguments are
worth the most (BFCL live R@5 0.705 -> 0.773), enum values and nested properties next (BFCL
live R@1 0.509 -> 0.574: users say "in fahrenheit" and the schema lists it), the server name
helps where servers have real names (LiveMCPBench MRR@10 0.453 -> 0.471; BFCL's made-up
server labels lose 0.004-0.008 R@5). The embedding text is kept short (context, name,
description) because the models truncate at 256-512 word pieces and long argument lists
drown the description.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[_\-.:/]+")
#: Budget for the tool description in the embedding text, in Latin characters (about 130 word
#: pieces). Measured on LiveMCPBench (bench/retrieval.py): 600 ranks as well as 1000, and the long
#: tail of page-long descriptions is what makes embedding slow (ONNX cost grows with the longest
#: text of a batch), so the cap trades nothing for speed. 300 started to cost ranking quality.
MAX_EMBEDDED_DESCRIPTION = 600
#: A CJK character is a word piece of its own, worth about four Latin characters of the budget;
#: without this a Chinese description of 600 characters would be 600 word pieces.
_WIDE_WEIGHT = 4
_WIDE_START = 0x2E80  # CJK radicals onwards: ideographs, kana, hangul, full-width forms


def clip_description(description: str, budget: int = MAX_EMBEDDED_DESCRIPTION) -> str:
    """``description`` with whitespace collapsed, cut where it exceeds ``budget`` (CJK weighs more)."""
    text = " ".join(description.split())
    used = 0
    for i, char in enumerate(text):
        used += _WIDE_WEIGHT if ord(char) >= _WIDE_START else 1
        if used > budget:
            return text[:i]
    return text


def split_identifier(name: str) -> str:
    """``getJiraIssue`` / ``get_jira_issue`` → ``get Jira Issue`` / ``get jira issue``."""
    return " ".join(_CAMEL.sub(" ", _SEPARATORS.sub(" ", name)).split())


def tool_embedding_text(context: str, tool: dict[str, Any]) -> str:
    """What is embedded for a tool: the server context (registry or workload name) and the tool."""
    name = str(tool.get("name", ""))
    description = clip_description(str(tool.get("description") or ""))
    words = split_identifier(name)
    head = f"{context}: {words}" if context else words
    return f"{head}. {description}" if description else head


#: Bounds on what one tool's schema adds to its full-text row: a hostile or generated schema
#: (thousands of properties or enum values) must not make one row dominate the index.
MAX_SCHEMA_WORDS_CHARS = 4000
MAX_ENUM_VALUES = 20
_SCHEMA_DEPTH = 2


def _schema_words(properties: object, depth: int, out: list[str]) -> None:
    """Argument names (split into words), descriptions and enum values, nested objects and
    arrays of objects down to :data:`_SCHEMA_DEPTH`."""
    if not isinstance(properties, dict):
        return
    for arg_name, arg in properties.items():
        out.append(split_identifier(str(arg_name)))
        if not isinstance(arg, dict):
            continue
        if arg.get("description"):
            out.append(str(arg["description"]))
        if isinstance(arg.get("enum"), list):
            out.append(" ".join(str(v) for v in arg["enum"][:MAX_ENUM_VALUES] if isinstance(v, str | int | float)))
        if depth < _SCHEMA_DEPTH:
            _schema_words(arg.get("properties"), depth + 1, out)
            items = arg.get("items")
            if isinstance(items, dict):
                _schema_words(items.get("properties"), depth + 1, out)


def tool_fts_fields(tool: dict[str, Any], context: str = "") -> tuple[str, str, str, str]:
    """(name, description, arguments, server) columns of the FTS5 row for a tool.

    ``context`` is the server name the tool is embedded with (the registry entry's name when a
    workload is linked, else its own). The name keeps its original spelling beside the split
    words, so ``getUserInfo`` matches a query that spells it either way.
    """
    name = str(tool.get("name", ""))
    schema = tool.get("inputSchema") or {}
    args: list[str] = []
    if isinstance(schema, dict):
        _schema_words(schema.get("properties"), 1, args)
    return (f"{name} {split_identifier(name)}", str(tool.get("description") or ""),
            " ".join(args)[:MAX_SCHEMA_WORDS_CHARS], split_identifier(context))


def server_embedding_text(name: str, description: str, tags: list[str] | None = None) -> str:
    text = f"{split_identifier(name)}: {description}" if description else split_identifier(name)
    if tags:
        text += " (" + ", ".join(tags) + ")"
    return text


def own_description(name: str, tools: list[dict[str, Any]]) -> str:
    """The description an unlinked workload gets: its name and what its tools are called."""
    if not tools:
        return f"MCP server {name}"
    names = ", ".join(str(t.get("name", "")) for t in tools[:50])
    more = f" and {len(tools) - 50} more" if len(tools) > 50 else ""
    return f"MCP server {name} with tools: {names}{more}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
