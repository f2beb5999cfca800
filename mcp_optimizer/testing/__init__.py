"""Test and benchmark helpers shipped with the package (real MCP servers on loopback).

Names are re-exported lazily so ``python -m mcp_optimizer.testing.mcp_servers`` does not
import that module twice (runpy warns when a package pre-imports the module it runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp_optimizer.testing.mcp_servers import (
        AsgiTestServer,
        HangingServer,
        McpHostApp,
        McpTestServer,
        McpTestServerFarm,
        ToolRegistry,
        build_mcp_app,
        build_mcp_server,
        closed_port,
        make_tool,
        refused_url,
    )

__all__ = [
    "AsgiTestServer",
    "HangingServer",
    "McpHostApp",
    "McpTestServer",
    "McpTestServerFarm",
    "ToolRegistry",
    "build_mcp_app",
    "build_mcp_server",
    "closed_port",
    "make_tool",
    "refused_url",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("mcp_optimizer.testing.mcp_servers"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
