"""The task store, in Redis: a task's state is never only in a dispatcher's memory.

Per task a HASH (the record) and a LIST (status history), both expiring at creation +
ttl. Indexes: the owner's ZSET and a fleet-wide one (listing, newest first), a ZSET of
deadlines of unfinished tasks, and a ZSET of leases of tasks run inside a dispatcher
process. Every status change goes through one Lua script that enforces the spec's
transition rules atomically, so two dispatchers racing (a result arriving while a cancel
lands) can never move a task out of a terminal status. Each change is published on one
pub/sub channel so waiters (``tasks/result``, the SSE stream, the runner's cancel
listener) wake at once instead of polling.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from dispatcher.tasks.model import TERMINAL, TaskRecord, iso
from shared.constants import RedisKeys

log = logging.getLogger("edgefleet.tasks")

# KEYS: task, history, deadlines, leases, events channel
# ARGV: id, to, now ms, message ('' = keep), result json, error json, history entry json, region, replica, is_error (1/0)
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local allowed = {
  working = {input_required = true, completed = true, failed = true, cancelled = true},
  input_required = {working = true, completed = true, failed = true, cancelled = true},
}
local from = allowed[status]
if not from or not from[ARGV[2]] then return status end
local to = ARGV[2]
-- 2025-11-25: a tool result with isError makes the task "failed" (the result is kept and is
-- what tasks/result answers); the 2026 extension calls it "completed".
if to == 'completed' and ARGV[10] == '1' and redis.call('HGET', KEYS[1], 'era') == 'legacy' then to = 'failed' end
redis.call('HSET', KEYS[1], 'status', to, 'updated', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'region', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'replica', ARGV[9]) end
local entry = string.gsub(ARGV[7], '"status":"completed"', '"status":"' .. to .. '"', 1)
redis.call('RPUSH', KEYS[2], entry)
if to == 'completed' or to == 'failed' or to == 'cancelled' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[1], 'request')  -- the arguments are not needed once it is over
end
redis.call('PUBLISH', KEYS[5], ARGV[1] .. ' ' .. to)
return 'ok'
"""

# Route of a task that still exists (a plain HSET would recreate an expired one without a TTL).
_NOTE_ROUTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'region', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'replica', ARGV[2]) end
return 1
"""

# KEYS: task, events ; ARGV: id, progress json, now ms, message ('' = keep)
_PROGRESS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'working' and status ~= 'input_required' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'updated', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[4]) end
redis.call('PUBLISH', KEYS[2], ARGV[1] .. ' progress')
return 1
"""

# Take over a task whose runner stopped renewing its lease.
# KEYS: task, leases ; ARGV: id, runner, lease until ms, now ms
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[4]) then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'working' and status ~= 'input_required' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'runner', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""

