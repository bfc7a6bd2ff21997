"""An MCP server that knows nothing of edgefleet (official SDK only) whose resources change
on demand, for the subscription tests.

    python tests/support/watched_server.py PORT [--legacy-only]

Resources ``note://a`` and ``note://b``. The tool ``touch(uri)`` announces that ``uri``
changed to whoever subscribed to it: 2026-07-28 ``subscriptions/listen`` streams (the SDK's
subscription bus) and 2025-11-25 sessions that sent ``resources/subscribe`` (on their GET
stream). It answers with how many 2025 sessions it told, so a test knows the agent really
had a subscriber. ``--legacy-only`` makes it a 2025-era server (``plain_mcp_server``).
"""

import sys
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.session import ServerSession
from plain_mcp_server import LegacyOnly  # run as a script: its folder is on the path

server = MCPServer("notes", version="1.0")
# 2025-era subscribers: URI -> session id -> that session (to send it notifications).
subscribers: dict[str, dict[str, ServerSession]] = {}


@server.resource("note://a")
def note_a() -> str:
    return "note a"


@server.resource("note://b")
def note_b() -> str:
    return "note b"


@server.tool()
async def touch(uri: str, ctx: Context) -> dict[str, Any]:
    """Announce that ``uri`` changed."""
    await ctx.notify_resource_updated(uri)
    told = 0
    for session_id, session in list(subscribers.get(uri, {}).items()):
        try:
            await session.send_resource_updated(uri)
            told += 1
        except Exception:  # noqa: BLE001 - a session that went away is forgotten
            subscribers[uri].pop(session_id, None)
    return {"uri": uri, "legacy_sessions_told": told}


@server.tool()
def listeners() -> int:
    """How many 2026 subscriptions/listen streams are open on this server."""
    return len(server._lowlevel_server._request_handlers["subscriptions/listen"].handler._streams)


@server.tool()
def subscriber_count(uri: str) -> int:
    """How many 2025 sessions subscribed to ``uri`` (and did not unsubscribe)."""
    return len(subscribers.get(uri, ()))


def _session_id(ctx: ServerRequestContext[Any, Any]) -> str:
    # The session object may differ per request; the session's id does not.
    request: Any = ctx.request
    return str(request.headers.get("mcp-session-id")) if request is not None else str(id(ctx.session))


async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
    subscribers.setdefault(params.uri, {})[_session_id(ctx)] = ctx.session
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    subscribers.get(params.uri, {}).pop(_session_id(ctx), None)
    return types.EmptyResult()


server._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
server._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)


if __name__ == "__main__":
    app = server.streamable_http_app(stateless_http=False)
    uvicorn.run(
        LegacyOnly(app) if "--legacy-only" in sys.argv else app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
    )
