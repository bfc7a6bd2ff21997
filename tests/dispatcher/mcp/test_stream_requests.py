"""A server->client request on a call's stream reaches the client only when an answer can
be taken back (a 2025-era upstream session): a 2026-07-28 server MUST NOT send independent
requests on a response stream, and a hostile agent sent clients 100,000 sampling requests."""

from __future__ import annotations

from typing import Any, cast

from edgefleet.dispatcher.mcp.bridge import ClientAnswer, EraAnswer, RelayContext
from edgefleet.dispatcher.mcp.relay import RequestRelay
from edgefleet.dispatcher.paths.route import Route
from edgefleet.shared import sse


class Client:
    """The client's end of the call: what reaches it."""

    def __init__(self) -> None:
        self.started = False
        self.ended = False
        self.events = b""

    async def open_stream(self, route: Route | None) -> None:
        self.started = True

    async def send_events(self, events: bytes) -> None:
        self.events += events


class Ours:
    """The dispatcher's own questions (mcp.shim) are the ids it owns."""

    def owns(self, request_id: Any) -> bool:
        return request_id == "edgefleet-q1"


SAMPLING = b'{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage","params":{"messages":[]}}'
OURS = b'{"jsonrpc":"2.0","id":"edgefleet-q1","method":"elicitation/create","params":{}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'


def stream(*messages: bytes) -> bytes:
    return b"".join(sse.frame(m) for m in messages)


async def relayed(answer: EraAnswer, client: Client) -> list[Any]:
    """What reached the client, each message by its method, or its id for the response."""
    await answer.open_stream(Route("direct", replica="a-1", session=None))  # a 2026-era upstream: no session
    await answer.send_events(stream(PROGRESS, SAMPLING, OURS, RESULT))
    return [m.get("method", m.get("id")) for m in sse.messages(client.events)]


async def test_a_2026_upstreams_requests_reach_neither_era_of_client() -> None:
    ours = cast(RequestRelay, Ours())
    for make in (
        lambda c: EraAnswer(cast(ClientAnswer, c), modern=True, refuse=ours),  # a 2026 client
        lambda c: EraAnswer(  # a 2025 client with a session of its own
            cast(ClientAnswer, c), modern=False, relay=RelayContext(ours, client_session="s", owner="o")
        ),
    ):
        client = Client()
        assert await relayed(make(client), client) == ["notifications/progress", "elicitation/create", 1]
