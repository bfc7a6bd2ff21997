"""A 2025-era agent asking a 2026-era client something in the middle of a call: the call is
held open, the question goes out as an ``input_required`` round, and the client's retry
resumes it, on whichever dispatcher it lands (docs/design-mcp-surface.md, D6).

A 2025-era server asks (sampling, elicitation, roots) with a JSON-RPC request on the call's
SSE stream and waits for the answer on the same session; a 2026-era client only knows the
multi round-trip pattern: a result of ``resultType: "input_required"``, then a new request
with the answers and the ``requestState``. Nobody else bridges this direction (agentgateway
refuses it); the dispatcher can, because it holds the upstream stream:

1. the call runs in a task of its own (it outlives the client's first request), through a
   ``HoldingAnswer``; when a server request shows up on the stream, the request gets an id
   of ours (``mcp.relay``, as for 2025 clients), the client's response ends with the round
   (``inputRequests`` keyed by those ids, a sealed ``requestState`` naming this instance and
   the held call), and the upstream stream waits, unread;
2. the retry, on this dispatcher: the answers are posted upstream under the server's ids,
   the retry's response becomes the call's answer from there on (ids renumbered to the
   retry's), and the stream is read again (a next question is the next round);
3. the retry, on another dispatcher: handed to the owning instance through Redis
   (``{prefix}:rounds:<instance>``); the owner resumes the call into a reply stream the
   other dispatcher relays chunk by chunk. No answer within ``ACK_TIMEOUT_S`` (owner gone)
   or an unknown held call: idempotent tools start afresh, others end with ``round_lost``.

Bounds: held calls per identity (``EDGEFLEET_HELD_CALLS_PER_IDENTITY``; above it the
server is told the client cannot be asked), each round waits ``EDGEFLEET_ROUND_TIMEOUT_S``
at most and never past the call's deadline; a client closing a segment's stream cancels
the call (the 2026 rule), as does the dispatcher stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.exceptions

from edgefleet.dispatcher.mcp.bridge import EraAnswer, server_request
from edgefleet.dispatcher.mcp.inbox import read_inbox
from edgefleet.dispatcher.mcp.relay import askable
from edgefleet.dispatcher.paths.answer import send_message
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.errors import EdgefleetError, TooManyHeldCalls

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from edgefleet.dispatcher.mcp.bridge import ClientAnswer
    from edgefleet.dispatcher.mcp.relay import RequestRelay
    from edgefleet.dispatcher.mcp.request_state import RoundBinding
    from edgefleet.dispatcher.observability.observe import CallObservation
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.paths.dispatch import CallPaths
    from edgefleet.dispatcher.paths.route import Route
    from edgefleet.shared.asgi import Receive
    from edgefleet.shared.constants import RedisKeys

log = logging.getLogger("edgefleet.rounds")

# How long a dispatcher waits for the owner of a held call to take its retry.
ACK_TIMEOUT_S = 2.0
STREAM_MAXLEN = 10_000
# Entries of one reply stream: what the owner sends back, in order.
_TERMINAL = frozenset({b"json", b"close", b"end", b"lost"})


class RoundExpired(Exception):
    """Nobody came back for a held call in time (not a TimeoutError: that would read as
    the agent's stream breaking, and get the call retried elsewhere)."""


@dataclass(slots=True)
class Segment:
    """The stretch of a held call one client request carries: from the request to the next
    round, or to the end."""

    answer: ClientAnswer
    request_id: Any
    done: asyncio.Event = field(default_factory=asyncio.Event)


class HeldCall:
    __slots__ = ("id", "owner", "task", "asked", "next", "binding", "call")

    def __init__(self, held_id: str, owner: str, binding: RoundBinding, call: ToolCall) -> None:
        self.id = held_id
        self.owner = owner
        self.binding = binding
        self.call = call  # the call as the agent got it (its observation moves to each retry's)
        self.task: asyncio.Future[None] | None = None
        # The questions out and not answered yet: our id -> {"method", "params"}.
        self.asked: dict[str, dict[str, Any]] = {}
        self.next: asyncio.Future[Segment] | None = None  # set while a round is out

    @property
    def waiting(self) -> bool:
        return self.next is not None and not self.next.done()


class HeldCalls:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        instance: str,
        relay: RequestRelay,
        *,
        per_identity: int,
        round_timeout_s: float,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.instance = instance
        self.relay = relay
        self.per_identity = per_identity
        self.round_timeout_s = round_timeout_s
        self.calls: dict[str, HeldCall] = {}
        self._by_owner: dict[str, int] = {}
        self._consumer: asyncio.Task[None] | None = None
        self._peers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._consumer = asyncio.create_task(self._consume(), name="held-call-rounds")

    async def aclose(self) -> None:
        tasks: list[asyncio.Future[None]] = [t for t in (self._consumer, *self._peers) if t is not None]
        tasks += [held.task for held in self.calls.values() if held.task is not None and not held.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the first request ----------------------------------------------------------------
    async def run(self, call: ToolCall, paths: CallPaths, answer: HoldingAnswer, receive: Receive | None) -> None:
        """Run ``call`` in a task of its own and serve its first segment."""
        answer.held_calls = self
        work = asyncio.ensure_future(_run(call, paths, answer))
        answer.task = work
        work.add_done_callback(lambda _: answer.finished())
        await serve(answer.segment, work, receive, call.obs)

    def hold(self, binding: RoundBinding, call: ToolCall, task: asyncio.Future[None] | None) -> HeldCall:
        owner = binding.identity
        if self._by_owner.get(owner, 0) >= self.per_identity:
            raise TooManyHeldCalls(data={"limit": self.per_identity})
        held = HeldCall(secrets.token_urlsafe(12), owner, binding, call)
        held.task = task
        self.calls[held.id] = held
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        return held

    def release(self, held: HeldCall) -> None:
        if self.calls.pop(held.id, None) is not None:
            left = self._by_owner.get(held.owner, 1) - 1
            if left > 0:
                self._by_owner[held.owner] = left
            else:
                self._by_owner.pop(held.owner, None)
        self.relay.release(list(held.asked))

    async def next_segment(self, held: HeldCall, deadline: float) -> Segment:
        """Wait for the retry that resumes ``held`` (RoundExpired when none comes in time)."""
        held.next = asyncio.get_running_loop().create_future()
        timeout = min(self.round_timeout_s, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(held.next, timeout=max(timeout, 0.0))
        except TimeoutError:
            raise RoundExpired from None

    # -- the retry ------------------------------------------------------------------------
    async def resume(
        self,
        claims: dict[str, Any],
        responses: dict[str, Any],
        answer: EraAnswer,
        request_id: Any,
        receive: Receive | None,
        obs: CallObservation | None,
    ) -> bool:
        """Resume the held call a retry's state names; False when it is gone (the caller
        decides: start afresh, or round_lost)."""
        held_id, owner, instance = str(claims.get("held")), answer_owner(claims), str(claims.get("inst"))
        if instance == self.instance:
            held = self.calls.get(held_id)
            if held is None or held.owner != owner or not held.waiting or held.task is None:
                return False
            segment = Segment(answer, request_id)
            await self._take(held, responses, segment, obs)
            await serve(segment, held.task, receive, obs)
            return True
        return await self._resume_on(instance, held_id, owner, responses, answer, request_id, receive)

    async def _take(
        self, held: HeldCall, responses: dict[str, Any], segment: Segment, obs: CallObservation | None
    ) -> None:
        """The retry's answers posted upstream, and the retry's response the call's answer now."""
        for ours in list(held.asked):
            if ours in responses:
                del held.asked[ours]
                message = {"jsonrpc": "2.0", "id": ours, "result": responses[ours]}
                await self.relay.deliver(ours, message, held.id, held.owner)
        # The outcome from here on is the retry's (the first request ended as input_required).
        held.call.obs = obs
        assert held.next is not None
        held.next.set_result(segment)

    async def _resume_on(
        self,
        instance: str,
        held_id: str,
        owner: str,
        responses: dict[str, Any],
        answer: EraAnswer,
        request_id: Any,
        receive: Receive | None,
    ) -> bool:
        """The retry of a call another dispatcher holds: handed over through Redis, its
        answer relayed from the reply stream that dispatcher writes."""
        reply = self.keys.round_reply(secrets.token_urlsafe(12))
        entry = {
            "held": held_id,
            "owner": owner,
            "responses": orjson.dumps(responses),
            "request": orjson.dumps(request_id),
            "reply": reply,
        }
        try:
            await self.redis.xadd(self.keys.rounds(instance), cast(Any, entry), maxlen=STREAM_MAXLEN, approximate=True)
            await self.redis.expire(self.keys.rounds(instance), int(self.round_timeout_s) + 60)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("retry of held call %s not handed to %s: %s", held_id, instance, exc)
            return False
        relay = asyncio.ensure_future(self._relay_reply(reply, answer.inner))
        watcher = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        try:
            done, _ = await asyncio.wait(
                {relay} if watcher is None else {relay, watcher}, return_when="FIRST_COMPLETED"
            )
            if relay in done:
                return relay.result()
            relay.cancel()
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                cancel = {"cancel": held_id, "owner": owner}
                await self.redis.xadd(
                    self.keys.rounds(instance), cast(Any, cancel), maxlen=STREAM_MAXLEN, approximate=True
                )
            return True
        finally:
            for task in (relay, watcher):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await self.redis.delete(reply)

    async def _relay_reply(self, reply: str, answer: ClientAnswer) -> bool:
        position, acknowledged = "0", False
        while True:
            block = ACK_TIMEOUT_S if not acknowledged else self.round_timeout_s
            found = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await self.redis.xread({reply: position}, count=64, block=int(block * 1000)),
            )
            if not found:
                if not acknowledged:
                    return False  # the owner is gone
                continue
            for _stream, entries in found:
                for entry_id, fields in entries:
                    position = entry_id.decode()
                    kind = fields.get(b"kind", b"")
                    if kind == b"lost":
                        return False
                    acknowledged = True
                    await _replay(kind, fields, answer)
                    if kind in _TERMINAL:
                        return True

    # -- the owner's side of a retry that landed elsewhere ---------------------------------
    async def _consume(self) -> None:
        async for fields in read_inbox(self.redis, self.keys.rounds(self.instance)):
            task = asyncio.create_task(self._serve_peer(fields))
            self._peers.add(task)
            task.add_done_callback(self._peers.discard)

    async def _serve_peer(self, fields: dict[bytes, bytes]) -> None:
        try:
            owner = fields[b"owner"].decode()
            if b"cancel" in fields:
                held = self.calls.get(fields[b"cancel"].decode())
                if held is not None and held.owner == owner and held.task is not None:
                    held.task.cancel()
                return
            held = self.calls.get(fields[b"held"].decode())
            sink = StreamSink(self.redis, fields[b"reply"].decode(), ttl_s=self.round_timeout_s + 60)
            if held is None or held.owner != owner or not held.waiting or held.task is None:
                await sink.mark(b"lost")
                return
            await sink.mark(b"ack")
            responses = orjson.loads(fields[b"responses"])
            segment = Segment(EraAnswer(sink, modern=True, rounds=held.binding), orjson.loads(fields[b"request"]))
            await self._take(held, responses if isinstance(responses, dict) else {}, segment, None)
            await serve(segment, held.task, None, None)
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            log.warning("malformed round hand-over dropped: %s", exc)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("round hand-over not answered: %s", exc)


def answer_owner(claims: dict[str, Any]) -> str:
    return str(claims.get("sub"))


async def serve(
    segment: Segment, work: asyncio.Future[None], receive: Receive | None, obs: CallObservation | None
) -> None:
    """Keep a client's request open until its segment is done (the next round sent, or the
    call over); the client closing its stream first cancels the call (2026 cancellation)."""
    waiting = asyncio.ensure_future(segment.done.wait())
    watcher = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
    try:
        done, _ = await asyncio.wait(
            {waiting} if watcher is None else {waiting, watcher}, return_when=asyncio.FIRST_COMPLETED
        )
        if watcher is not None and watcher in done and not segment.done.is_set():
            work.cancel()
            if obs is not None:
                obs.outcome = "cancelled"
            log.info("client closed the stream of a held call: call cancelled")
    except asyncio.CancelledError:
        work.cancel()  # the request itself went away with the server shutting down
        raise
    finally:
        waiting.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnected(receive: Receive | None) -> None:
    if receive is None:
        await asyncio.Event().wait()
        return
    while (await receive())["type"] != "http.disconnect":
        pass


async def _run(call: ToolCall, paths: CallPaths, answer: HoldingAnswer) -> None:
    try:
        await paths.call(call, answer)
    except EdgefleetError as exc:
        if call.obs is not None:
            call.obs.failed(exc)
        if not answer.started:
            await answer.send_json(200, jsonrpc.error_body(call.request_id, exc), None)
        elif not answer.ended:
            await answer.send_events(sse.frame(jsonrpc.error_body(call.request_id, exc)))
            await answer.close_stream()
    except RoundExpired:
        log.info("a held call of %s expired: nobody came back with the input", call.entry.public_name)
    except asyncio.CancelledError:
        pass  # the client closed its stream, or the dispatcher stops: the upstream stream closes with us
    except Exception:
        log.exception("held call of %s failed", call.entry.public_name)
        if not answer.ended:
            error = EdgefleetError()
            if not answer.started:
                await answer.send_json(200, jsonrpc.error_body(call.request_id, error), None)
            else:
                await answer.send_events(sse.frame(jsonrpc.error_body(call.request_id, error)))
                await answer.close_stream()


async def _replay(kind: bytes, fields: dict[bytes, bytes], answer: ClientAnswer) -> None:
    """One reply-stream entry written into the client's response."""
    if kind == b"open":
        await answer.open_stream(None)
    elif kind == b"events":
        await answer.send_events(fields[b"data"])
    elif kind == b"close":
        await answer.close_stream()
    elif kind == b"json":
        await answer.send_json(int(fields[b"status"]), fields[b"data"], None)
    elif kind == b"end":
        await answer.end_without_answer()


class StreamSink:
    """A client's answer written to a Redis stream another dispatcher relays (the retry of
    a held call landed there)."""

    __slots__ = ("redis", "key", "ttl_s", "started", "ended", "_expiry_set")

    def __init__(self, redis: aioredis.Redis, key: str, *, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_s = ttl_s
        self.started = False
        self.ended = False
        self._expiry_set = False

    async def mark(self, kind: bytes, **fields: bytes) -> None:
        await self.redis.xadd(self.key, cast(Any, {"kind": kind, **fields}), maxlen=STREAM_MAXLEN, approximate=True)
        if not self._expiry_set:
            self._expiry_set = True
            await self.redis.expire(self.key, int(self.ttl_s))

    async def open_stream(self, route: Route | None) -> None:
        if not self.started:
            self.started = True
            await self.mark(b"open")

    async def send_events(self, events: bytes) -> None:
        await self.mark(b"events", data=events)

    async def close_stream(self) -> None:
        if not self.ended:
            self.ended = True
            await self.mark(b"close")

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        self.started = self.ended = True
        await self.mark(b"json", status=str(status).encode(), data=body)

    async def end_without_answer(self) -> None:
        self.started = self.ended = True
        await self.mark(b"end")


class HoldingAnswer:
    """The answer of a call that may be held: passes everything to the current segment's
    client, turns the 2025-era agent's requests into rounds, and renumbers the final
    response for the request that is waiting for it."""

    __slots__ = ("segment", "original_id", "binding", "call", "held_calls", "held", "task", "route", "_deadline")

    def __init__(self, segment: Segment, binding: RoundBinding, call: ToolCall) -> None:
        self.segment = segment
        self.original_id = segment.request_id
        self.binding = binding
        self.call = call
        self.held_calls: HeldCalls | None = None
        self.held: HeldCall | None = None
        self.task: asyncio.Future[None] | None = None
        self.route: Route | None = None
        self._deadline = time.monotonic() + call.timeout_s

    @property
    def started(self) -> bool:
        return self.segment.answer.started

    @property
    def ended(self) -> bool:
        return self.segment.answer.ended

    def finished(self) -> None:
        """The call is over: whoever waits on the segment may go, and the held call is forgotten."""
        self.segment.done.set()
        if self.held is not None and self.held_calls is not None:
            self.held_calls.release(self.held)

    async def open_stream(self, route: Route | None) -> None:
        self.route = route
        await self.segment.answer.open_stream(route)

    async def send_events(self, events: bytes) -> None:
        if b'"method"' in events and b'"id"' in events:
            before, requests, after = _split_requests(events)
            if requests:
                if before:
                    await self._pass(before)
                await self._round(requests)
                if after:
                    await self.send_events(after)
                return
        await self._pass(events)

    async def _pass(self, events: bytes) -> None:
        if self.segment.request_id != self.original_id:
            events = _renumbered(events, self.original_id, self.segment.request_id)
        await self.segment.answer.send_events(events)

    async def close_stream(self) -> None:
        await self.segment.answer.close_stream()
        self.segment.done.set()

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        if self.segment.request_id != self.original_id:
            body = _renumbered_message(body, self.original_id, self.segment.request_id)
        await self.segment.answer.send_json(status, body, route)
        self.segment.done.set()

    async def end_without_answer(self) -> None:
        await self.segment.answer.end_without_answer()
        self.segment.done.set()

    async def _round(self, requests: list[dict[str, Any]]) -> None:
        """The agent asked: the client gets the question as a round, and the stream waits
        for the retry (the next segment); unanswered questions are asked again."""
        route, held_calls = self.route, self.held_calls
        assert held_calls is not None
        if route is None or route.session is None or route.replica is None:
            log.warning("%s sent a request outside a 2025-era session: ignored", self.call.entry.public_name)
            return
        relay = held_calls.relay
        declared = self.call.client_capabilities
        for request in [r for r in requests if not askable(r.get("method"), declared)]:
            # ping is ours to answer; what the client did not declare, the agent should not have asked.
            await relay.reply_upstream(
                request,
                replica=route.replica,
                session=route.session,
                reason=f"The client did not declare what {request.get('method')} needs.",
            )
        requests = [r for r in requests if askable(r.get("method"), declared)]
        if not requests:
            return
        if self.held is None:
            try:
                self.held = held_calls.hold(self.binding, self.call, self.task)
            except TooManyHeldCalls as exc:
                # The client cannot be asked: the agent hears so (and decides what its tool does).
                for request in requests:
                    await relay.reply_upstream(
                        request, replica=route.replica, session=route.session, reason=exc.message, code=-32603
                    )
                return
        held = self.held
        for request in requests:
            adopted = relay.adopt(
                request, replica=route.replica, session=route.session, client_session=held.id, owner=held.owner
            )
            held.asked[adopted["id"]] = {"method": request["method"], "params": request.get("params") or {}}
        while held.asked:
            state = self.binding.seal("held", inst=held_calls.instance, held=held.id, ttl_s=held_calls.round_timeout_s)
            result = {"resultType": "input_required", "inputRequests": dict(held.asked), "requestState": state}
            if self.call.obs is not None:
                self.call.obs.outcome = "input_required"
            await send_message(self.segment.answer, jsonrpc.result_body(self.segment.request_id, result), route)
            self.segment.done.set()
            self.segment = await held_calls.next_segment(held, self._deadline)


def _split_requests(events: bytes) -> tuple[bytes, list[dict[str, Any]], bytes]:
    """(events before the first server->client request, the requests, events after them)."""
    before: list[bytes] = []
    requests: list[dict[str, Any]] = []
    after: list[bytes] = []
    for name, data in sse.events(events):
        message = server_request(data) if name == "message" else None
        if message is not None and not after:
            requests.append(message)
            continue
        framed = sse.frame(data) if name == "message" else b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
        (after if requests else before).append(framed)
    return b"".join(before), requests, b"".join(after)


def _renumbered(events: bytes, old: Any, new: Any) -> bytes:
    out = []
    for name, data in sse.events(events):
        if name == "message":
            out.append(sse.frame(_renumbered_message(data, old, new)))
        else:
            out.append(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")
    return b"".join(out)


def _renumbered_message(payload: bytes, old: Any, new: Any) -> bytes:
    """The call's response under the id of the request now waiting for it."""
    if b'"id"' not in payload:
        return payload
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if isinstance(message, dict) and jsonrpc.is_response(message) and message.get("id") == old:
        return orjson.dumps({**message, "id": new})
    return payload
