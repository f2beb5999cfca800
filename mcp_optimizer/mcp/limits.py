"""Bounds on everything an MCP server sends, and clipping of oversized tool definitions.

Any namespace user can declare an MCPServer, so its server is a stranger: what it answers must
cost the operator a bounded amount of memory and time, and must not make search slower for
everyone else (a 20 MB description made every unscoped ``find_tool`` ~17x slower, because the
token estimate re-serialised it on every call and full-text search scanned it).

Two kinds of bound:

* **bytes on the wire**, enforced while reading (:mod:`mcp_optimizer.mcp.client` counts every
  response body as it streams in and stops at the bound, so a 50 MB answer is never buffered):
  one ``tools/list`` page, all pages of one listing, one call result. Exceeding one fails the
  operation with ``reason="limit"`` and a message naming the bound and its setting.
* **per tool**, applied to what was received: a description or schema over its bound is stored
  *clipped*, with a visible marker, and the tool's ``_meta`` lists what was clipped
  (:func:`clipped_fields`), so the status can say so. More tools than the bound fails the listing.

The defaults are far above real servers: on the 527 real tools of LiveMCPBench the longest
description is 3,866 characters, the largest inputSchema 5,077 bytes, the largest whole
``tools/list`` answer 40 KB and the most tools on one server 35. Parsing is what costs memory:
a 0.9 MiB page of 12,000 tiny tools peaks 27 MiB above the client's base while the SDK parses it
(and parsing grows with the page), hence a 1 MiB page (also the SDK's own SSE event limit) and a
bound on how many large listings are parsed at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CLIPPED_KEY",
    "MAX_TOOL_NAME_CHARS",
    "ClientLimits",
    "LimitExceeded",
    "clip_note",
    "clip_tool",
    "clipped_fields",
]

KIB: Final = 1024
MIB: Final = 1024 * KIB

#: ``_meta`` key of a stored tool listing the fields that were clipped (``description``, ...).
CLIPPED_KEY: Final = "mcp-optimizer.dev/clipped"
#: Keyword added to a clipped schema (unknown keywords are ignored by JSON Schema validators).
SCHEMA_MARKER_KEY: Final = "x-mcp-optimizer-clipped"
#: A tool name is the key a call is made with: it cannot be clipped, so a longer one fails the
#: listing. MCP allows 1-128 characters; twice that leaves room for servers that stretch it.
MAX_TOOL_NAME_CHARS: Final = 256
#: Titles and annotations are display hints; over these bounds they are clipped or dropped.
MAX_TITLE_CHARS: Final = 1024
MAX_ANNOTATIONS_BYTES: Final = 4 * KIB
#: Per-property description kept when a schema has to be reduced to its top-level properties.
_REDUCED_PROPERTY_DESCRIPTION: Final = 200
#: A listing that has received this many bytes is large and needs a turn (see
#: :attr:`ClientLimits.concurrent_large_lists`): 6x the largest real answer measured.
LARGE_LIST_BYTES: Final = 256 * KIB
#: How many tool names a clip note lists.
_NAMES_IN_NOTE: Final = 5


class LimitExceeded(Exception):
    """A server sent more than a bound allows; the message names the bound and its setting."""


@dataclass(frozen=True)
class ClientLimits:
    """The bounds (settings ``MCP_OPTIMIZER_MAX_*``, see :mod:`mcp_optimizer.config`)."""

    #: Bytes of one HTTP response while listing tools (one ``tools/list`` page).
    page_bytes: int = 1 * MIB
    #: Bytes of all responses of one listing (every page, the handshake, server notifications).
    list_bytes: int = 8 * MIB
    #: Tools one server may offer.
    tools: int = 1000
    #: Characters of a tool description; longer ones are stored clipped with a marker.
    description_chars: int = 8 * KIB
    #: Bytes of a tool's inputSchema (compact JSON); larger ones are reduced to their top-level
    #: properties with a marker. outputSchema has the same bound (dropped when over it).
    schema_bytes: int = 64 * KIB
    #: Bytes of one call result (and of any one response while calling). A result over it is
    #: refused: 1 MiB of text is about 250,000 tokens, more than any model's context.
    call_result_bytes: int = 1 * MIB
    #: Listings over :data:`LARGE_LIST_BYTES` read at the same time, process-wide; more wait for
    #: a turn (within their deadline). Parsing is what costs memory (27 MiB for a 0.9 MiB page of
    #: tiny tools), so this bounds what several hostile servers at once can take; real listings
    #: (40 KB at most, measured) never wait.
    concurrent_large_lists: int = 4

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def clip_text(text: str, limit: int, what: str) -> str:
    """``text`` cut to ``limit`` characters plus a marker saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [... {what} clipped by mcp-optimizer: {len(text):,} characters, limit {limit:,}]"


