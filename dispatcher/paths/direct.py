"""The direct path: forward one ``tools/call`` to a replica over the warm pool and relay
the answer (a JSON body, or an SSE stream of progress/log notifications and the result)
to the client chunk by chunk.

Failover rules (ARCHITECTURE principle 4): a call that provably never reached a replica
(connection refused, connect timeout, 502/503 from it) moves to the next candidate; a call
that may have started is retried elsewhere only for tools that declare ``idempotentHint``,
otherwise the client gets ``outcome_unknown``.

Answers are checked before they reach the client: none larger than ``max_result_bytes``
(counted as the bytes arrive, never buffered past the limit), and, for tools that declare
an ``outputSchema``, the final result's ``structuredContent`` must conform. Either failure
is answered with its own error and neither is retried elsewhere: the work was done.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from opentelemetry.trace import SpanKind, StatusCode

from edgefleet.shared import jsonrpc
from edgefleet.shared import telemetry
from edgefleet.shared.constants import HEADER_ROUTE, HEADER_TIMEOUT
from edgefleet.shared.errors import (
    AgentUnavailable,
    EdgefleetError,
    InvalidToolResult,
    OutcomeUnknown,
    ResultTooLarge,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.fleet.fleet import Fleet, Replica
    from edgefleet.dispatcher.observability.observe import CallObservation
    from edgefleet.dispatcher.routing.router import Router, RouteOrder

log = logging.getLogger("edgefleet.executor")
_tracer = telemetry.tracer("edgefleet.dispatcher")
# Answers are parsed for the metrics only when they may be errors (a byte check first).
_ERROR_MARKERS = (b'"error"', b'"isError"')

Send = Callable[[dict[str, Any]], Awaitable[None]]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]
HEADER_ROUTE_B = HEADER_ROUTE.encode()
# Upstream statuses that mean "not processed": safe to send elsewhere.
NOT_PROCESSED_STATUSES = frozenset({502, 503})


class Executor:
    def __init__(self, fleet: Fleet, router: Router) -> None:
        self.fleet = fleet
        self.router = router
        self.max_result_bytes = fleet.settings.max_result_bytes
        self.validate_results = fleet.settings.validate_results

    async def call(
        self,
        entry: ToolEntry,
        request_id: Any,
        body: bytes,
        send: Send,
        *,
        order: RouteOrder,
        timeout_s: float,
        extra_headers: dict[str, str] | None = None,
        capture: bool = False,
        replicas: list[Replica] | None = None,
        obs: CallObservation | None = None,
    ) -> tuple[bool, bytes] | None:
        """Forward ``body`` (already rewritten to the upstream name) and relay the reply.

        Candidates come nearest region first; each failed-before-start attempt moves on
        (next replica, then next region) within one deadline, which every attempt passes
        to the agent. With ``capture`` the relayed body is returned as (is_sse, bytes).
        """
        deadline = time.monotonic() + timeout_s
        stream = _ClientStream(send, request_id, obs)
        tried: list[str] = []
        last_error: EdgefleetError | None = None
        # Tracing on: one CLIENT span per attempt, and the agent's parent in _meta and in
        # the traceparent header is that attempt span instead of our server span.
        parent_tp = telemetry.current_traceparent() if telemetry.recording() else None
        for replica in replicas if replicas is not None else self.router.candidates(entry, order):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await stream.fail(UpstreamTimeout(data={"tool": entry.public_name, "replicas_tried": tried}))
                return None
            tried.append(replica.id)
            if obs is not None:
                obs.attempt(entry.agent, replica.id, replica.record.region)
            route = _route_header(replica, order, len(tried), obs)
            try:
                if parent_tp is None:
                    return await self._attempt(replica, entry, body, stream, remaining, extra_headers, route, capture, obs)
                return await self._traced_attempt(replica, entry, body, parent_tp, stream, remaining, extra_headers, route, capture, obs, len(tried))
            except _NotStarted as exc:
                last_error = exc.error
                continue
            except _MaybeStarted as exc:
                if time.monotonic() >= deadline:
                    break  # the deadline, not the replica, ended it: say so below
                if entry.idempotent:
                    # Safe to run again; an SSE stream already open to the client simply
                    # continues with the next replica's messages.
                    last_error = exc.error
                    log.warning("retrying idempotent %s elsewhere after %s", entry.public_name, exc.error.message)
                    continue
                await stream.fail(OutcomeUnknown(data={"tool": entry.public_name, "replica": replica.id, "cause": exc.error.message}))
                return None
        if time.monotonic() >= deadline:
            await stream.fail(UpstreamTimeout(data={"tool": entry.public_name, "replicas_tried": tried}))
            return None
        if last_error is not None:
            await stream.fail(AgentUnavailable(
                f"Every replica of agent {entry.agent!r} failed for {entry.public_name}: {last_error.message}",
                data={"agent": entry.agent, "replicas_tried": tried},
            ))
            return None
        await stream.fail(AgentUnavailable(
            f"No healthy replica of agent {entry.agent!r} can serve {entry.public_name} right now.",
            data={"agent": entry.agent, "regions": list(order.regions)},
        ))
        return None

    async def _traced_attempt(
        self,
        replica: Replica,
        entry: ToolEntry,
        body: bytes,
        parent_tp: str,
        stream: _ClientStream,
        timeout: float,
        extra_headers: dict[str, str] | None,
        route: bytes,
        capture: bool,
        obs: CallObservation | None,
        attempt: int,
    ) -> tuple[bool, bytes] | None:
        attributes = {"server.address": replica.record.url, "edgefleet.replica": replica.id, "edgefleet.attempt": attempt}
        with _tracer.start_as_current_span(f"tools/call {entry.upstream_name}", kind=SpanKind.CLIENT, attributes=attributes,
                                           record_exception=False, set_status_on_exception=False) as span:
            traceparent = telemetry.current_traceparent() or parent_tp
            body = body.replace(parent_tp.encode(), traceparent.encode(), 1)
            headers = {**(extra_headers or {}), "traceparent": traceparent}
            try:
                return await self._attempt(replica, entry, body, stream, timeout, headers, route, capture, obs)
            except (_NotStarted, _MaybeStarted) as exc:
                span.set_attribute("error.type", exc.error.code)
                span.set_status(StatusCode.ERROR, exc.error.message)
                raise

    async def _attempt(
        self,
        replica: Replica,
        entry: ToolEntry,
        body: bytes,
        stream: _ClientStream,
        timeout: float,
        extra_headers: dict[str, str] | None,
        route: bytes,
        capture: bool,
        obs: CallObservation | None = None,
    ) -> tuple[bool, bytes] | None:
        client = replica.client
        headers = client.call_headers("tools/call", entry.upstream_name)
        if extra_headers:
            headers.update(extra_headers)
        # Deadline propagation: the agent stops working on a call nobody waits for any more.
        headers[HEADER_TIMEOUT] = str(max(1, int(timeout * 1000)))
        rename: _IdRename | None = None
        if client.era == "legacy":
            # Every client shares our ONE upstream session with a 2025-era server: two
            # clients' "id": 1 in flight at once would cross. Send a unique id, map it back.
            rename = _IdRename(stream.request_id)
            body = rename.outgoing(body)
        session = self.fleet.pool.session
        breaker = replica.breaker
        trial = breaker.begin()
        if trial is None:  # ejected since the candidates were listed, or its one trial is taken
            raise _NotStarted(UpstreamError(f"replica {replica.id} is ejected"))
        replica.inflight += 1
        verdict = False
        sent_at = time.perf_counter()
        upstream = "error"
        try:
            try:
                resp = await session.post(replica.record.url, data=body, headers=headers, timeout=self.fleet.pool.timeout(timeout))
            except aiohttp.ConnectionTimeoutError:
                upstream = "connect_error"
                verdict = True
                self.fleet.report_failure(replica, "connect timed out", decisive=True, trial=trial)
                raise _NotStarted(UpstreamError(f"connecting to replica {replica.id} timed out")) from None
            except aiohttp.ClientConnectorError as exc:
                upstream = "connect_error"
                verdict = True
                self.fleet.report_failure(replica, f"connect: {exc}", decisive=True, trial=trial)
                raise _NotStarted(UpstreamError(f"cannot connect to replica {replica.id}: {exc.strerror or exc}")) from None
            except asyncio.TimeoutError:
                upstream = "timeout"
                # The deadline of a slow tool is not the replica's fault: no health penalty,
                # but the time it sat there counts in its latency (a hung replica gets costly).
                replica.observe_latency((time.perf_counter() - sent_at) * 1000)
                raise _MaybeStarted(UpstreamTimeout(f"replica {replica.id} did not answer in time")) from None
            except aiohttp.ClientError as exc:
                verdict = True
                self.fleet.report_failure(replica, f"{type(exc).__name__}: {exc}", trial=trial)
                raise _MaybeStarted(UpstreamError(f"replica {replica.id} dropped the call: {type(exc).__name__}")) from None
            try:
                if resp.status == 404 and client.era == "legacy":
                    # The upstream forgot our session (it restarted): reopen, then retry here.
                    await client.connect()
                    raise _NotStarted(UpstreamError(f"replica {replica.id} lost its MCP session"))
                if resp.status in NOT_PROCESSED_STATUSES:
                    verdict = True
                    self.fleet.report_failure(replica, f"HTTP {resp.status}", trial=trial)
                    raise _NotStarted(UpstreamError(f"replica {replica.id} answered HTTP {resp.status}"))
                if resp.status >= 500:
                    verdict = True
                    self.fleet.report_failure(replica, f"HTTP {resp.status}", trial=trial)
                    raise _MaybeStarted(UpstreamError(f"replica {replica.id} answered HTTP {resp.status}"))
                latency = time.perf_counter() - sent_at
                replica.observe_latency(latency * 1000)
                upstream = "ok"
                if obs is not None and obs.metrics is not None:
                    obs.metrics.upstream_duration.labels(entry.agent, replica.record.region, replica.id).observe(latency)
                verdict = True
                self.fleet.report_success(replica, trial=trial)
                check = _Check(entry, replica, self.max_result_bytes, self.validate_results)
                content_type = resp.headers.get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    return await _relay_stream(replica, resp, stream, route, capture, rename, check)
                try:
                    data = await _read_limited(resp, check.limit)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise _MaybeStarted(UpstreamError(f"replica {replica.id} broke off its answer: {type(exc).__name__}")) from None
                except _TooLarge:
                    resp.close()  # stop the transfer (and the agent's work) rather than drain it
                    await stream.fail(check.too_large())
                    return None
                if rename is not None:
                    data = rename.incoming(data)
                if resp.status >= 400:
                    if obs is not None:
                        obs.outcome, obs.code = "error", "agent_error"
                        _classify(obs, data, sse=False)
                elif check.schema:
                    message = jsonrpc.last_response(data, sse=False)
                    if obs is not None and message is not None:
                        _classify_message(obs, message)
                    problem = check.problem(message)
                    if problem is not None:
                        await stream.fail(problem)
                        return None
                elif obs is not None:
                    _classify(obs, data, sse=False)
                await stream.json(200 if resp.status < 400 else resp.status, data, route)
                return (False, data) if capture else None
            finally:
                resp.release()
        finally:
            replica.inflight -= 1
            if not verdict:
                breaker.release(trial)
            if obs is not None and obs.metrics is not None:
                obs.metrics.upstream.labels(entry.agent, replica.record.region, replica.id, upstream).inc()


class _ClientStream:
    """The client's response, started lazily so a failed attempt can still be replaced.

    Once an SSE stream is open, a retry (idempotent tools) keeps writing into it; an
    error after that point is delivered inside the stream as the call's response.
    """

    __slots__ = ("send", "request_id", "started", "ended", "obs")

    def __init__(self, send: Send, request_id: Any, obs: CallObservation | None = None) -> None:
        self.send = send
        self.request_id = request_id
        self.started = False
        self.ended = False
        self.obs = obs

    async def start_sse(self, route: bytes) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, (HEADER_ROUTE_B, route)]})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        if not self.started:
            raise AssertionError("end() before any response: callers raise _MaybeStarted instead")
        self.ended = True
        await self.send({"type": "http.response.body", "body": b""})

    async def json(self, status: int, data: bytes, route: bytes) -> None:
        if self.started:  # a retry answered in JSON into an open SSE stream: one event, one line
            try:
                line = orjson.dumps(orjson.loads(data))
            except orjson.JSONDecodeError:
                line = jsonrpc.error_body(self.request_id, OutcomeUnknown(data={"cause": "the agent's answer is not JSON"}))
            await self.chunk(b"event: message\ndata: " + line + b"\n\n")
            await self.end()
            return
        self.started = self.ended = True
        await self.send({"type": "http.response.start", "status": status, "headers": [*JSON_HEADERS, (HEADER_ROUTE_B, route)]})
        await self.send({"type": "http.response.body", "body": data})

    async def fail(self, error: EdgefleetError) -> None:
        if self.obs is not None:
            self.obs.failed(error)
        if not self.started:
            raise error
        if not self.ended:
            await self.chunk(b"event: message\ndata: " + jsonrpc.error_body(self.request_id, error) + b"\n\n")
            await self.end()


def _event_boundary(buffer: bytes | bytearray) -> int:
    """Index just past the last complete SSE event in ``buffer`` (0: none yet)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _classify(obs: CallObservation, payload: bytes, *, sse: bool) -> None:
    """Set the call's outcome from the agent's JSON-RPC answer: an ``error`` object, or a
    result with ``isError: true`` (a tool error). Cheap for the common case: no marker, no parse."""
    if not any(marker in payload for marker in _ERROR_MARKERS):
        return
    message = jsonrpc.last_response(payload, sse=sse)
    if message is not None:
        _classify_message(obs, message)


