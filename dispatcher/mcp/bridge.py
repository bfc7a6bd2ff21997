"""Answers shaped for the client's protocol era, whatever era the agent speaks.

A gateway in front of servers of both eras must hand each client results its own era
accepts (docs/design-mcp-surface.md, D5):

- 2026-07-28 clients: every result carries ``resultType`` (the official clients reject a
  result without it, and most servers in the wild are 2025-era);
- 2025-11-25 clients: no ``resultType``, ``ttlMs`` or ``cacheScope`` (fields of the other
  era), and never an ``input_required`` round (that era has no such thing);
- both: an upstream's SSE ``id:``/``retry:`` lines and priming events are dropped (the
  dispatcher offers no resumption, and a client holding a foreign event id would fail
  when it reconnects).

Only the call's final response is touched, and it is parsed only when a byte check says
it needs changing: a 2026 agent answering a 2026 client passes through untouched.

An ``input_required`` round a 2026-era agent gives a 2026-era client goes out with a state
of ours around the agent's (D9, ``mcp.request_state``): the retry is checked, and sent back
to the replica that minted the agent's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from edgefleet.dispatcher.paths.answer import Answer, ForwardingAnswer
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.errors import UpstreamError

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.relay import RequestRelay
    from edgefleet.dispatcher.mcp.request_state import RoundBinding
    from edgefleet.dispatcher.paths.route import Route

_RESULT_TYPE = b'"resultType"'
_INPUT_REQUIRED = b'"input_required"'
_MODERN_ONLY = ("resultType", "ttlMs", "cacheScope")


def for_modern(message: dict[str, Any]) -> dict[str, Any] | None:
    """The response as a 2026 client needs it, or None when it already is."""
    result = message.get("result")
    if isinstance(result, dict) and "resultType" not in result:
        return {**message, "result": {"resultType": "complete", **result}}
    return None


def for_legacy(message: dict[str, Any]) -> dict[str, Any] | None:
    """The response as a 2025 client needs it, or None when it already is."""
    result = message.get("result")
    if not isinstance(result, dict) or not any(key in result for key in _MODERN_ONLY):
        return None
    if result.get("resultType") not in (None, "complete"):
        # An input_required round (or a task answer) this era cannot express: the call ends
        # with a clear error rather than a result the client would reject.
        kind = result.get("resultType")
        error = UpstreamError(
            f"The agent answered with a {kind!r} result, which a 2025-11-25 client cannot receive; "
            "call it from a 2026-07-28 client.",
            data={"resultType": kind},
        )
        return {"jsonrpc": "2.0", "id": message.get("id"), "error": error.to_jsonrpc()}
    return {**message, "result": {k: v for k, v in result.items() if k not in _MODERN_ONLY}}


def for_legacy_result(result: dict[str, Any]) -> dict[str, Any]:
    """A result dict without the fields of the 2026 era."""
    if not any(key in result for key in _MODERN_ONLY):
        return result
    return {k: v for k, v in result.items() if k not in _MODERN_ONLY}


def reshape(payload: bytes, *, modern: bool) -> bytes:
    """One serialized JSON-RPC message, reshaped for the client's era when it is a response
    that needs it (byte checks first: most answers are returned as they are)."""
    if modern:
        if _RESULT_TYPE in payload or b'"result"' not in payload:
            return payload
    elif _RESULT_TYPE not in payload and b'"ttlMs"' not in payload and b'"cacheScope"' not in payload:
        return payload
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if not jsonrpc.is_response(message):
        return payload
    changed = for_modern(message) if modern else for_legacy(message)
    return payload if changed is None else orjson.dumps(changed)


def reshape_events(events: bytes, *, modern: bool) -> bytes:
    """Complete SSE events with the response among them reshaped and resumption fields dropped."""
    events = sse.without_resumption(events)
    if modern and (_RESULT_TYPE in events or b'"result"' not in events):
        return events
    if not modern and _RESULT_TYPE not in events and b'"ttlMs"' not in events and b'"cacheScope"' not in events:
        return events
    out = []
    for name, data in sse.events(events):
        out.append(sse.frame(reshape(data, modern=modern)) if name == "message" else _named(name, data))
    return b"".join(out)


# Syslog severities, lowest first (MCP logging levels).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_SEVERITY = {level: n for n, level in enumerate(LOG_LEVELS)}
NO_LOGS = len(LOG_LEVELS)  # a threshold above every level: no log notification passes
_LOG_NOTIFICATION = b'"notifications/message"'


def log_threshold(level: Any) -> int:
    """The lowest severity a client asked for (an unknown level: every message)."""
    return _SEVERITY.get(level, 0) if isinstance(level, str) else NO_LOGS


def _below(events: bytes, threshold: int) -> bytes:
    """The events without log notifications under ``threshold``: a 2025-era upstream session
    is shared by clients of different levels, and logs to all of them at its own (D12)."""
    out = []
    for name, data in sse.events(events):
        if name == "message" and _LOG_NOTIFICATION in data:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                message = None
            params = message.get("params") if isinstance(message, dict) else None
            level = params.get("level") if isinstance(params, dict) else None
            severity = _SEVERITY.get(level, NO_LOGS - 1) if isinstance(level, str) else NO_LOGS - 1
            if isinstance(message, dict) and message.get("method") == "notifications/message" and severity < threshold:
                continue
        out.append(sse.frame(data) if name == "message" else _named(name, data))
    return b"".join(out)


def wrap_round(payload: bytes, rounds: RoundBinding, route: Route | None) -> bytes:
    """A 2026-era agent's ``input_required`` response with its ``requestState`` sealed inside
    ours, with the replica that minted it (the retry goes back there)."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    result = message.get("result") if isinstance(message, dict) and jsonrpc.is_response(message) else None
    if not isinstance(result, dict) or result.get("resultType") != "input_required":
        return payload
    state = rounds.seal("wrap", rep=route.replica if route is not None else None, s=result.get("requestState"))
    return orjson.dumps({**message, "result": {**result, "requestState": state}})


