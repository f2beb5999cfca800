"""The one base exception of mcp-optimizer.

Every error raised on purpose for a user to read (a catalog that does not parse, an index that
cannot be opened, a model that cannot be loaded, an MCP server that does not answer, a setting
that makes no sense) is a :class:`McpOptimizerError`, as every error of the MCP Python SDK is an
``MCPError``: a caller catches one type and prints its message, which names the object at fault.
Subclasses keep the built-in base they had (``ValueError``, ``RuntimeError``), so existing
``except`` clauses still hold.
"""

from __future__ import annotations


class McpOptimizerError(Exception):
    """Base of every error mcp-optimizer raises for a user to read."""


class ConfigError(McpOptimizerError, ValueError):
    """A setting (environment variable or flag) that cannot be used; the message names it."""
