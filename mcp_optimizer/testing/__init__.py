"""Real MCP servers on loopback, a public API for testing MCP clients and deployments.

* :mod:`mcp_optimizer.testing.mcp_servers`: servers built on the MCP SDK whose tools come from plain
  definitions (one per port, or hundreds behind one port), servers that hang, refuse or act as a
  hostile tenant would; ``python -m mcp_optimizer.testing.mcp_servers --tools tools.json --port 8000``.
* :mod:`mcp_optimizer.testing.stdio_bridge`: a stdio MCP server served over streamable HTTP and SSE
  (the demo runs its stdio server behind it); ``python -m mcp_optimizer.testing.stdio_bridge``.

Nothing here reads a model, data or any path of a source checkout: the project's own tests find
those through ``tests/support``. This package ships because ``mcp_optimizer.demo`` runs it.

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