def _classify_message(obs: CallObservation, message: dict[str, Any]) -> None:
    if not jsonrpc.is_response(message):
        return  # notifications (progress, logs) say nothing about the outcome
    if "error" in message:
        obs.answered_with_error(message["error"])
    elif isinstance(message.get("result"), dict) and message["result"].get("isError") is True:
        obs.outcome = "tool_error"


def _response_in(events: bytes) -> dict[str, Any] | None:
    """The JSON-RPC response (the call's answer) among these complete SSE events, if any."""
    if b'"id"' not in events:
        return None
    return next((m for m in jsonrpc.sse_messages(events) if jsonrpc.is_response(m)), None)


class _TooLarge(Exception):
    pass


class _Check:
    """What one attempt's answer must pass: the size limit always, the tool's outputSchema
    only when it declares one (``schema``: no other tool pays for parsing its answers)."""

    __slots__ = ("entry", "replica", "limit", "schema")

    def __init__(self, entry: ToolEntry, replica: Replica, limit: int, validate: bool) -> None:
        self.entry = entry
        self.replica = replica
        self.limit = limit
        self.schema = validate and entry.output_validator is not None

    def problem(self, message: dict[str, Any] | None) -> InvalidToolResult | None:
        """The error replacing this response, when its result breaks the outputSchema."""
        result = message.get("result") if message is not None and jsonrpc.is_response(message) else None
        if not isinstance(result, dict):
            return None  # an error answer, or not JSON-RPC at all: relayed as it is
        problem = self.entry.result_problem(result)
        if problem is None:
            return None
        log.warning("replica %s answered %s with a result that breaks its outputSchema: %s", self.replica.id, self.entry.public_name, problem)
        return InvalidToolResult(problem, data={"tool": self.entry.public_name, "replica": self.replica.id})

    def too_large(self) -> ResultTooLarge:
        log.warning("replica %s answered %s with more than %d bytes: not relayed", self.replica.id, self.entry.public_name, self.limit)
        return ResultTooLarge(
            f"The answer of {self.entry.public_name} is larger than {self.limit} bytes (EDGEFLEET_MAX_RESULT_BYTES); it was not relayed.",
            data={"tool": self.entry.public_name, "replica": self.replica.id, "limit_bytes": self.limit},
        )


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or _TooLarge as soon as it is known to exceed ``limit`` (from its
    Content-Length, else from the bytes read so far: never more than the limit + a chunk)."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise _TooLarge
        return await resp.read()
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