def _wrap_rounds(events: bytes, rounds: RoundBinding, route: Route | None) -> bytes:
    out = []
    for name, data in sse.events(events):
        if name == "message" and _INPUT_REQUIRED in data:
            data = wrap_round(data, rounds, route)
        out.append(sse.frame(data) if name == "message" else _named(name, data))
    return b"".join(out)


def _from_agent_of_this_era(route: Route | None) -> bool:
    """An answer that came over a 2026-era exchange (a 2025-era upstream session never
    answers input_required: when one carries it, the round is the dispatcher's own)."""
    return route is None or route.session is None


def server_request(data: bytes) -> dict[str, Any] | None:
    """The JSON-RPC request in one event's data (a server->client request), if it is one."""
    if b'"method"' not in data or b'"id"' not in data:
        return None
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and isinstance(message.get("method"), str) and "id" in message:
        return message
    return None


def _without_requests(events: bytes, ours: RequestRelay | None) -> bytes:
    """The events without the upstream's server->client requests, for a call with no 2025
    upstream session: a 2026-07-28 server MUST NOT send independent requests on a response
    stream, and no answer could be taken back to it (a hostile agent sent 100,000 sampling
    requests to clients that way). The dispatcher's own questions (``ours``) stay."""
    out = []
    for name, data in sse.events(events):
        message = server_request(data) if name == "message" else None
        if message is not None and not (ours is not None and ours.owns(message["id"])):
            continue
        out.append(sse.frame(data) if name == "message" else _named(name, data))
    return b"".join(out)