# Renew the leases this runner still holds; returns the ids it no longer holds (finished,
# expired, or claimed by another dispatcher), whose local work must stop.
# KEYS: leases ; ARGV: runner, until ms, prefix, ids...
_RENEW = """
local lost = {}
for i = 4, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  local status = redis.call('HGET', key, 'status')
  if redis.call('HGET', key, 'runner') == ARGV[1] and (status == 'working' or status == 'input_required') then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

MAX_PAGE = 200


def now_ms() -> int:
    return int(time.time() * 1000)


def _entry(status: str, at_ms: int, message: str | None) -> bytes:
    entry: dict[str, Any] = {"status": status, "at": iso(at_ms)}
    if message:
        entry["message"] = message
    return orjson.dumps(entry)


def index_member(created_ms: int, task_id: str) -> str:
    return f"{created_ms:013d}:{task_id}"


def _encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str | None:
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    created, sep, task_id = member.partition(":")
    return member if sep and created.isdigit() and len(created) == 13 and 0 < len(task_id) <= 128 else None


class BadCursor(ValueError):
    """A ``cursor`` this store did not hand out."""


class TaskStore:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, *, max_ttl_ms: int = 7 * 86_400_000) -> None:
        self.redis = redis
        self.keys = keys
        self.max_ttl_ms = max_ttl_ms
        self._transition = redis.register_script(_TRANSITION)
        self._progress = redis.register_script(_PROGRESS)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._note_route = redis.register_script(_NOTE_ROUTE)
        self.events = TaskEvents(redis, keys.task_events)

    # -- writes ------------------------------------------------------------------------
    async def create(self, record: TaskRecord, *, lease_until_ms: int | None = None) -> None:
        """Durably create ``record`` (returns once a tasks/get would find it)."""
        key, history = self.keys.task(record.id), self.keys.task_history(record.id)
        expire_at = record.created_ms + record.ttl_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
            pipe.pexpireat(key, expire_at)
            pipe.rpush(history, _entry(record.status, record.created_ms, record.message))
            pipe.pexpireat(history, expire_at)
            for index in (self.keys.tasks_of(record.owner), self.keys.tasks_all):
                pipe.zadd(index, {index_member(record.created_ms, record.id): 0})
                # Index entries of tasks that can no longer exist (past the longest ttl).
                pipe.zremrangebylex(index, "-", "(" + index_member(max(0, record.created_ms - self.max_ttl_ms), ""))
                pipe.pexpireat(index, record.created_ms + self.max_ttl_ms)
            pipe.zadd(self.keys.task_deadlines, {record.id: record.deadline_ms})
            if lease_until_ms is not None:
                pipe.zadd(self.keys.task_leases, {record.id: lease_until_ms})
            pipe.publish(self.keys.task_events, f"{record.id} {record.status}")
            await pipe.execute()

    async def transition(
        self, task_id: str, to: str, *, message: str | None = None, result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None, region: str | None = None, replica: str | None = None,
    ) -> str:
        """Move ``task_id`` to ``to`` if the spec allows it from where it is: "ok", else
        "missing" or the status it stays in (a terminal one, or an illegal move)."""
        at = now_ms()
        k = self.keys
        outcome = await self._transition(
            keys=[k.task(task_id), k.task_history(task_id), k.task_deadlines, k.task_leases, k.task_events],
            args=[task_id, to, at, message or "", orjson.dumps(result) if result is not None else "",
                  orjson.dumps(error) if error is not None else "", _entry(to, at, message), region or "", replica or "",
                  "1" if result is not None and result.get("isError") else "0"],
        )
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def progress(self, task_id: str, progress: dict[str, Any], message: str | None = None) -> bool:
        done = await self._progress(keys=[self.keys.task(task_id), self.keys.task_events],
                                    args=[task_id, orjson.dumps(progress), now_ms(), message or ""])
        return bool(done)

    async def note_route(self, task_id: str, *, region: str | None, replica: str | None) -> None:
        if region or replica:
            await self._note_route(keys=[self.keys.task(task_id)], args=[region or "", replica or ""])

    # -- leases (tasks run inside a dispatcher process) ---------------------------------
    async def renew(self, runner: str, task_ids: Iterable[str], until_ms: int) -> list[str]:
        """Extend ``runner``'s leases; returns the ids it does not hold any more."""
        ids = list(task_ids)
        if not ids:
            return []
        prefix = self.keys.task("")
        lost = await self._renew(keys=[self.keys.task_leases], args=[runner, until_ms, prefix, *ids])
        return [i.decode() if isinstance(i, bytes) else str(i) for i in lost]

    async def release(self, task_ids: Iterable[str]) -> None:
        """This dispatcher is stopping: let another one recover these tasks right away."""
        ids = list(task_ids)
        if ids:
            await self.redis.zadd(self.keys.task_leases, dict.fromkeys(ids, 0), xx=True)

    async def claim(self, task_id: str, runner: str, until_ms: int) -> bool:
        return bool(await self._claim(keys=[self.keys.task(task_id), self.keys.task_leases], args=[task_id, runner, until_ms, now_ms()]))

    async def expired_leases(self, limit: int = 50) -> list[str]:
        found = await self.redis.zrangebyscore(self.keys.task_leases, "-inf", now_ms(), start=0, num=limit)
        return [f.decode() for f in found]

    async def past_deadline(self, limit: int = 50) -> list[str]:
        found = await self.redis.zrangebyscore(self.keys.task_deadlines, "-inf", now_ms(), start=0, num=limit)
        return [f.decode() for f in found]

    async def forget(self, task_id: str) -> None:
        """Drop a vanished (expired) task from the work indexes."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.task_deadlines, task_id)
            pipe.zrem(self.keys.task_leases, task_id)
            await pipe.execute()

    # -- reads -------------------------------------------------------------------------
    async def get(self, task_id: str) -> TaskRecord | None:
        if not task_id or len(task_id) > 128:
            return None
        raw = await self.redis.hgetall(self.keys.task(task_id))
        return TaskRecord.from_hash(task_id, raw) if raw else None

    async def history(self, task_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(e) for e in await self.redis.lrange(self.keys.task_history(task_id), 0, -1)]

    async def list(self, owner: str | None, *, cursor: str | None = None, limit: int = 50) -> tuple[list[TaskRecord], str | None]:
        """A page of ``owner``'s tasks (None: everyone's), newest first, and the next cursor.

        Index members are ``<created ms, 13 digits>:<id>`` with one score, so lexical order is
        creation order and a cursor (the last member seen) is an exact, stable position even
        for tasks created in the same millisecond or while someone pages."""
        limit = max(1, min(limit, MAX_PAGE))
        index = self.keys.tasks_all if owner is None else self.keys.tasks_of(owner)
        top = b"+"
        if cursor:
            member = _decode_cursor(cursor)
            if member is None:
                raise BadCursor(cursor)
            top = b"(" + member.encode()
        records: list[TaskRecord] = []
        vanished: list[bytes] = []
        last: bytes | None = None
        exhausted = False
        while len(records) < limit and not exhausted:
            members = await self.redis.zrevrangebylex(index, top, b"-", start=0, num=limit - len(records))
            exhausted = len(members) < limit - len(records)
            if not members:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(self.keys.task(member.split(b":", 1)[1].decode()))
                found = await pipe.execute()
            for member, raw in zip(members, found, strict=True):
                last = member
                if raw:
                    records.append(TaskRecord.from_hash(member.split(b":", 1)[1].decode(), raw))
                else:
                    vanished.append(member)  # expired: its index entry goes too
            top = b"(" + last  # type: ignore[operator]
        if vanished:
            await self.redis.zrem(index, *vanished)
        more = not exhausted and last is not None and bool(await self.redis.zrevrangebylex(index, b"(" + last, b"-", start=0, num=1))
        return records, (_encode_cursor(last.decode()) if more and last is not None else None)


class TaskEvents:
    """One pub/sub subscription per dispatcher, fanned out to local waiters by task id."""

    def __init__(self, redis: aioredis.Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self.waiters: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self.on_event: list[Any] = []  # callables (task_id, kind) run for every event
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="task-events")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), 5)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        task_id, _, kind = message["data"].decode().partition(" ")
                        self._deliver(task_id, kind)
            except (redis.exceptions.RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("task events: subscription lost (%s); resubscribing", exc)
                # Waiters re-read the store when woken, so a missed event costs at most this.
                for queues in self.waiters.values():
                    for queue in queues:
                        queue.put_nowait("resync")
                await asyncio.sleep(0.5)

    def _deliver(self, task_id: str, kind: str) -> None:
        for queue in self.waiters.get(task_id, ()):
            queue.put_nowait(kind)
        for callback in self.on_event:
            callback(task_id, kind)

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue that receives the kind of every change of ``task_id`` while open."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.waiters[task_id].add(queue)
        try:
            yield queue
        finally:
            queues = self.waiters.get(task_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self.waiters[task_id]


def is_terminal(status: str) -> bool:
    return status in TERMINAL