class _IdRename:
    """A per-attempt unique JSON-RPC id toward a shared legacy upstream session."""

    _next = itertools.count(1)

    def __init__(self, client_id: Any) -> None:
        self.client_id = client_id
        self.upstream_id = f"edgefleet-{next(self._next)}"

    def outgoing(self, body: bytes) -> bytes:
        message = orjson.loads(body)
        message["id"] = self.upstream_id
        return orjson.dumps(message)

    def incoming(self, data: bytes) -> bytes:
        """A JSON body, or complete SSE events, with our id put back to the client's."""
        if b"data:" not in data:
            return self._swap(data)
        lines = []
        for line in data.replace(b"\r\n", b"\n").split(b"\n"):
            lines.append(b"data: " + self._swap(line[5:].strip()) if line.startswith(b"data:") else line)
        return b"\n".join(lines)

    def _swap(self, payload: bytes) -> bytes:
        if self.upstream_id.encode() not in payload:
            return payload
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload
        if isinstance(message, dict) and message.get("id") == self.upstream_id:
            message["id"] = self.client_id
            return orjson.dumps(message)
        return payload


async def _relay_stream(
    replica: Replica, resp: aiohttp.ClientResponse, stream: _ClientStream, route: bytes, capture: bool,
    rename: _IdRename | None, check: _Check,
) -> tuple[bool, bytes] | None:
    """Relay the agent's SSE event by event (never half an event, so a retry after a
    break starts on a clean line); a stream that breaks or ends before the answer is a
    _MaybeStarted (retried for idempotent tools, else outcome_unknown). A stream that
    grows past the size limit (progress included) is cut off."""
    chunks: list[bytes] | None = [] if capture else None
    pending = bytearray()
    answered = False
    received = 0
    try:
        async for chunk in resp.content.iter_any():
            received += len(chunk)
            if received > check.limit:
                resp.close()  # the agent's handler stops when its connection goes
                if answered:
                    break  # the client has its answer; whatever follows it is dropped
                await stream.fail(check.too_large())
                return None
            pending += chunk
            cut = _event_boundary(pending)
            if not cut:
                continue
            complete = bytes(pending[:cut])
            del pending[:cut]
            if rename is not None:
                complete = rename.incoming(complete)
            if not answered:
                response = _response_in(complete)
                if response is not None:
                    answered = True
                    if not await _accept(response, stream, check):
                        return None
            await _forward(complete, stream, route, chunks)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        if not answered:
            raise _MaybeStarted(UpstreamError(f"replica {replica.id} broke off its stream: {type(exc).__name__}")) from None
    else:
        if not answered and bytes(pending).strip():  # a last event without its blank line
            complete = bytes(pending) + b"\n\n"
            if rename is not None:
                complete = rename.incoming(complete)
            response = _response_in(complete)
            if response is not None:
                answered = True
                if not await _accept(response, stream, check):
                    return None
                await _forward(complete, stream, route, chunks)
        if not answered:
            raise _MaybeStarted(UpstreamError(f"replica {replica.id} ended its stream without an answer"))
    await stream.end()
    return (True, b"".join(chunks)) if chunks is not None else None


