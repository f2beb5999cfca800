"""A stdio MCP server behind an HTTP bridge, as ToolHive's proxy runner and mcp-proxy run them.

ToolHive's registry lists most servers as ``transport: stdio``. In a cluster such a server runs
as the child process of a proxy that serves it over streamable HTTP (``/mcp``) and SSE
(``/sse``); the MCPServer then says ``transport: stdio`` and points at the proxy.
:class:`StdioBridge` is that arrangement on loopback: it starts
``python -m mcp_optimizer.testing.mcp_servers --stdio`` as a child process, speaks MCP to it over
its stdin and stdout with the SDK's stdio client, and serves every HTTP session by forwarding
``tools/list`` (page by page, cursors passed through) and ``tools/call`` to that one child. Like
mcp-proxy (built on MCP SDK 1.x) it answers the 2026 protocol probe with HTTP 400.

Run one standalone with
``python -m mcp_optimizer.testing.stdio_bridge --tools tools.json --port 8000``, or in front of
any stdio server with ``python -m mcp_optimizer.testing.stdio_bridge --port 8000 -- COMMAND ARGS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from mcp_optimizer.testing.mcp_servers import (
    DEFAULT_HOST,
    ToolDef,
    _ThreadedServerBase,
    _UvicornThread,
    refuse_without_session,
)

__all__ = ["StdioBridge", "build_bridge_app", "stdio_server_parameters"]


def stdio_server_parameters(tools_file: Path, *, name: str, page_size: int | None = None) -> StdioServerParameters:
    """How to start the in-repo echo server over stdio (the bridge's child process)."""
    args = ["-m", "mcp_optimizer.testing.mcp_servers", "--stdio", "--tools", str(tools_file), "--name", name]
    if page_size is not None:
        args += ["--page-size", str(page_size)]
    return StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))


class _BridgeApp:
    """ASGI app: ``/mcp``, ``/sse`` and ``/messages/`` in front of one stdio child process."""

    def __init__(self, child: StdioServerParameters, *, legacy: bool = True) -> None:
        self._child = child
        self._legacy = legacy
        self._server: Server[Any] | None = None
        self._manager: StreamableHTTPSessionManager | None = None
        self._sse = SseServerTransport("/messages/")

    @staticmethod
    def _proxy(client: Client) -> Server[Any]:
        async def on_list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            page = await client.list_tools(cursor=params.cursor if params else None, cache_mode="bypass")
            return types.ListToolsResult(tools=page.tools, next_cursor=page.next_cursor)

        async def on_call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult | types.InputRequiredResult:
            # The child's JSON-RPC errors (an unknown or task-only tool) propagate as they are.
            return await client.call_tool(params.name, params.arguments)

        return Server("stdio-bridge", version="0.0.0", on_list_tools=on_list_tools, on_call_tool=on_call_tool)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        server, manager, path = self._server, self._manager, scope["path"]
        if server is None or manager is None:
            await PlainTextResponse("Service Unavailable", status_code=503)(scope, receive, send)
        elif path in ("/mcp", "/mcp/"):
            if self._legacy:
                await refuse_without_session(manager.handle_request, scope, receive, send)
            else:
                await manager.handle_request(scope, receive, send)
        elif path in ("/sse", "/sse/") and scope["method"] == "GET":
            async with self._sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        elif path.startswith("/messages"):
            await self._sse.handle_post_message(scope, receive, send)
        else:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        started = False
        try:
            async with AsyncExitStack() as stack:
                # The child is a pre-2026 server too, as stdio servers in the wild are.
                client = await stack.enter_async_context(Client(self._child, mode="legacy", cache=None))
                self._server = self._proxy(client)
                self._manager = StreamableHTTPSessionManager(app=self._server, security_settings=None)
                await stack.enter_async_context(self._manager.run())
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                self._server = self._manager = None
        except Exception as exc:
            failure: Message = {
                "type": "lifespan.shutdown.failed" if started else "lifespan.startup.failed",
                "message": repr(exc),
            }
            await send(failure)
            return
        await send({"type": "lifespan.shutdown.complete"})


def build_bridge_app(child: StdioServerParameters, *, legacy: bool = True) -> Any:
    """The bridge as an ASGI app (lifespan on) in front of the stdio server ``child`` starts."""
    return _BridgeApp(child, legacy=legacy)


class StdioBridge(_ThreadedServerBase):
    """An echo MCP server run over stdio behind an HTTP bridge on ``127.0.0.1:<free port>``.

    :attr:`url` is the bridge's streamable HTTP endpoint (``/mcp``), :attr:`sse_url` its SSE
    endpoint. The tools are fixed when it starts (the child reads them from a file).
    """

    def __init__(
        self,
        tools: Iterable[ToolDef],
        *,
        name: str = "stdio-server",
        page_size: int | None = None,
        legacy: bool = True,
        host: str = DEFAULT_HOST,
    ) -> None:
        self._host = host
        self.tools = [dict(tool) for tool in tools]
        handle, path = tempfile.mkstemp(prefix="stdio-bridge-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(self.tools, f)
        self._tools_file = Path(path)
        app = build_bridge_app(stdio_server_parameters(self._tools_file, name=name, page_size=page_size),
                               legacy=legacy)
        self._runner = _UvicornThread(app, host=host, port=0, name=f"stdio-bridge {name}")

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def sse_url(self) -> str:
        return f"{self.base_url}/sse"

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._tools_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the echo server over stdio behind an HTTP bridge until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m mcp_optimizer.testing.stdio_bridge",
        description="Run the echo MCP server over stdio behind an HTTP bridge (streamable HTTP at /mcp, SSE at "
        "/sse), as ToolHive's proxy or mcp-proxy run stdio servers.",
    )
    parser.add_argument("--tools", type=Path, help="JSON file: a list of MCP tool objects for the echo server")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--name", default="stdio-server")
    parser.add_argument("--page-size", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS: the stdio server to bridge")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        child = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    elif args.tools is not None:
        child = stdio_server_parameters(args.tools.resolve(), name=args.name, page_size=args.page_size)
    else:
        parser.error("give --tools FILE or -- COMMAND ARGS")
    app = build_bridge_app(child)
    uvicorn.run(app, host=args.host, port=args.port, lifespan="on", log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
