"""Running tool calls as tasks, and keeping every task moving to a terminal status.

Where the work runs decides how a task survives failures:

- **bus** (the agent consumes the bus): the call is published with the fleet's task
  replies stream as its reply address. The agent's replicas hand it over among themselves
  when one dies (visibility timeout), and whichever dispatcher reads the reply writes the
  result: the task survives this dispatcher being killed.
- **in-process** (direct HTTP to a replica, or the dispatcher's own tools): this process
  runs it and renews a lease on it. When the lease lapses (the process died), another
  dispatcher claims the task: an idempotent tool runs again, any other fails with
  ``outcome_unknown`` - never stuck in ``working``.

- **hosted** (pipelines on Temporal): the engine keeps the work going wherever it can and
  settles the task itself (``tasks.hosted``); no lease, nothing for this runner to recover.

Calls the dispatcher turned into tasks (a 2025-era client dropped its connection, a
2026-era call ran long) are adopted: they keep running where they are, in-process.
Every unfinished task has a deadline; past it the task fails with ``upstream_timeout``.
An owner has at most ``max_open_tasks`` unfinished tasks (the store decides, fleet-wide):
a task asked for beyond that is refused with ``too_many_tasks``; a call that would have
been adopted stays an ordinary call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis.exceptions
from opentelemetry.trace import SpanKind

from edgefleet.dispatcher.observability.observe import CallObservation
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.tasks.hosted import HOSTED, LiveStatus, TaskHost
from edgefleet.dispatcher.tasks.model import CANCELLED, COMPLETED, FAILED, WORKING, TaskRecord
from edgefleet.dispatcher.tasks.progress import ProgressWriter
from edgefleet.dispatcher.tasks.replies import BusTaskReplies
from edgefleet.dispatcher.tasks.sink import TaskSink
from edgefleet.dispatcher.tasks.store import TaskStore, now_ms
from edgefleet.shared import telemetry
from edgefleet.shared.aio import raise_if_cancelling
from edgefleet.shared.errors import (
    AgentUnavailable,
    EdgefleetError,
    OutcomeUnknown,
    TaskCancelled,
    TaskFinished,
    TooManyTasks,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.observability.metrics import Metrics
    from edgefleet.dispatcher.paths.bus import BusPath
    from edgefleet.dispatcher.paths.checks import ResultChecks
    from edgefleet.dispatcher.paths.dispatch import CallPaths
    from edgefleet.dispatcher.routing.router import RouteOrder, Router
    from edgefleet.dispatcher.security.audit import AuditLog
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.tasks")
_tracer = telemetry.tracer("edgefleet.dispatcher")

SWEEP_EVERY_S = 1.0
MIN_TTL_MS = 10_000  # shorter asks are raised to this (the spec lets the receiver choose)


def new_task_id() -> str:
    """Unguessable (SEP-2663: ids may act as bearer handles): 128 random bits."""
    return secrets.token_hex(16)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task work crashed", exc_info=task.exception())


def _with_progress_token(params: dict[str, Any], task_id: str) -> dict[str, Any]:
    """Agents report progress only against a token; a task wants it even when the client gave none."""
    meta = dict(params["_meta"]) if isinstance(params.get("_meta"), dict) else {}
    if "progressToken" in meta:
        return params
    meta["progressToken"] = task_id
    return {**params, "_meta": meta}


class TaskRunner:
    def __init__(
        self,
        settings: DispatcherSettings,
        store: TaskStore,
        fleet: Fleet,
        router: Router,
        paths: CallPaths,
        checks: ResultChecks,
        metrics: Metrics,
        instance: str,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.router = router
        self.paths = paths
        self.bus_path: BusPath | None = paths.bus
        self.checks = checks
        self.metrics = metrics
        self.instance = instance
        self.audit = audit  # creations and cancels (status changes are audited by the store itself)
        self.lease_ms = int(settings.task_lease_s * 1000)
        # Tasks whose work runs in this process: id -> the asyncio task doing it.
        self.running: dict[str, asyncio.Future[Any]] = {}
        self._cancelled: set[str] = set()  # local work stopped because its task was cancelled
        self._loops: list[asyncio.Task[None]] = []
        self.bus_progress: dict[str, ProgressWriter] = {}  # bus-run tasks' progress, throttled
        self._settling: set[asyncio.Task[None]] = set()
        self._closing = False
        self.refused_open = 0  # creates refused by the open-task cap (asked for, or calls not adopted)
        self.host: TaskHost | None = None  # the engine of hosted tasks (set by app when there is one)
        metrics.tasks_running.set_function(lambda: len(self.running))

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        self.store.events.on_event.append(self._on_event)
        await self.store.events.start()
        self._loops.append(asyncio.create_task(self._lease_loop(), name="task-leases"))
        self._loops.append(asyncio.create_task(self._sweep_loop(), name="task-sweeper"))
        if self.bus_path is not None:
            replies = BusTaskReplies(self, self.bus_path)
            self._loops.append(asyncio.create_task(replies.run(), name="task-replies"))

    async def aclose(self) -> None:
        self._closing = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        unfinished = list(self.running)  # before the work's done-callbacks empty the map
        work = list(self.running.values())
        for task in work:
            task.cancel()
        await asyncio.gather(*work, *self._settling, return_exceptions=True)
        # Unfinished in-process tasks stay "working": hand them to the next dispatcher now
        # rather than when their lease runs out.
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self.store.release(unfinished)
        await self.store.events.aclose()

    # -- creating tasks ----------------------------------------------------------------
    def new_record(
        self,
        *,
        owner: Identity,
        entry: ToolEntry,
        params: dict[str, Any],
        era: str,
        origin: str,
        ttl_ms: int | None = None,
    ) -> TaskRecord:
        """A task for ``owner``'s call, carrying its restriction (regions, tools) for whoever
        runs the call again."""
        now = now_ms()
        max_ttl = int(self.settings.task_max_ttl_s * 1000)
        ttl = (
            min(max(ttl_ms, MIN_TTL_MS), max_ttl)
            if isinstance(ttl_ms, int) and ttl_ms > 0
            else int(self.settings.task_ttl_s * 1000)
        )
        # The work may not outlive its record, and its failure at the deadline must stay
        # readable for a while before the record expires.
        deadline = now + min(int(self.settings.task_timeout_s * 1000), max(ttl // 2, ttl - 60_000))
        request: dict[str, Any] = {k: params[k] for k in ("arguments", "_meta") if k in params}
        request["name"] = entry.public_name
        return TaskRecord(
            id=new_task_id(),
            owner=owner.name,
            regions=tuple(owner.regions),
            tools=tuple(owner.tools),
            tool=entry.public_name,
            status=WORKING,
            created_ms=now,
            updated_ms=now,
            ttl_ms=ttl,
            poll_ms=self.settings.task_poll_interval_ms,
            deadline_ms=deadline,
            origin=origin,
            era=era,
            request=request,
            message="The operation is now in progress.",
        )

    async def _create(self, record: TaskRecord, *, lease_until_ms: int | None = None) -> None:
        try:
            await self.store.create(record, lease_until_ms=lease_until_ms, max_open=self.settings.max_open_tasks)
        except TooManyTasks:
            self.refused_open += 1
            raise
        self._count(WORKING)
        if self.audit is not None:
            self.audit.record(
                "task.status",
                task=record.id,
                status=record.status,
                owner=record.owner,
                tool=record.tool,
                origin=record.origin,
                path=record.path or None,
            )

    async def start_task(
        self,
        record: TaskRecord,
        entry: ToolEntry,
        params: dict[str, Any],
        order: RouteOrder,
        identity: Identity | None = None,
    ) -> None:
        """Durably create ``record`` and set its work going (returns once tasks/get finds it)."""
        params = _with_progress_token(params, record.id)
        if self.host is not None and self.host.hosts(entry):
            self.host.prepare(record)
            record.path, record.runner = HOSTED, None
            await self._create(record)  # no lease: the engine, not this process, keeps it going
            try:
                await self.host.start_task(record, params, order, identity)
            except EdgefleetError as exc:
                await self.finish(record.id, None, exc.to_jsonrpc())
            return
        # A task goes over the bus whenever the agent consumes it, even for tools whose
        # ordinary calls go direct: its work then survives this dispatcher.
        if entry.handler is None and self.bus_path is not None and self.bus_path.serves(entry):
            record.path = "bus"
            await self._create(record)
            try:
                region = await self.bus_path.submit(
                    entry, record.id, params, order=order, deadline_ms=record.deadline_ms
                )
            except EdgefleetError as exc:
                await self.finish(record.id, None, exc.to_jsonrpc())
                return
            await self.store.note_route(record.id, region=region, replica=None)
            return
        record.path = "builtin" if entry.handler is not None else "direct"
        record.runner = self.instance
        await self._create(record, lease_until_ms=now_ms() + self.lease_ms)
        self._spawn(record, entry, params, order, identity)

    async def record_answered(self, record: TaskRecord, result: dict[str, Any]) -> None:
        """A task whose answer is known before any work (e.g. invalid arguments): created, then completed."""
        record.path = "builtin" if record.path == "direct" else record.path
        await self._create(record)
        await self.finish(record.id, result, None)
        record.status, record.result = COMPLETED, result

    async def adopt(self, record: TaskRecord, sink: TaskSink, work: asyncio.Future[Any]) -> None:
        """Make a call already running in this process (``work``, answering into ``sink``) a task.

        Raises TooManyTasks when its owner is at the open-task cap (nothing is adopted: the
        caller gives the answer back to the client), like any failure to create it."""
        record.runner = self.instance
        hosted = self.host is not None and self.host.adoptable(record, work)
        if hosted:
            record.path = HOSTED
        await self._create(record, lease_until_ms=None if hosted else now_ms() + self.lease_ms)
        if hosted and self.host is not None:
            await self.host.attach(record)  # the engine settles it even if this process dies
        sink.detach()  # a task now: nothing held back for the client any more
        writer = ProgressWriter(self.store, record.id)
        sink.on_progress = writer.report
        if sink.progress is not None:
            writer.report(sink.progress)
        self.running[record.id] = work

        async def settle() -> None:
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                if self._closing:
                    return  # this dispatcher is stopping: the lease is released, another one recovers it
                if work.cancelled() and record.id not in self._cancelled:
                    # Cancelled by its client (a notifications/cancelled racing the take-over).
                    await self._stored(
                        record.id,
                        lambda: self.store.transition(
                            record.id, CANCELLED, message="Cancelled by its client.", error=TaskCancelled().to_jsonrpc()
                        ),
                    )
                    return
            except Exception as exc:  # noqa: BLE001 - the call's own handler logs; the task must still end
                log.warning("task %s: the adopted call raised %r", record.id, exc)
            finally:
                self.running.pop(record.id, None)
                self._cancelled.discard(record.id)
            await writer.close()
            result, error = sink.outcome()
            await self._stored(record.id, lambda: self.finish(record.id, result, error, route=sink.route))

        self._track(asyncio.create_task(settle(), name=f"task-settle-{record.id[:8]}"))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _stored(self, task_id: str, write: Callable[[], Awaitable[Any]]) -> None:
        """Write a task's answer, surviving a Redis blip (the work is done: its answer must not be lost)."""
        for attempt in range(6):
            try:
                await write()
                return
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("task %s: answer not stored yet (%s); retrying", task_id, exc)
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("task %s: its answer could not be stored; the deadline sweep will fail it", task_id)

    # -- cancelling ----------------------------------------------------------------------
    async def cancel(self, record: TaskRecord, by: str) -> None:
        """``cancelled`` in the store before this returns; then the work is stopped wherever it runs."""
        outcome = await self.store.transition(
            record.id, CANCELLED, message=f"Cancelled by {by}.", error=TaskCancelled().to_jsonrpc()
        )
        if outcome != "ok":
            raise TaskFinished(
                f"Task {record.id} is already {outcome}; only working tasks can be cancelled.",
                data={"taskId": record.id, "status": outcome},
            )
        self._count(CANCELLED)
        if self.audit is not None:
            self.audit.record("task.cancel", task=record.id, owner=record.owner, tool=record.tool, by=by)
        if record.path == "bus" and self.bus_path is not None:
            entry = self.fleet.catalog.get(record.tool)
            await self.bus_path.cancel(
                entry.agent if entry else record.tool.split(".", 1)[0], record.id, f"task cancelled by {by}"
            )
        self._stop_local(record.id)  # other dispatchers hear the store's event
        if record.path == HOSTED:
            await self._stop_hosted(record, by)

    async def _stop_hosted(self, record: TaskRecord, by: str) -> None:
        if self.host is None:
            log.error("task %s (%s): no engine here to stop its work", record.id, record.tool)
            return
        try:
            await self.host.cancel(record, by)
        except EdgefleetError as exc:
            log.error("task %s (%s): its work was not stopped (%s)", record.id, record.tool, exc.message)

    async def live(self, record: TaskRecord) -> TaskRecord:
        """An unfinished hosted task with its status and progress as the engine says now."""
        if record.path != HOSTED or record.terminal or self.host is None:
            return record
        status: LiveStatus | None = await self.host.status(record)
        if status is not None:
            record.message = status.message
            record.progress = status.progress or record.progress
        return record

    def _on_event(self, task_id: str, kind: str) -> None:
        if kind in (CANCELLED, FAILED, COMPLETED) and task_id in self.running:
            self._stop_local(task_id)  # ended elsewhere (cancel, deadline, another runner): stop ours

    def _stop_local(self, task_id: str) -> None:
        work = self.running.get(task_id)
        if work is not None and not work.done():
            self._cancelled.add(task_id)
            work.cancel()

    # -- finishing -----------------------------------------------------------------------
    async def finish(
        self, task_id: str, result: dict[str, Any] | None, error: dict[str, Any] | None, *, route: Route | None = None
    ) -> str:
        """Record the call's answer: ``completed`` with its result (even a tool error:
        isError is a result), or ``failed`` with its JSON-RPC error. A task cancelled
        meanwhile stays cancelled (the store refuses the move)."""
        where = route.fields() if route is not None else {}
        if result is not None:
            message = "The tool reported an error." if result.get("isError") else "Completed."
            outcome = await self.store.transition(
                task_id,
                COMPLETED,
                message=message,
                result=result,
                region=where.get("region"),
                replica=where.get("replica"),
            )
            status = COMPLETED
        else:
            error = error or EdgefleetError("The task ended without an answer.").to_jsonrpc()
            outcome = await self.store.transition(
                task_id,
                FAILED,
                message=str(error.get("message", "failed"))[:500],
                error=error,
                region=where.get("region"),
                replica=where.get("replica"),
            )
            status = FAILED
        if outcome == "ok":
            self._count(status)
        return outcome

    # -- in-process work -----------------------------------------------------------------
    def _spawn(
        self,
        record: TaskRecord,
        entry: ToolEntry,
        params: dict[str, Any],
        order: RouteOrder,
        identity: Identity | None = None,
    ) -> None:
        work = asyncio.create_task(
            self._run_local(record, entry, params, order, identity), name=f"task-{record.id[:8]}"
        )
        work.add_done_callback(_log_crash)
        self.running[record.id] = work

        def forget(_: asyncio.Task[None]) -> None:
            self.running.pop(record.id, None)
            self._cancelled.discard(record.id)

        work.add_done_callback(forget)

    async def _run_local(
        self, record: TaskRecord, entry: ToolEntry, params: dict[str, Any], order: RouteOrder, identity: Identity | None
    ) -> None:
        writer = ProgressWriter(self.store, record.id)
        sink = TaskSink(on_progress=writer.report)
        remaining = max(0.001, record.deadline_ms / 1000 - time.time())
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        with _tracer.start_as_current_span(
            f"task {entry.public_name}", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
        ) as span:
            if span.is_recording():
                span.set_attributes({"gen_ai.tool.name": entry.public_name, "mcp.task.id": record.id})
            obs = CallObservation(self.metrics, span, entry.public_name, record.path, self.settings.region)
            obs.routed(order)
            try:
                async with asyncio.timeout(remaining):
                    meta = dict(params["_meta"]) if isinstance(params.get("_meta"), dict) else {}
                    telemetry.inject_into(meta)
                    call = ToolCall(
                        entry, 1, {**params, "_meta": meta}, order, remaining, obs=obs, identity=identity, modern=False
                    )
                    await self.paths.call(call, sink)
                    result, error = sink.outcome()
            except EdgefleetError as exc:
                obs.failed(exc)
                error = exc.to_jsonrpc()
            except TimeoutError:
                error = UpstreamTimeout(
                    f"The task did not finish within its deadline ({remaining:.0f} s).",
                    data={"tool": entry.public_name},
                ).to_jsonrpc()
                obs.answered_with_error(error)
            except asyncio.CancelledError:
                obs.finish(cancelled=True)
                await writer.close()
                if record.id in self._cancelled:
                    return  # its task was cancelled: the store already says so
                raise  # this dispatcher is stopping: the lease is released, another one recovers it
            except Exception as exc:
                log.exception("task %s (%s): the call raised", record.id, entry.public_name)
                error = EdgefleetError(f"Internal error running the task: {type(exc).__name__}").to_jsonrpc()
                obs.answered_with_error(error)
            if result is not None and result.get("isError"):
                obs.outcome = "tool_error"
            elif error is not None and obs.outcome == "ok":
                obs.answered_with_error(error)
            obs.finish()
        await writer.close()
        await self._stored(record.id, lambda: self.finish(record.id, result, error, route=sink.route))

    # -- background loops ----------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.lease_ms / 3000)
            if not self.running:
                continue
            try:
                lost = await self.store.renew(self.instance, list(self.running), now_ms() + self.lease_ms)
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("task leases not renewed (%s)", exc)
                continue
            for task_id in lost:
                # Finished or taken over meanwhile (an event we missed, a pause longer than
                # the lease): this process must not go on with it.
                log.warning("task %s: no longer ours to run; stopping the local work", task_id)
                self._stop_local(task_id)

    async def _sweep_loop(self) -> None:
        # Recovering needs the catalog: wait (bounded) until this dispatcher knows the fleet.
        with contextlib.suppress(asyncio.TimeoutError):
            await self.fleet.wait_loaded(timeout=self.settings.ready_wait_s + 10.0)
        while True:
            raise_if_cancelling()
            try:
                await self.sweep()
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("task sweep failed (%s)", exc)
            except Exception:
                log.exception("task sweep failed")
            await asyncio.sleep(SWEEP_EVERY_S * random.uniform(0.8, 1.2))

    async def sweep(self) -> None:
        """Fail tasks past their deadline; take over tasks whose dispatcher died."""
        stale = time.monotonic() - 60
        for task_id in [t for t, w in self.bus_progress.items() if w.written_at < stale and w.latest is None]:
            del self.bus_progress[task_id]  # its result went to another dispatcher
        for task_id in await self.store.past_deadline():
            record = await self.store.get(task_id)
            if record is None:
                await self.store.forget(task_id)
                continue
            error = UpstreamTimeout(
                f"The task did not finish within its deadline ({self.settings.task_timeout_s:.0f} s).",
                data={"tool": record.tool, "taskId": task_id},
            )
            if await self.finish(task_id, None, error.to_jsonrpc()) == "ok":
                log.warning("task %s (%s) failed: past its deadline", task_id, record.tool)
                if record.path == "bus" and self.bus_path is not None:
                    await self.bus_path.cancel(record.tool.split(".", 1)[0], task_id, "task deadline")
                elif record.path == HOSTED:
                    await self._stop_hosted(record, "the task deadline")
        for task_id in await self.store.expired_leases():
            if task_id in self.running or not await self.store.claim(task_id, self.instance, now_ms() + self.lease_ms):
                continue
            record = await self.store.get(task_id)
            if record is not None:
                await self._recover(record)

    async def _recover(self, record: TaskRecord) -> None:
        entry = self.fleet.catalog.get(record.tool)
        previous = record.runner or "another dispatcher"
        if entry is not None and entry.idempotent:
            log.warning(
                "task %s (%s): %s stopped while running it; running it again (idempotent tool)",
                record.id,
                record.tool,
                previous,
            )
            params = _with_progress_token(
                {k: v for k, v in record.request.items() if k in ("arguments", "_meta")}, record.id
            )
            params["name"] = entry.upstream_name
            # Held to its owner's restriction, as the first run was: a region-bound key's
            # task runs again only in its regions (or fails there), never where it happens to fit.
            order = self.router.order(None, {}, self.fleet.regions, allowed=record.regions)
            self._spawn(record, entry, params, order, record.identity())
            return
        if entry is None:
            error: EdgefleetError = AgentUnavailable(
                f"The dispatcher running this task ({previous}) stopped, and {record.tool} is no longer in the fleet.",
                data={"tool": record.tool, "taskId": record.id},
            )
        else:
            error = OutcomeUnknown(
                f"The dispatcher running this task ({previous}) stopped before it finished; {record.tool} is not "
                "idempotent, so it was not run again and may or may not have taken effect.",
                data={"tool": record.tool, "taskId": record.id},
            )
        log.warning("task %s (%s) failed: %s", record.id, record.tool, error.message)
        await self.finish(record.id, None, error.to_jsonrpc())

    def _count(self, status: str) -> None:
        self.metrics.task_transitions.labels(status).inc()
