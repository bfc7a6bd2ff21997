"""The bus path: a tool call published as an envelope to the owning agent's stream in the
nearest region that has bus consumers, answered on this dispatcher instance's own reply
stream.

Exactly-once for the client on top of at-least-once delivery: each call has a fresh
task id and one waiter; the first result for it completes the call, and anything that
arrives for a task id nobody waits for any more (a duplicate from a redelivery, or a
late answer after a timeout) is dropped. Progress replies are relayed to the client as
progress notifications while the call is open, exactly as on the direct path.

Answers are checked as on the direct path: a call whose replies (progress included) add
up to more than ``max_result_bytes`` is cut off (and cancelled on the agent), and a result
that breaks the tool's ``outputSchema`` is replaced by ``invalid_tool_result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from edgefleet import bus
from edgefleet.dispatcher.paths.answer import Answer, fail, send_message
from edgefleet.dispatcher.paths.checks import ResultChecks
from edgefleet.dispatcher.paths.route import Route
from edgefleet.shared import jsonrpc, sse, telemetry
from edgefleet.shared.aio import raise_if_cancelling
from edgefleet.shared.constants import BusNames
from edgefleet.shared.envelope import CallEnvelope, CancelRequest, Reply
from edgefleet.shared.errors import (
    AgentUnavailable,
    BusUnavailable,
    EdgefleetError,
    ResultTooLarge,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from edgefleet.bus.base import Delivery
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.observability.metrics import Metrics
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.routing.router import RouteOrder
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.bus")
_tracer = telemetry.tracer("edgefleet.dispatcher")
# Reply streams of dispatcher instances that went away disappear after this long unused.
REPLY_STREAM_TTL_S = 3600
# How long the bus may be unreachable before waiting calls are answered with an error
# (a blip shorter than this loses nothing: replies wait in the stream).
OUTAGE_GRACE_S = 2.0
# How often the backlog of each calls stream is read for /metrics.
SAMPLE_EVERY_S = 5.0


class BusPath:
    def __init__(
        self,
        settings: DispatcherSettings,
        checks: ResultChecks,
        *,
        instance: str,
        metrics: Metrics | None = None,
        streams: Callable[[], Iterable[tuple[str, str]]] = lambda: (),
    ) -> None:
        assert settings.bus_url
        options: dict[str, Any] = (
            {"maxlen": settings.bus_stream_maxlen} if not settings.bus_url.startswith("kafka") else {}
        )
        self.bus = bus.connect(settings.bus_url, **options)
        self.system = (
            "kafka"
            if settings.bus_url.startswith("kafka")
            else "redis"
            if settings.bus_url.startswith("redis")
            else "memory"
        )
        self.names = BusNames(settings.redis_prefix)
        self.instance = instance
        self.reply_stream = self.names.replies(instance)
        self.checks = checks
        # A call's queue gets the agent's replies, or the error of one we refused to parse.
        self.waiters: dict[str, asyncio.Queue[Reply | EdgefleetError]] = {}
        self.connected = False
        self._listener: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.metrics = metrics
        # (agent, region) pairs with bus consumers: whose calls streams /metrics reports on.
        self.streams = streams

    async def start(self) -> None:
        try:
            await self.bus.start()
            self.connected = True
        except BusUnavailable as exc:
            log.error("bus not reachable at start-up (%s); bus-path calls fail until it is", exc.message)
        self._listener = asyncio.create_task(self._listen_loop(), name="bus-replies")
        if self.metrics is not None:
            self._sampler = asyncio.create_task(self._sample_loop(self.metrics), name="bus-backlog")
        # Listening must have begun before the first call is published (Kafka listens from "now").
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 10)

    async def aclose(self) -> None:
        for task in (self._listener, self._sampler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.bus.drop(self.reply_stream)
        await self.bus.close()

    async def _listen_loop(self) -> None:
        position: str | None = None
        last_expire = last_ping = 0.0
        down_since: float | None = None
        while True:
            raise_if_cancelling()
            try:
                if time.monotonic() - last_ping >= 1.0:
                    # Listening alone does not notice a Kafka broker going away; asking does.
                    await self.bus.ping()
                    last_ping = time.monotonic()
                found, position = await self.bus.listen(self.reply_stream, block_ms=1000, after=position)
                self._listening.set()
                if not self.connected:
                    log.info("bus reachable again")
                self.connected = True
                down_since = None
            except Exception as exc:
                cause = (
                    exc if isinstance(exc, BusUnavailable) else BusUnavailable(f"the reply listener failed: {exc!r}")
                )
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.error("bus unreachable: %s", cause.message, exc_info=not isinstance(exc, BusUnavailable))
                if self.connected and now - down_since >= OUTAGE_GRACE_S:
                    # Past a blip: answer the waiting calls, refuse new ones, rebuild the client.
                    self.connected = False
                    self._fail_waiters(cause)
                    try:
                        await self.bus.reset()
                    except Exception:
                        log.exception("resetting the bus client failed")
                await asyncio.sleep(0.5)
                continue
            for delivery in found:
                if len(delivery.payload) > self.checks.limit and self._refuse_oversized(delivery):
                    continue
                try:
                    reply = Reply.model_validate_json(delivery.payload)
                except ValidationError:
                    log.warning("dropping a malformed reply on %s", self.reply_stream)
                    continue
                waiter = self.waiters.get(reply.task_id)
                if waiter is not None:
                    waiter.put_nowait(reply)
                # else: a duplicate (redelivered call) or an answer nobody waits for any more
                if self.metrics is not None:
                    self.metrics.bus_replies.labels(reply.kind if waiter is not None else "duplicate").inc()
            if time.monotonic() - last_expire > 60:
                last_expire = time.monotonic()
                with contextlib.suppress(BusUnavailable):
                    await self.bus.expire(self.reply_stream, REPLY_STREAM_TTL_S)

    def _refuse_oversized(self, delivery: Delivery) -> bool:
        """Answer the waiting call of a reply too large to relay without parsing it (the
        task id rides in the headers); False when it cannot be told whose it is."""
        task_id = delivery.headers.get("task-id")
        if not task_id:
            return False  # parsed as usual: the call's own byte count refuses it
        waiter = self.waiters.get(task_id)
        if waiter is not None:
            waiter.put_nowait(
                ResultTooLarge(
                    f"A reply of {len(delivery.payload)} bytes is larger than {self.checks.limit} (EDGEFLEET_MAX_RESULT_BYTES); it was not relayed.",
                    data={"task": task_id, "limit_bytes": self.checks.limit},
                )
            )
        if self.metrics is not None:
            self.metrics.bus_replies.labels("too_large" if waiter is not None else "duplicate").inc()
        return True

    async def _sample_loop(self, metrics: Metrics, every_s: float = SAMPLE_EVERY_S) -> None:
        """Backlog of every calls stream with consumers, for /metrics (sampled, never per call)."""
        reported: set[str] = set()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(every_s)
            seen: set[str] = set()
            for agent, region in set(self.streams()):
                stream = self.names.calls(agent, region)
                try:
                    backlog = await self.bus.backlog(stream, self.names.group(agent, region))
                except Exception as exc:  # noqa: BLE001 - a metric must never take the path down
                    log.debug("backlog of %s not sampled: %s", stream, exc)
                    continue
                if backlog is None:
                    continue
                seen.add(stream)
                metrics.bus_lag.labels(stream).set(backlog.lag)
                if backlog.pending is not None:
                    metrics.bus_pending.labels(stream).set(backlog.pending)
            for gone in reported - seen:  # streams nobody consumes any more leave /metrics
                with contextlib.suppress(KeyError):
                    metrics.bus_lag.remove(gone)
                with contextlib.suppress(KeyError):
                    metrics.bus_pending.remove(gone)
            reported = seen

    def _fail_waiters(self, cause: BusUnavailable) -> None:
        """Calls waiting for replies cannot get them while the bus is gone: answer them now
        (clearly, and without claiming the work did not run) rather than at their deadline."""
        error = BusUnavailable(
            f"Lost the bus while waiting for the answer ({cause.message}); the call may or may not have run.",
        )
        for waiter in self.waiters.values():
            waiter.put_nowait(Reply(task_id="", kind="error", error=error.to_jsonrpc()))

    def region_for(self, entry: ToolEntry, order: RouteOrder) -> str | None:
        """Nearest region where a healthy replica of the agent consumes the bus; failing
        that, the nearest one where a replica is still joining (the call waits, durable)."""
        joining = None
        for region in order.regions:
            for r in entry.by_region.get(region, ()):
                if r.record.bus and r.admits():
                    if r.record.load.get("bus_ready"):
                        return region
                    joining = joining or region
        return joining

    def serves(self, entry: ToolEntry) -> bool:
        return any(r.record.bus for r in entry.replicas)

    async def call(self, call: ToolCall, answer: Answer) -> None:
        """Publish the call and relay its replies into ``answer`` (progress as SSE events,
        then the result); errors before anything was sent are raised to the caller."""
        try:
            await self._call(call, answer)
        except EdgefleetError as exc:
            if call.obs is not None:
                call.obs.failed(exc)
            raise

    async def _call(self, call: ToolCall, answer: Answer) -> None:
        entry, obs, order = call.entry, call.obs, call.order
        region = self._region_or_fail(entry, order)
        task_id = uuid.uuid4().hex
        waiter: asyncio.Queue[Reply | EdgefleetError] = asyncio.Queue()
        self.waiters[task_id] = waiter
        relayed = 0  # bytes sent to the client so far, held to max_result_bytes
        sent_at = time.monotonic()
        route = Route("bus", region=region, caller_region=order.caller_region, reason=order.reason, task=task_id)
        try:
            await self._publish(
                entry, region, task_id, call.params, int((time.time() + call.timeout_s) * 1000), self.reply_stream
            )
            if obs is not None:
                obs.region = region
            async with asyncio.timeout(call.timeout_s):
                while True:
                    reply = await waiter.get()
                    if isinstance(reply, EdgefleetError):
                        await self._refuse(call, answer, task_id, reply)
                        return
                    if reply.kind == "progress" and reply.notification:
                        event = sse.frame(orjson.dumps({"jsonrpc": "2.0", **reply.notification}))
                        relayed += len(event)
                        if relayed > self.checks.limit:
                            await self._refuse(call, answer, task_id, self.checks.too_large(entry, task=task_id))
                            return
                        await answer.open_stream(route)
                        await answer.send_events(event)
                        continue
                    route.region = reply.region or region
                    route.replica = reply.replica or "-"
                    if reply.kind == "result" and reply.result is not None:
                        message = jsonrpc.result_body(call.request_id, reply.result)
                        refused = self.checks.refused(
                            entry, reply.result, relayed + len(message), replica=route.replica, task=task_id
                        )
                        if refused is not None:
                            await _fail(call, answer, refused)
                            return
                        if obs is not None and reply.result.get("isError"):
                            obs.outcome = "tool_error"
                    else:
                        error = (
                            reply.error
                            or UpstreamError("The agent's bus worker answered without a result.").to_jsonrpc()
                        )
                        message = orjson.dumps({"jsonrpc": "2.0", "id": call.request_id, "error": error})
                        if obs is not None:
                            obs.answered_with_error(error)
                    if obs is not None:
                        obs.attempt(entry.agent, route.replica, route.region)
                        if obs.span.is_recording():
                            obs.span.add_event(
                                "bus.reply",
                                {
                                    "messaging.message.id": task_id,
                                    "edgefleet.replica": route.replica,
                                    "edgefleet.bus.wait_ms": round((time.monotonic() - sent_at) * 1000, 3),
                                },
                            )
                    await send_message(answer, message, route)
                    return
        except TimeoutError:
            await self._cancel(entry.agent, task_id, "deadline")
            await _fail(call, answer, UpstreamTimeout(data={"tool": entry.public_name, "task": task_id}))
        except BusUnavailable as exc:
            await _fail(call, answer, exc)
        except asyncio.CancelledError:
            # The client went away: stop the work wherever it runs (best effort).
            await asyncio.shield(self._cancel(entry.agent, task_id, "client disconnected"))
            raise
        finally:
            self.waiters.pop(task_id, None)

    async def _refuse(self, call: ToolCall, answer: Answer, task_id: str, error: EdgefleetError) -> None:
        """End a call whose answer grew too large; the agent may still be producing it."""
        await self._cancel(call.entry.agent, task_id, error.code)
        await _fail(call, answer, error)

    async def submit(
        self, entry: ToolEntry, task_id: str, params: dict[str, Any], *, order: RouteOrder, deadline_ms: int
    ) -> str:
        """Publish a call that runs as a task and return the region it went to. The answer
        goes to the task replies stream every dispatcher consumes, not to this instance:
        the task completes even if this dispatcher is gone by then."""
        region = self._region_or_fail(entry, order)
        await self._publish(entry, region, task_id, params, deadline_ms, self.names.task_replies())
        return region

    def _region_or_fail(self, entry: ToolEntry, order: RouteOrder) -> str:
        region = self.region_for(entry, order)
        if region is None:
            raise AgentUnavailable(
                f"No healthy replica of agent {entry.agent!r} consumes the bus for {entry.public_name} right now.",
                data={"agent": entry.agent, "regions": list(order.regions)},
            )
        if not self.connected:
            raise BusUnavailable()
        return region

    async def _publish(
        self, entry: ToolEntry, region: str, task_id: str, params: dict[str, Any], deadline_ms: int, reply_to: str
    ) -> None:
        """One envelope on the agent's stream in ``region``, under a PRODUCER span (the
        agent's consume span is its child: the context rides in the envelope and in the
        message headers for other consumers)."""
        stream = self.names.calls(entry.agent, region)
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        with _tracer.start_as_current_span(
            f"publish {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": self.system,
                "messaging.operation.type": "publish",
                "messaging.destination.name": stream,
                "messaging.message.id": task_id,
                "gen_ai.tool.name": entry.upstream_name,
            }
            if telemetry.recording()
            else None,
        ):
            traceparent = telemetry.current_traceparent()
            envelope = CallEnvelope(
                task_id=task_id,
                agent=entry.agent,
                tool=entry.upstream_name,
                arguments=params.get("arguments") or {},
                meta=meta,
                deadline_ms=deadline_ms,
                reply_to=reply_to,
                traceparent=traceparent,
            )
            headers = {"task-id": task_id, **({"traceparent": traceparent} if traceparent else {})}
            try:
                await self.bus.publish(stream, envelope.dumps(), headers, key=task_id)
            except EdgefleetError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a message too large for the broker, Redis OOM
                raise UpstreamError(f"the bus refused the call: {type(exc).__name__}: {exc}") from None

    async def cancel(self, agent: str, task_id: str, reason: str) -> None:
        """Ask the agent's replicas to stop ``task_id`` (whichever one runs it)."""
        await self._cancel(agent, task_id, reason)

    async def _cancel(self, agent: str, task_id: str, reason: str) -> None:
        with contextlib.suppress(BusUnavailable, EdgefleetError):
            await self.bus.publish(
                self.names.cancels(agent), CancelRequest(task_id=task_id, reason=reason).model_dump_json().encode()
            )


async def _fail(call: ToolCall, answer: Answer, error: EdgefleetError) -> None:
    if call.obs is not None:
        call.obs.failed(error)
    await fail(answer, call.request_id, error)
