"""Pinned tools: chosen workload tools advertised beside the meta-tools under their own names.

Agents that never think of calling ``find_tool`` still see the handful of tools everyone
needs. A pin is written ``<workload name>/<tool>`` and split at the *last* ``/``: MCP tool
names cannot contain one, Kubernetes workload names (``namespace/name``) do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from mcp.shared.tool_name_validation import TOOL_NAME_REGEX

from mcp_optimizer.errors import McpOptimizerError

_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME = 128


class PinnedToolsError(McpOptimizerError, ValueError):
    """The pinned tools setting cannot be used; the endpoint refuses to start."""


@dataclass(frozen=True)
class PinnedTool:
    #: The name clients see and call: ``<server>__<tool>`` made valid under MCP's tool-name rules.
    exposed_name: str
    server: str
    tool: str


def exposed_name(server: str, tool: str) -> str:
    """``<server>__<tool>`` with every run of invalid characters replaced by ``_``, at most 128 chars.

    A name cut to length gets a short hash of the full pin so two long pins stay distinct.
    """
    parts = [_INVALID_CHARS.sub("_", part).strip("_.-") or "x" for part in (server, tool)]
    name = "__".join(parts)
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}_{digest}"
    assert TOOL_NAME_REGEX.fullmatch(name), name
    return name


def parse_pins(specs: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, PinnedTool]:
    """Pins by exposed name, in configuration order; raises :class:`PinnedToolsError`."""
    taken = set(reserved)
    pins: dict[str, PinnedTool] = {}
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        server, sep, tool = spec.strip().rpartition("/")
        if not sep or not server or not tool:
            raise PinnedToolsError(f"pinned tool {spec!r} must be written <workload name>/<tool>")
        if (server, tool) in seen:
            continue
        seen.add((server, tool))
        name = exposed_name(server, tool)
        if name in taken or name in pins:
            raise PinnedToolsError(f"pinned tool {spec!r} would be exposed as {name!r}, which is already taken")
        pins[name] = PinnedTool(name, server, tool)
    return pins
