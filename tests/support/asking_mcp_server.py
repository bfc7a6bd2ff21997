"""An MCP server whose tools ask the client things mid-call (official SDK only): elicitation,
sampling, roots. The SDK asks the way the negotiated era says: 2025-11-25 with requests on
the call's stream, 2026-07-28 with input_required rounds (its requestState sealed with a key
of this process only, the SDK's default).

    python tests/support/asking_mcp_server.py PORT [--legacy-only | --modern-only]

``--legacy-only``: a 2025-era server (stateful: server->client requests need a session);
``--modern-only``: a 2026-era server that refuses 2025-era requests (as 2026-only servers do).
"""

import sys
from typing import Annotated, Any

import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, Elicit, ListRoots, MCPServer, Resolve, Sample
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import CreateMessageResult, ListRootsResult, SamplingMessage, TextContent
from pydantic import BaseModel

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from plain_mcp_server import LegacyOnly

server = MCPServer("asker", version="1.0")


class Dates(BaseModel):
    start: str


class Budget(BaseModel):
    euros: int


def ask_dates(city: str) -> Elicit[Dates]:
    return Elicit(f"Which dates in {city}?", Dates)


def ask_budget(city: str) -> Elicit[Budget]:
    return Elicit(f"What budget for {city}?", Budget)


def ask_haiku(topic: str) -> Sample:
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=f"A haiku on {topic}"))], max_tokens=50
    )


def ask_roots() -> ListRoots:
    return ListRoots()


@server.tool()
def plan_trip(city: str, dates: Annotated[Dates, Resolve(ask_dates)]) -> str:
    """One question (elicitation), then the answer."""
    return f"trip to {city} from {dates.start}"


@server.tool()
def plan_budget_trip(
    city: str,
    dates: Annotated[Dates, Resolve(ask_dates)],
    budget: Annotated[Budget, Resolve(ask_budget)],
) -> str:
    """Two questions."""
    return f"trip to {city} from {dates.start} for {budget.euros} EUR"


@server.tool()
def haiku(topic: str, poem: Annotated[CreateMessageResult, Resolve(ask_haiku)]) -> str:
    """Sampling."""
    content: Any = poem.content
    return f"haiku: {getattr(content, 'text', content)}"


@server.tool()
def roots(listing: Annotated[ListRootsResult, Resolve(ask_roots)]) -> str:
    """The client's roots."""
    return "roots: " + ",".join(str(r.uri) for r in listing.roots)


@server.tool()
async def blunt_roots(ctx: Context) -> str:
    """Asks for roots on the call's stream without checking the client declared them (as
    some 2025-era servers do); and pings the client first."""
    related = ServerMessageMetadata(related_request_id=ctx.request_context.request_id)
    await ctx.session.send_request(types.PingRequest(), types.EmptyResult, metadata=related)
    try:
        listing = await ctx.session.send_request(types.ListRootsRequest(), types.ListRootsResult, metadata=related)
    except MCPError as exc:
        return f"pinged; roots refused: {exc.error.message}"
    return "pinged; roots: " + ",".join(str(r.uri) for r in listing.roots)


class ModernOnly:
    """Refuses every request that is not 2026-07-28 (initialize included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"mcp-protocol-version", b"2026-07-28") not in scope["headers"]:
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request: Unsupported protocol version"}}'
            await send(
                {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


if __name__ == "__main__":
    legacy = "--legacy-only" in sys.argv
    app: Any = server.streamable_http_app(stateless_http=not legacy)
    if legacy:
        app = LegacyOnly(app)
    elif "--modern-only" in sys.argv:
        app = ModernOnly(app)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
