"""The replies of bus-run tasks, applied to the task store by whichever dispatcher reads them.

Every dispatcher consumes the fleet's task-replies stream (or topic) as one group, so a
task's result lands even when the dispatcher that published the call is gone; replies a
dead dispatcher had read but not acknowledged are taken over after ``RECLAIM_IDLE_MS``.
Progress replies update the task's status (throttled); a result gets the same checks as a
call's answer on the bus path (size, ``outputSchema``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.tasks.progress import ProgressWriter
from edgefleet.shared.aio import raise_if_cancelling
from edgefleet.shared.envelope import Reply
from edgefleet.shared.errors import EdgefleetError, ResultTooLarge, UpstreamError

if TYPE_CHECKING:
    from edgefleet.dispatcher.paths.bus import BusPath
    from edgefleet.dispatcher.tasks.runner import TaskRunner

log = logging.getLogger("edgefleet.tasks")

RECLAIM_IDLE_MS = 30_000  # task replies read by a dispatcher that died are taken over after this


class BusTaskReplies:
    def __init__(self, runner: TaskRunner, bus_path: BusPath) -> None:
        self.runner = runner
        self.bus_path = bus_path

    async def run(self) -> None:
        """Apply the replies of bus-run tasks to the store (every dispatcher shares the work)."""
        bus_path = self.bus_path
        stream, group = bus_path.names.task_replies(), bus_path.names.dispatchers()
        consumer = self.runner.instance
        ensured = False
        last_reclaim = 0.0
        while True:
            raise_if_cancelling()
            try:
                if not ensured:
                    await bus_path.bus.ensure_group(stream, group)
                    ensured = True
                found = await bus_path.bus.consume(stream, group, consumer, count=64, block_ms=1000)
                if time.monotonic() - last_reclaim > RECLAIM_IDLE_MS / 3000:
                    last_reclaim = time.monotonic()
                    found += await bus_path.bus.reclaim(stream, group, consumer, idle_ms=RECLAIM_IDLE_MS, count=64)
                for delivery in found:
                    await self.apply(delivery.payload, delivery.headers.get("task-id"))
                    await bus_path.bus.ack(delivery, group)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - this loop dying would leave bus tasks working forever
                log.warning("task replies: %r; retrying", exc)
                ensured = False
                await asyncio.sleep(1.0)

    async def apply(self, payload: bytes, task_id: str | None = None) -> None:
        runner = self.runner
        if task_id and len(payload) > runner.settings.max_result_bytes:
            # Not even parsed: the task fails as a call's answer that large would.
            too_large = ResultTooLarge(
                f"The task's answer is larger than {runner.settings.max_result_bytes} bytes "
                "(EDGEFLEET_MAX_RESULT_BYTES); it was not kept.",
                data={"taskId": task_id},
            )
            await runner.finish(task_id, None, too_large.to_jsonrpc())
            return
        try:
            reply = Reply.model_validate_json(payload)
        except ValidationError:
            log.warning("dropping a malformed task reply")
            return
        route = Route("bus", region=reply.region, replica=reply.replica, task=reply.task_id)
        if reply.kind == "progress":
            notification = reply.notification or {}
            params = notification.get("params")
            if notification.get("method") == "notifications/progress" and isinstance(params, dict):
                writer = runner.bus_progress.get(reply.task_id)
                if writer is None:
                    writer = runner.bus_progress[reply.task_id] = ProgressWriter(runner.store, reply.task_id)
                writer.report(params)  # throttled, the last report always written
            return
        writer = runner.bus_progress.pop(reply.task_id, None)
        if writer is not None:
            await writer.close()
        if reply.kind == "result" and reply.result is not None:
            refused = await self._refused(reply, len(payload))
            if refused is not None:
                await runner.finish(reply.task_id, None, refused.to_jsonrpc(), route=route)
                return
            await runner.finish(reply.task_id, reply.result, None, route=route)
        else:
            error = reply.error or UpstreamError("The agent's bus worker answered without a result.").to_jsonrpc()
            await runner.finish(reply.task_id, None, error, route=route)

    async def _refused(self, reply: Reply, size: int) -> EdgefleetError | None:
        """The same checks as a call's answer on the bus path (size, outputSchema)."""
        record = await self.runner.store.get(reply.task_id)
        entry = self.runner.fleet.catalog.get(record.tool) if record is not None else None
        if entry is None:
            return None
        return self.runner.checks.refused(entry, reply.result, size, replica=reply.replica or "-", task=reply.task_id)
