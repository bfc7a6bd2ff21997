"""Progress an agent reports, written to its task at a bounded rate (an agent may report
thousands of times a second; a task's readers need the latest, not every step)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.exceptions

from edgefleet.dispatcher.tasks.store import TaskStore

log = logging.getLogger("edgefleet.tasks")

PROGRESS_EVERY_S = 0.2  # progress reaches the store at most this often per task (the last one always)


class ProgressWriter:
    """Throttled progress updates of one task (an agent may report thousands per second)."""

    def __init__(self, store: TaskStore, task_id: str) -> None:
        self.store = store
        self.task_id = task_id
        self.latest: dict[str, Any] | None = None
        self.written_at = 0.0
        self._pending: asyncio.Task[None] | None = None

    def report(self, params: dict[str, Any]) -> None:
        self.latest = {k: params[k] for k in ("progress", "total", "message") if k in params}
        if self._pending is None or self._pending.done():
            delay = max(0.0, PROGRESS_EVERY_S - (time.monotonic() - self.written_at))
            self._pending = asyncio.create_task(self._write_after(delay))

    async def _write_after(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.flush()

    async def flush(self) -> None:
        latest, self.latest = self.latest, None
        if latest is None:
            return
        self.written_at = time.monotonic()
        message = latest.get("message") if isinstance(latest.get("message"), str) else None
        try:
            await self.store.progress(self.task_id, latest, message)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("task %s: progress not stored (%s)", self.task_id, exc)

    async def close(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        await self.flush()