def _named(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class ClientAnswer(Answer, Protocol):
    """A client's end of a call: its HTTP response, or (a held call resumed on another
    dispatcher) the stream that dispatcher relays from (``mcp.held``)."""

    async def end_without_answer(self) -> None:
        """End with no JSON-RPC answer (2025: after notifications/cancelled)."""


@dataclass(slots=True)
class RelayContext:
    """Who a 2025 call's server->client requests go to (and whose answers may come back)."""

    relay: RequestRelay
    client_session: str
    owner: str
    relayed: list[str] = field(default_factory=list)


class EraAnswer(ForwardingAnswer):
    """An answer on its way to a client of one era (wraps the client's real answer); with a
    relay, the upstream's requests on the stream go out under ids of ours (mcp.relay)."""

    __slots__ = ("modern", "relay", "rounds", "route", "log_threshold", "refuse")
    inner: ClientAnswer

    def __init__(
        self,
        inner: ClientAnswer,
        *,
        modern: bool,
        relay: RelayContext | None = None,
        rounds: RoundBinding | None = None,
        log_threshold: int = 0,
        refuse: RequestRelay | None = None,
    ) -> None:
        super().__init__(inner)
        # A 2026-era client not held for rounds (mcp.held) cannot be asked: a 2025-era agent's
        # requests on its stream are answered here (ping: {}; the rest: -32601), never passed on.
        self.refuse = refuse
        self.log_threshold = log_threshold  # log notifications under it are not the client's
        self.modern = modern
        self.relay = relay
        self.rounds = rounds  # 2026-era clients: input_required rounds get a state of ours
        self.route: Route | None = None

    async def open_stream(self, route: Route | None) -> None:
        self.route = route
        await self.inner.open_stream(route)

    async def send_events(self, events: bytes) -> None:
        events = reshape_events(events, modern=self.modern)
        if self.log_threshold and _LOG_NOTIFICATION in events:
            events = _below(events, self.log_threshold)
        if self.rounds is not None and _INPUT_REQUIRED in events and _from_agent_of_this_era(self.route):
            events = _wrap_rounds(events, self.rounds, self.route)
        if self.relay is not None and b'"method"' in events and b'"id"' in events:
            events = self._relay_requests(events)
        elif self.refuse is not None and b'"method"' in events and b'"id"' in events:
            events = await self._refuse_requests(events, self.refuse)
        if events:
            await self.inner.send_events(events)

    def _relay_requests(self, events: bytes) -> bytes:
        context, route = self.relay, self.route
        if context is None or route is None or route.session is None or route.replica is None:
            # Not a 2025 upstream session: nobody could take an answer back.
            return _without_requests(events, context.relay if context is not None else None)
        out = []
        for name, data in sse.events(events):
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                out.append(_named(name, data))
                continue
            if (
                isinstance(message, dict)
                and "method" in message
                and "id" in message
                and not context.relay.owns(message["id"])  # the dispatcher's own question (mcp.shim)
            ):
                message = context.relay.adopt(
                    message,
                    replica=route.replica,
                    session=route.session,
                    client_session=context.client_session,
                    owner=context.owner,
                )
                context.relayed.append(message["id"])
                data = orjson.dumps(message)
            out.append(sse.frame(data) if name == "message" else _named(name, data))
        return b"".join(out)

    async def _refuse_requests(self, events: bytes, relay: RequestRelay) -> bytes:
        route = self.route
        if route is None or route.session is None or route.replica is None:
            return _without_requests(events, relay)
        out = []
        for name, data in sse.events(events):
            message = server_request(data) if name == "message" else None
            if message is None:
                out.append(sse.frame(data) if name == "message" else _named(name, data))
                continue
            await relay.reply_upstream(
                message,
                replica=route.replica,
                session=route.session,
                reason="A 2026-07-28 client is asked only in input_required rounds, and it declared no "
                f"capability for {message.get('method')} on this call.",
            )
        return b"".join(out)

    async def close_stream(self) -> None:
        if self.relay is not None and self.relay.relayed:
            self.relay.relay.release(self.relay.relayed)
        await self.inner.close_stream()

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        body = reshape(body, modern=self.modern)
        if self.rounds is not None and _INPUT_REQUIRED in body and _from_agent_of_this_era(route):
            body = wrap_round(body, self.rounds, route)
        await self.inner.send_json(status, body, route)

    async def end_without_answer(self) -> None:
        await self.inner.end_without_answer()
