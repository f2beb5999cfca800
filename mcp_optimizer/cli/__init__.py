"""The ``mcp-optimizer`` command line."""
