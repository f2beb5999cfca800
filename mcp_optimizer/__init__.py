"""mcp-optimizer-operator: an index of every MCP server a Kubernetes cluster knows about."""

__version__ = "0.1.0"
