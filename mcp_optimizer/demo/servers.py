"""Small MCP servers with real tools for the demo, each run the way such servers run in the wild.

* ``time``: the current time in any timezone and conversions between timezones, over **stdio**
  (as ToolHive's registry lists most servers); the demo puts it behind the HTTP bridge of
  :mod:`mcp_optimizer.testing.stdio_bridge`, as ToolHive's proxy or mcp-proxy would.
* ``calculator``: arithmetic, over **streamable HTTP**.
* ``text``: word counts and slugs, over **SSE** (older servers).

``python -m mcp_optimizer.demo.servers NAME [--port P]``; ``--port`` is ignored for stdio.
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import uvicorn
from mcp.server.mcpserver import MCPServer

#: How each server is reached: ``stdio`` behind a bridge, or the HTTP transport it serves.
TRANSPORTS = {"time": "stdio", "calculator": "streamable-http", "text": "sse"}


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}: use an IANA name such as Europe/Paris") from exc


def time_server() -> MCPServer:
    server = MCPServer("time", instructions="Current time and timezone conversions.")

    @server.tool(description="Get the current time in a specific timezone (an IANA name such as Asia/Tokyo).")
    def get_current_time(timezone: str) -> dict[str, str]:
        now = datetime.now(_zone(timezone))
        return {"timezone": timezone, "datetime": now.isoformat(timespec="seconds"), "day_of_week": now.strftime("%A")}

    @server.tool(description="Convert a time of day (HH:MM, 24-hour) from one timezone to another.")
    def convert_time(source_timezone: str, time: str, target_timezone: str) -> dict[str, str]:
        hours, _, minutes = time.partition(":")
        today = datetime.now(_zone(source_timezone))
        source = today.replace(hour=int(hours), minute=int(minutes), second=0, microsecond=0)
        target = source.astimezone(_zone(target_timezone))
        return {"source": source.isoformat(timespec="minutes"), "target": target.isoformat(timespec="minutes")}

    return server


def calculator_server() -> MCPServer:
    server = MCPServer("calculator", instructions="Exact arithmetic.")

    @server.tool(description="Add two numbers and return the sum.")
    def add(a: float, b: float) -> float:
        return a + b

    @server.tool(description="Multiply two numbers and return the product.")
    def multiply(a: float, b: float) -> float:
        return a * b

    @server.tool(description="What percentage one number is of another, e.g. 25 of 200 is 12.5 percent.")
    def percentage(part: float, whole: float) -> float:
        if whole == 0:
            raise ValueError("whole must not be 0")
        return 100 * part / whole

    return server


def text_server() -> MCPServer:
    server = MCPServer("text", instructions="Simple text utilities.")

    @server.tool(description="Count the words, sentences and characters of a text.")
    def count_words(text: str) -> dict[str, int]:
        sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
        return {"words": len(text.split()), "sentences": len(sentences), "characters": len(text)}

    @server.tool(description="Turn a title into a URL slug, e.g. 'Hello, World!' becomes 'hello-world'.")
    def slugify(title: str) -> str:
        ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
        return re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")

    return server


SERVERS = {"time": time_server, "calculator": calculator_server, "text": text_server}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcp_optimizer.demo.servers", description=__doc__)
    parser.add_argument("name", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = SERVERS[args.name]()
    transport = TRANSPORTS[args.name]
    if transport == "stdio":
        server.run("stdio")
        return 0
    app = server.streamable_http_app(host=args.host) if transport == "streamable-http" else server.sse_app(
        host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
