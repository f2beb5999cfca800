"""Talking to workload MCP servers (the operator acts as an MCP client here)."""

from mcp_optimizer.mcp.client import McpClientError, call_tool, list_tools

__all__ = ["McpClientError", "call_tool", "list_tools"]
