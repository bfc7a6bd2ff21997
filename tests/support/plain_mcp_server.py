"""An MCP server that knows nothing of edgefleet (official SDK only), for the static-agent tests."""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("weather", version="2.0")


@server.tool()
def forecast(city: str, days: int = 1) -> dict:
    """A deterministic forecast (temperature from the city name) — enough to prove routing."""
    base = sum(map(ord, city)) % 30
    return {"city": city, "days": [{"day": d, "celsius": base + d} for d in range(days)]}


if __name__ == "__main__":
    stateless = "--stateful" not in sys.argv
    app = server.streamable_http_app(stateless_http=stateless)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