def _reduced_schema(schema: Mapping[str, Any], limit: int, size: int) -> dict[str, Any]:
    """A schema that fits ``limit``: top-level properties (type, short description) while they fit."""
    reduced: dict[str, Any] = {
        "type": "object",
        SCHEMA_MARKER_KEY: f"inputSchema of {size:,} bytes reduced to its top-level properties "
        f"(limit {limit:,} bytes)",
        "properties": {},
    }
    budget = limit - _json_size(reduced)
    properties = schema.get("properties")
    kept: dict[str, Any] = {}
    if isinstance(properties, Mapping):
        for name, prop in properties.items():
            entry: dict[str, Any] = {}
            if isinstance(prop, Mapping):
                kind = prop.get("type")
                if isinstance(kind, str) or (
                    isinstance(kind, list) and len(kind) <= 8 and all(isinstance(k, str) for k in kind)
                ):
                    entry["type"] = kind
                description = prop.get("description")
                if isinstance(description, str) and description:
                    entry["description"] = description[:_REDUCED_PROPERTY_DESCRIPTION]
            cost = _json_size({str(name): entry}) + 1
            if cost > budget:
                break
            kept[str(name)] = entry
            budget -= cost
    reduced["properties"] = kept
    required = schema.get("required")
    if isinstance(required, list):
        names = [r for r in required if isinstance(r, str) and r in kept]
        if names and _json_size(names) + 12 <= budget:
            reduced["required"] = names
    return reduced


def clip_tool(tool: Mapping[str, Any], limits: ClientLimits) -> dict[str, Any]:
    """The tool as it is stored: oversized parts clipped, and ``_meta`` naming what was clipped.

    Raises :class:`LimitExceeded` for a name longer than :data:`MAX_TOOL_NAME_CHARS`.
    """
    name = str(tool.get("name") or "")
    if len(name) > MAX_TOOL_NAME_CHARS:
        raise LimitExceeded(
            f"a tool name has {len(name):,} characters, more than the {MAX_TOOL_NAME_CHARS} a tool name may have "
            f"(it starts {name[:40]!r})"
        )
    out = dict(tool)
    clipped: list[str] = []
    description = out.get("description")
    if isinstance(description, str) and len(description) > limits.description_chars:
        out["description"] = clip_text(description, limits.description_chars, "description")
        clipped.append("description")
    title = out.get("title")
    if isinstance(title, str) and len(title) > MAX_TITLE_CHARS:
        out["title"] = clip_text(title, MAX_TITLE_CHARS, "title")
        clipped.append("title")
    schema = out.get("inputSchema")
    if isinstance(schema, Mapping):
        size = _json_size(schema)
        if size > limits.schema_bytes:
            out["inputSchema"] = _reduced_schema(schema, limits.schema_bytes, size)
            clipped.append("inputSchema")
    if "outputSchema" in out and _json_size(out["outputSchema"]) > limits.schema_bytes:
        del out["outputSchema"]  # only a hint for clients; dropping it keeps results valid
        clipped.append("outputSchema")
    if "annotations" in out and _json_size(out["annotations"]) > MAX_ANNOTATIONS_BYTES:
        del out["annotations"]
        clipped.append("annotations")
    if clipped:
        out["_meta"] = {CLIPPED_KEY: clipped}
    return out


def clipped_fields(tool: Mapping[str, Any]) -> list[str]:
    """The fields :func:`clip_tool` clipped in a stored tool (empty when none)."""
    meta = tool.get("_meta")
    fields = meta.get(CLIPPED_KEY) if isinstance(meta, Mapping) else None
    return [str(f) for f in fields] if isinstance(fields, list) else []


def clip_note(tools: Iterable[Mapping[str, Any]], limits: ClientLimits | None = None) -> str | None:
    """One sentence for the status when tools were clipped, e.g. ``2 of 12 tools were stored
    clipped to the operator's bounds: huge (description), deep (inputSchema)``; None when none were."""
    tools = list(tools)
    hits = [(str(t.get("name")), clipped_fields(t)) for t in tools]
    hits = [(name, fields) for name, fields in hits if fields]
    if not hits:
        return None
    shown = ", ".join(f"{name[:64]} ({'/'.join(fields)})" for name, fields in hits[:_NAMES_IN_NOTE])
    more = f" and {len(hits) - _NAMES_IN_NOTE} more" if len(hits) > _NAMES_IN_NOTE else ""
    bounds = ""
    if limits is not None:
        bounds = (
            f" (descriptions {limits.description_chars:,} characters, schemas {limits.schema_bytes:,} bytes: "
            "MCP_OPTIMIZER_MAX_DESCRIPTION_CHARS, MCP_OPTIMIZER_MAX_SCHEMA_BYTES)"
        )
    return f"{len(hits)} of {len(tools)} tools were stored clipped to the operator's bounds{bounds}: {shown}{more}"
