"""An MCP server that knows nothing of edgefleet (official SDK only), for the static-agent tests.

    python tests/support/plain_mcp_server.py PORT [--stateful] [--legacy-only]

``--legacy-only`` makes it a 2025-era server, as most servers in the wild are: a request
naming protocol 2026-07-28 gets what the 2025-11-25 transport prescribes for a version it
does not support (HTTP 400).
"""

import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("weather", version="2.0")


@server.tool()
def forecast(city: str, days: int = 1) -> dict:
    """A deterministic forecast (temperature from the city name) — enough to prove routing."""
    base = sum(map(ord, city)) % 30
    return {"city": city, "days": [{"day": d, "celsius": base + d} for d in range(days)]}


class LegacyOnly:
    """Refuses 2026-07-28 requests the way a 2025-only server does."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"mcp-protocol-version", b"2026-07-28") in scope["headers"]:
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request: Unsupported protocol version"}}'
            await send(
                {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


if __name__ == "__main__":
    stateless = "--stateful" not in sys.argv
    app = server.streamable_http_app(stateless_http=stateless)
    uvicorn.run(
        LegacyOnly(app) if "--legacy-only" in sys.argv else app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
    )