async def _accept(response: dict[str, Any], stream: _ClientStream, check: _Check) -> bool:
    """Record the answer's outcome and check it: False when it was replaced by an error."""
    if stream.obs is not None:
        _classify_message(stream.obs, response)
    problem = check.problem(response) if check.schema else None
    if problem is None:
        return True
    await stream.fail(problem)
    return False


async def _forward(events: bytes, stream: _ClientStream, route: bytes, chunks: list[bytes] | None) -> None:
    await stream.start_sse(route)
    if chunks is not None:
        chunks.append(events)
    await stream.chunk(events)


def _reason(replica: Replica | None, order: RouteOrder) -> str:
    if replica is not None and order.regions and replica.record.region != order.regions[0]:
        return order.reason + "+failover"
    return order.reason


def _route_header(replica: Replica, order: RouteOrder, attempt: int, obs: CallObservation | None) -> bytes:
    reason = _reason(replica, order)
    if obs is not None:
        obs.reason = reason
    return (
        f"region={replica.record.region}; replica={replica.id}; caller-region={order.caller_region or '-'}; "
        f"reason={reason}; attempt={attempt}"
    ).encode()


class _NotStarted(Exception):
    def __init__(self, error: EdgefleetError) -> None:
        self.error = error


class _MaybeStarted(Exception):
    def __init__(self, error: EdgefleetError) -> None:
        self.error = error
