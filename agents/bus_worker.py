"""The agent's bus worker: takes calls for (agent, region) from the bus, runs them on the
agent's own MCP endpoint, and sends progress and the result to the dispatcher waiting.

Running a bus call through the local HTTP endpoint (not by calling the Python function)
means a bus call behaves exactly like a direct one: same argument validation, progress
notifications, cancellation and deadline handling - and the same worker can front any
MCP server.

Delivery is at-least-once: a call is acked only after its result is published, so if
this process dies mid-call another replica gets it (Redis: reclaimed after
``visibility_s``, which ``touch`` keeps extending while we work; Kafka: the group
rebalances). The dispatcher hands the client the first result and drops duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
import orjson
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from edgefleet.bus.base import Bus, Delivery
from edgefleet.shared import telemetry
from edgefleet.shared.constants import (
    HEADER_METHOD,
    HEADER_NAME,
    HEADER_PROTOCOL_VERSION,
    HEADER_TIMEOUT,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    MODERN_PROTOCOL_VERSION,
    BusNames,
)
from edgefleet.shared.envelope import CallEnvelope, CancelRequest, Reply
from edgefleet.shared.errors import BusUnavailable

log = logging.getLogger("edgefleet.agent.bus")
_tracer = telemetry.tracer("edgefleet.agent")

DEADLINE_EXCEEDED = {
    "code": -31003,
    "message": "The call's deadline passed before it could run.",
    "data": {"code": "upstream_timeout"},
}


class BusWorker:
    def __init__(
        self,
        bus: Bus,
        names: BusNames,
        *,
        agent: str,
        region: str,
        replica_id: str,
        mcp_url: str,
        max_inflight: int = 16,
        visibility_s: float = 15.0,
    ) -> None:
        self.bus = bus
        self.names = names
        self.agent = agent
        self.region = region
        self.replica_id = replica_id
        self.mcp_url = mcp_url
        self.stream = names.calls(agent, region)
        self.system = bus.url.split(":", 1)[0]
        self.group = names.group(agent, region)
        self.max_inflight = max_inflight
        self.visibility_s = visibility_s
        self.running: dict[str, tuple[Delivery, asyncio.Task[None]]] = {}  # task id -> work
        self._slot = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0), limits=httpx.Limits(max_connections=max_inflight)
        )
        self.handled = 0
        self.ready = False  # receiving work (reported in heartbeats; the dispatcher prefers ready replicas)
        self._cancelled: set[str] = set()  # task ids the dispatcher cancelled (acked, never rerun)
        self._cancelled_elsewhere: dict[str, float] = {}  # cancelled before they reached this replica
        self._intake: asyncio.Task[None] | None = None
        self._pending_acks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._intake = asyncio.create_task(self._intake_loop(), name="bus-intake")
        self._tasks = [
            asyncio.create_task(self._touch_loop(), name="bus-touch"),
            asyncio.create_task(self._cancel_loop(), name="bus-cancel"),
        ]

    async def aclose(self, drain_s: float = 10.0) -> None:
        """Stop taking work, give running calls ``drain_s`` to finish (still touched and
        still cancellable meanwhile); unfinished ones are left unacked, so the bus hands
        them to another replica."""
        if self._intake is not None:
            self._intake.cancel()
            await asyncio.gather(self._intake, return_exceptions=True)
        running = [task for _, task in self.running.values()]
        if running:
            _done, pending = await asyncio.wait(running, timeout=drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    # -- loops -------------------------------------------------------------------------
    async def _intake_loop(self) -> None:
        """New work and work taken over from dead replicas, in ONE loop so the in-flight
        bound holds (two loops each counting free slots could overshoot it)."""
        backoff = 0.2
        joined = False
        last_ping = last_reclaim = time.monotonic()
        while True:
            try:
                now = time.monotonic()
                if now - last_ping >= 2.0:
                    await self.bus.ping()  # consuming alone does not notice a Kafka broker going away
                    last_ping = now
                if not joined:
                    await self.bus.ensure_group(self.stream, self.group)
                    joined = True
                free = self.max_inflight - len(self.running)
                if free <= 0:
                    self._slot.clear()
                    await self._slot.wait()
                    continue
                if now - last_reclaim >= self.visibility_s / 2:
                    last_reclaim = now
                    for delivery in await self.bus.reclaim(
                        self.stream, self.group, self.replica_id, idle_ms=int(self.visibility_s * 1000), count=free
                    ):
                        log.info(
                            "took over call %s left pending by another replica (delivery %d)",
                            delivery.id,
                            delivery.deliveries,
                        )
                        self._spawn(delivery)
                    free = self.max_inflight - len(self.running)
                    if free <= 0:
                        continue
                for delivery in await self.bus.consume(
                    self.stream, self.group, self.replica_id, count=free, block_ms=1000
                ):
                    self._spawn(delivery)
                if not self.ready and await self.bus.ready(self.stream, self.group, self.replica_id):
                    self.ready = True
                    log.info("bus consumer for %s ready", self.stream)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, BusUnavailable):
                    log.warning("bus unavailable (%s); retrying in %.1f s", exc.message, backoff)
                else:
                    log.exception("bus intake failed; rejoining in %.1f s", backoff)
                if joined:
                    joined = self.ready = False
                    with contextlib.suppress(Exception):
                        await self.bus.reset()  # rebuilt (group joined again, NOGROUP healed) when possible
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.visibility_s / 3)
            for delivery, _ in list(self.running.values()):
                try:
                    await self.bus.touch(delivery, self.group, self.replica_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - e.g. NOGROUP after a Redis restart: keep touching the rest
                    log.debug("touch of %s failed: %s", delivery.id, exc)

    async def _cancel_loop(self) -> None:
        position: str | None = None
        stream = self.names.cancels(self.agent)
        while True:
            try:
                found, position = await self.bus.listen(stream, block_ms=1000, after=position)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - bus down or confused: keep listening
                await asyncio.sleep(1.0)
                continue
            for delivery in found:
                try:
                    cancel = CancelRequest.model_validate_json(delivery.payload)
                except ValidationError:
                    continue
                if cancel.task_id in self.running:
                    log.info("cancelling bus call %s: %s", cancel.task_id, cancel.reason or "requested")
                    self.cancel(cancel.task_id)
                else:
                    # Not here (yet): queued, or on its way over from a dead replica. Remember
                    # it so the call is acked and skipped if it reaches us.
                    self._cancelled_elsewhere[cancel.task_id] = time.monotonic()
                    if len(self._cancelled_elsewhere) > 10_000:
                        self._cancelled_elsewhere.pop(next(iter(self._cancelled_elsewhere)))

    # -- one call ----------------------------------------------------------------------
    def _spawn(self, delivery: Delivery) -> None:
        try:
            envelope = CallEnvelope.model_validate_json(delivery.payload)
        except ValidationError as exc:
            log.error("dropping malformed bus entry %s: %s", delivery.id, exc.errors()[:1])
            self._background(self._ack(delivery))
            return
        if envelope.task_id in self.running:
            return  # already working on it (a redelivery of our own call)
        if self._cancelled_elsewhere.pop(envelope.task_id, None) is not None:
            log.info("skipping bus call %s: cancelled before it started", envelope.task_id)
            self._background(self._ack(delivery))
            return
        task = asyncio.create_task(self._handle(delivery, envelope), name=f"bus-call-{envelope.task_id}")
        self.running[envelope.task_id] = (delivery, task)
        log.debug("bus call %s started (%s)", envelope.task_id, envelope.tool)
        # Bookkeeping in a done-callback: it runs even if the task is cancelled before it
        # ever started (a cancel can arrive in the same loop tick as the call).
        task.add_done_callback(lambda t: self._finished(envelope.task_id, delivery, t))

    def _finished(self, task_id: str, delivery: Delivery, task: asyncio.Task[None]) -> None:
        self.running.pop(task_id, None)
        self._slot.set()
        if task.cancelled() and task_id in self._cancelled:
            # Cancelled by the dispatcher: nobody waits for it; never run it again.
            self._cancelled.discard(task_id)
            self._background(self._ack(delivery))
        # Cancelled by shutdown: left unacked, another replica takes it over.

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._pending_acks.add(task)
        task.add_done_callback(self._pending_acks.discard)

    async def _handle(self, delivery: Delivery, envelope: CallEnvelope) -> None:
        # CONSUMER span, child of the dispatcher's publish span; the MCP server span of the
        # actual execution (the SDK's) becomes its child through _meta.traceparent.
        parent = telemetry.context_from({"traceparent": envelope.traceparent}) if envelope.traceparent else None
        with _tracer.start_as_current_span(
            f"process {self.stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.system": self.system,
                        "messaging.operation.type": "process",
                        "messaging.destination.name": self.stream,
                        "messaging.consumer.group.name": self.group,
                        "messaging.message.id": envelope.task_id,
                        "messaging.message.delivery_count": delivery.deliveries,
                        "gen_ai.tool.name": envelope.tool,
                        "edgefleet.replica": self.replica_id,
                    }
                )
            await self._handle_traced(delivery, envelope, span)

    async def _handle_traced(self, delivery: Delivery, envelope: CallEnvelope, span: Any) -> None:
        started = time.monotonic()
        remaining = envelope.remaining_s()
        if remaining <= 0:
            outcome = Reply(task_id=envelope.task_id, kind="error", error=DEADLINE_EXCEEDED)
        else:
            outcome = await self._run(envelope, remaining)
            outcome.replica, outcome.region = self.replica_id, self.region
            outcome.duration_ms = round((time.monotonic() - started) * 1000, 3)
        if outcome.kind == "error" and span.is_recording():
            span.set_status(StatusCode.ERROR, str((outcome.error or {}).get("message", "failed")))
        await self._publish_result(envelope, outcome)
        # Acked whether or not the result got out: the work is done, and running it again
        # cannot help a caller the dispatcher has already answered (bus_unavailable or a
        # timeout). Not acking would leave a hole in a Kafka partition's commits.
        await self._ack(delivery)
        self.handled += 1
        log.debug("bus call %s finished", envelope.task_id)

    async def _publish_result(self, envelope: CallEnvelope, outcome: Reply) -> None:
        """Publish the result, retrying through short bus outages until the call's deadline."""
        backoff = 0.1
        while True:
            try:
                await self._reply(envelope, outcome)
                return
            except Exception as exc:  # noqa: BLE001 - BusUnavailable, or a broker refusing the message
                if envelope.remaining_s() <= 0 or not isinstance(exc, BusUnavailable):
                    log.warning("result of call %s could not be published: %s", envelope.task_id, exc)
                    return
                await asyncio.sleep(min(backoff, max(0.0, envelope.remaining_s())))
                backoff = min(backoff * 2, 2.0)

    async def _run(self, envelope: CallEnvelope, remaining: float) -> Reply:
        meta = {META_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES: {}, **envelope.meta}
        meta.pop("tracestate", None)
        telemetry.inject_into(meta)  # parent of the execution: our process span (or the caller's context)
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": envelope.tool, "arguments": envelope.arguments, "_meta": meta},
        }
        headers = {
            "accept": "application/json, text/event-stream",
            HEADER_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION,
            HEADER_METHOD: "tools/call",
            HEADER_NAME: envelope.tool,
            HEADER_TIMEOUT: str(max(1, int(remaining * 1000))),
        }
        if isinstance(meta.get("traceparent"), str):
            headers["traceparent"] = meta["traceparent"]
        try:
            async with asyncio.timeout(remaining):
                async with self._http.stream("POST", self.mcp_url, json=body, headers=headers) as resp:
                    if resp.headers.get("content-type", "").startswith("text/event-stream"):
                        async for message in _sse_messages(resp):
                            if "method" in message:
                                # Best effort: a lost progress update must not abort the call.
                                with contextlib.suppress(Exception):
                                    await self._reply(
                                        envelope, Reply(task_id=envelope.task_id, kind="progress", notification=message)
                                    )
                            elif "result" in message or "error" in message:
                                return _outcome(envelope.task_id, message)
                        return Reply(
                            task_id=envelope.task_id,
                            kind="error",
                            error={"code": -31002, "message": "the agent ended its stream without a result"},
                        )
                    return _outcome(envelope.task_id, orjson.loads(await resp.aread()))
        except TimeoutError:
            return Reply(task_id=envelope.task_id, kind="error", error=DEADLINE_EXCEEDED)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            return Reply(
                task_id=envelope.task_id,
                kind="error",
                error={"code": -31002, "message": f"the agent failed: {type(exc).__name__}: {exc}"},
            )

    async def _reply(self, envelope: CallEnvelope, reply: Reply) -> None:
        await self.bus.publish(envelope.reply_to, reply.dumps(), {"task-id": envelope.task_id}, key=envelope.task_id)

    async def _ack(self, delivery: Delivery) -> None:
        try:
            await self.bus.ack(delivery, self.group)
        except Exception as exc:  # noqa: BLE001 - an unacked entry is delivered again: harmless, dispatcher dedupes
            log.debug("ack of %s failed: %s", delivery.id, exc)

    def cancel(self, task_id: str) -> None:
        work = self.running.get(task_id)
        if work is not None:
            self._cancelled.add(task_id)
            work[1].cancel()


def _outcome(task_id: str, message: Any) -> Reply:
    if not isinstance(message, dict):
        return Reply(
            task_id=task_id,
            kind="error",
            error={"code": -31002, "message": "the agent answered something that is not JSON-RPC"},
        )
    if isinstance(message.get("result"), dict):
        return Reply(task_id=task_id, kind="result", result=message["result"])
    error = (
        message.get("error")
        if isinstance(message.get("error"), dict)
        else {"code": -31002, "message": "malformed answer"}
    )
    return Reply(task_id=task_id, kind="error", error=error)


async def _sse_messages(resp: httpx.Response) -> Any:
    data: list[str] = []
    async for line in resp.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            with contextlib.suppress(orjson.JSONDecodeError):
                yield orjson.loads("\n".join(data))
            data = []
    if data:
        with contextlib.suppress(orjson.JSONDecodeError):
            yield orjson.loads("\n".join(data))
