"""The texts that are embedded and full-text indexed for servers and tools.

One place decides what a tool "says", so that ingestion, re-embedding and search agree.
Measured on 533 real tools: BM25 over the tool name, description and argument names and
descriptions beat embeddings alone, so the full-text row carries the arguments too; the
embedding text is kept short (context, name, description) because MiniLM truncates at 256
tokens and long argument lists drown the description.
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


def tool_fts_fields(tool: dict[str, Any]) -> tuple[str, str, str]:
    """(name, description, arguments) columns of the FTS5 row for a tool."""
    name = str(tool.get("name", ""))
    schema = tool.get("inputSchema") or {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    args: list[str] = []
    if isinstance(properties, dict):
        for arg_name, arg in properties.items():
            args.append(split_identifier(str(arg_name)))
            if isinstance(arg, dict) and arg.get("description"):
                args.append(str(arg["description"]))
    return f"{name} {split_identifier(name)}", str(tool.get("description") or ""), " ".join(args)


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
