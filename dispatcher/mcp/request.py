"""One request on the MCP endpoint, as the era handlers see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.shared import jsonrpc
    from edgefleet.shared.asgi import Disconnects, Receive, TrackingSend

# ASGI scope key set by the app for /mcp/agents/<agent>: the request sees that agent alone.
SCOPE_VIEW = "edgefleet.view"


@dataclass(slots=True)
class McpRequest:
    message: jsonrpc.Message
    headers: dict[str, str]
    receive: Receive
    send: TrackingSend
    peer: str | None
    identity: Identity
    view: str | None = None  # the agent of a per-agent mount; None on /mcp
    disconnects: Disconnects | None = None  # the connection's, when the server tells (asgi.SCOPE_DISCONNECTS)
