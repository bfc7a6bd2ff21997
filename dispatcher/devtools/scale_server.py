"""A plain MCP server (the official SDK, stateless) for the scale figures of ``bench_scale``.

    python -m edgefleet.dispatcher.devtools.scale_server --port PORT

Every path answers as ``/mcp``, so one process can stand for hundreds of registered replicas
(``http://127.0.0.1:PORT/r/<n>/mcp``). Tools: ``echo`` (returns its text) and ``hold``
(reports progress at once, so the caller's answer becomes an SSE stream, then holds the
call open for ``seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("scale", version="1.0")


@server.tool()
async def echo(text: str) -> str:
    """Return ``text``."""
    return text


@server.tool()
async def hold(seconds: float, ctx: Context) -> str:
    """Report progress, then keep the call open ``seconds`` (at most 600)."""
    await ctx.report_progress(0, 1, "holding")
    await asyncio.sleep(min(max(seconds, 0.0), 600.0))
    return "released"


class AnyPath:
    """Every request path is /mcp (one server behind many replica URLs)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "path": "/mcp", "raw_path": b"/mcp"}
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = server.streamable_http_app(stateless_http=True)
    uvicorn.run(
        AnyPath(app),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
