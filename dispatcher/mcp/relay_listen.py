"""A 2026-07-28 ``subscriptions/listen`` on a per-agent mount, forwarded to the agent and
relayed event by event (docs/design-mcp-surface.md, D1 and D11).

The request goes as it came to the nearest healthy replica that speaks 2026-07-28; its
acknowledgment and notifications come back re-framed as SSE whatever the agent used (the
reference server answers NDJSON over chunked ``application/json``), each bounded by
``EDGEFLEET_MAX_EVENT_BYTES`` and tagged with the client's listen id as the client sent
it. An answer instead of an acknowledgment (the agent's error) is the client's answer.

When the agent's stream ends (its replica stops, is ejected, or leaves the fleet) the
relay moves to another replica and swallows the new acknowledgment: the client's stream
goes on (updates in between are lost, as the spec allows). With no replica left, the
client's stream ends without the completion response, which tells it to listen again.
The client closing its stream closes the agent's (the spec's cancellation); the dispatcher
shutting down ends it with the completion response (``Subscriptions.stop``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher.fleet.streams import MessageReader, StreamFailed
from edgefleet.dispatcher.mcp.streams import ABRUPT
from edgefleet.shared import jsonrpc
from edgefleet.shared.asgi import respond
from edgefleet.shared.errors import AgentUnavailable, UpstreamTimeout

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import AgentView
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.fleet.replica import Replica
    from edgefleet.dispatcher.fleet.streams import Opened, StreamClient
    from edgefleet.dispatcher.mcp.request import McpRequest
    from edgefleet.dispatcher.mcp.streams import ClientStream
    from edgefleet.dispatcher.routing.router import RouteOrder, Router
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.subscriptions")

ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
ERROR_BODY_LIMIT = 64 * 1024


@dataclass(slots=True)
class _Answer:
    """The agent answered the listen instead of acknowledging it: relayed as it is."""

    status: int
    body: bytes
    content_type: str


@dataclass(slots=True)
class _Current:
    """The agent stream a relay reads now."""

    opened: Opened | None = None
    replica: Replica | None = None


class ListenRelay:
    def __init__(
        self, settings: DispatcherSettings, fleet: Fleet, router: Router, client: StreamClient, *, timeout_s: float
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.router = router
        self.client = client
        self.timeout_s = timeout_s  # for the agent's acknowledgment
        self.upstream = 0  # agent streams open now

    async def forward(self, request: McpRequest, agent: AgentView, stream: ClientStream) -> None:
        message = request.message
        order = self.router.order(request.peer, request.headers, self.fleet.regions, allowed=request.identity.regions)
        first: asyncio.Future[bytes | _Answer] = asyncio.get_running_loop().create_future()
        first.add_done_callback(lambda f: f.cancelled() or f.exception())
        current = _Current()
        pump = asyncio.create_task(self._pump(agent, order, orjson.dumps(message.raw), stream, first, current))
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    outcome = await asyncio.shield(first)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Agent {agent.agent!r} did not acknowledge subscriptions/listen within {self.timeout_s:g} s.",
                    data={"id": message.id, "agent": agent.agent},
                ) from None
            if isinstance(outcome, _Answer):
                await respond(request.send, outcome.status, outcome.body, content_type=outcome.content_type.encode())
                return
            await stream.run(request.send, request.receive, outcome, on_tick=lambda: self._check(current))
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _check(self, current: _Current) -> None:
        """On each keep-alive: an agent stream whose replica left or was ejected is cut, and
        the relay moves on."""
        replica, opened = current.replica, current.opened
        if (
            opened is not None
            and replica is not None
            and (self.fleet.replicas.get(replica.id) is not replica or not replica.routable)
        ):
            opened.close()

    async def _pump(
        self,
        agent: AgentView,
        order: RouteOrder,
        body: bytes,
        stream: ClientStream,
        first: asyncio.Future[bytes | _Answer],
        current: _Current,
    ) -> None:
        try:
            await self._follow(agent, order, body, stream, first, current)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must end this stream, not hang it
            log.exception("listen relay to %s failed", agent.agent)
            if not first.done():
                first.set_exception(AgentUnavailable(data={"agent": agent.agent}))
            stream.finish(ABRUPT)

    async def _follow(
        self,
        agent: AgentView,
        order: RouteOrder,
        body: bytes,
        stream: ClientStream,
        first: asyncio.Future[bytes | _Answer],
        current: _Current,
    ) -> None:
        tried: set[str] = set()  # each replica once per stream: moving never spins
        while not stream.over():
            view = self.fleet.catalog.view(agent.agent) or agent
            candidates = [
                r for r in self.router.candidates(view.entry(), order) if r.client.era == "modern" and r.id not in tried
            ]
            if not candidates:
                if not first.done():
                    first.set_exception(
                        AgentUnavailable(
                            f"No healthy replica of agent {agent.agent!r} serves subscriptions/listen right now.",
                            data={"id": stream.request_id, "agent": agent.agent},
                        )
                    )
                stream.finish(ABRUPT)
                return
            replica = candidates[0]
            tried.add(replica.id)
            headers = replica.client.call_headers("subscriptions/listen", None)
            try:
                async with self.client.open("POST", replica.record.url, headers, body) as opened:
                    current.opened, current.replica = opened, replica
                    self.upstream += 1
                    try:
                        if not await self._relay(opened, replica, stream, first):
                            return  # the agent answered instead: that answer is the client's
                    finally:
                        self.upstream -= 1
                        current.opened = current.replica = None
            except StreamFailed as exc:
                log.info("listen relay to %s (%s): %s", agent.agent, replica.id, exc)
                if not exc.opened:  # refused or timed out: as decisive as for a call
                    self.fleet.report_failure(replica, f"stream: {exc}", decisive=True)
            if not stream.over():
                log.info("listen relay to %s: the stream of %s ended, moving on", agent.agent, replica.id)

    async def _relay(
        self, opened: Opened, replica: Replica, stream: ClientStream, first: asyncio.Future[bytes | _Answer]
    ) -> bool:
        """Relay one agent stream until it ends; False when it answered the request instead
        of acknowledging it (and that was the client's first answer)."""
        content_type = opened.content_type
        streaming = content_type.startswith(("text/event-stream", "application/json", "application/x-ndjson"))
        if opened.status != 200 or not streaming:
            raw = await opened.read(ERROR_BODY_LIMIT)
            if not first.done():
                first.set_result(_Answer(opened.status, raw, content_type or "application/json"))
                return False
            return True  # a replica we moved to refused: try the next
        reader = MessageReader(content_type, self.settings.max_event_bytes, replica.id)

        def take(message: dict[str, Any]) -> bool | None:
            """None: go on; True: the agent ended its stream; False: it answered instead."""
            if message.get("method") == ACKNOWLEDGED:
                if not first.done():
                    first.set_result(stream.frame(message))
                return None  # a later one acknowledges a move: the client has its own
            if jsonrpc.is_response(message):
                if first.done():
                    return True  # the agent closed the subscription (it is stopping): move on
                first.set_result(_Answer(opened.status, orjson.dumps(message), "application/json"))
                return False
            method = message.get("method")
            if first.done() and isinstance(method, str) and method.startswith("notifications/") and "id" not in message:
                stream.relayed(message)
            return None  # requests have no place on a 2026 stream; nothing comes before the ack

        async for chunk in opened.chunks():
            for message in reader.feed(chunk):
                outcome = take(message)
                if outcome is not None:
                    return outcome
        for message in reader.rest():
            outcome = take(message)
            if outcome is not None:
                return outcome
        return True
