"""The task store, in Redis: a task's state is never only in a dispatcher's memory.

Per task a HASH (the record) and a LIST (status history), both expiring at creation +
ttl. Indexes: the owner's ZSET and a fleet-wide one (listing, newest first), the owner's
ZSET of unfinished tasks (the open-task cap counts it), a ZSET of deadlines of unfinished
tasks, and a ZSET of leases of tasks run inside a dispatcher process. Creating a task is
one Lua script, so the cap holds when dispatchers race for an owner's last slot. Every
status change goes through one Lua script that enforces the spec's transition rules
atomically, so two dispatchers racing (a result arriving while a cancel lands) can never
move a task out of a terminal status; the move to a terminal status frees the task's
slot. Each change is published on one pub/sub channel so waiters (``tasks/result``, the
SSE stream, the runner's cancel listener) wake at once instead of polling.
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
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher.tasks.model import TERMINAL, TaskRecord, iso
from edgefleet.shared.aio import raise_if_cancelling
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import TooManyTasks

log = logging.getLogger("edgefleet.tasks")

# Retry-After of a create refused by the open-task cap: a slot frees when a task ends, which
# this cannot predict; a few seconds keeps a retrying client from hammering.
OPEN_TASKS_RETRY_S = 5

# KEYS: task, history, owner index, all index, deadlines, leases, owner's open tasks, events
# ARGV: id, cap (0 = none), now ms, expire at ms, history entry, index member, oldest index
#       member kept, indexes expire at ms, deadline ms, lease until ms ('' = none), status,
#       task key prefix, then the record's field, value pairs
# Returns 0 (created) or, refused, the owner's number of unfinished tasks.
_CREATE = """
local open = KEYS[7]
local unfinished = ARGV[11] == 'working' or ARGV[11] == 'input_required'
if unfinished and tonumber(ARGV[2]) > 0 then
  local cap = tonumber(ARGV[2])
  redis.call('ZREMRANGEBYSCORE', open, '-inf', ARGV[3])  -- expired, and their records with them
  local count = redis.call('ZCARD', open)
  if count >= cap then
    -- At the cap, make sure every slot is really taken: a record can vanish without its
    -- terminal transition (deleted, evicted), and a dispatcher of an older version ends
    -- tasks without freeing their slots.
    for _, id in ipairs(redis.call('ZRANGE', open, 0, -1)) do
      local status = redis.call('HGET', ARGV[12] .. id, 'status')
      if status ~= 'working' and status ~= 'input_required' then
        redis.call('ZREM', open, id)
        count = count - 1
      end
    end
    if count >= cap then return count end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 13))
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
for i = 3, 4 do
  redis.call('ZADD', KEYS[i], 0, ARGV[6])
  -- Index entries of tasks that can no longer exist (past the longest ttl).
  redis.call('ZREMRANGEBYLEX', KEYS[i], '-', '(' .. ARGV[7])
  redis.call('PEXPIREAT', KEYS[i], ARGV[8])
end
redis.call('ZADD', KEYS[5], ARGV[9], ARGV[1])
if ARGV[10] ~= '' then redis.call('ZADD', KEYS[6], ARGV[10], ARGV[1]) end
if unfinished then
  -- Scored by the record's expiry: past it the slot is free even if nothing ended the task.
  redis.call('ZADD', open, ARGV[4], ARGV[1])
  if redis.call('PTTL', open) < tonumber(ARGV[8]) - tonumber(ARGV[3]) then redis.call('PEXPIREAT', open, ARGV[8]) end
end
redis.call('PUBLISH', KEYS[8], ARGV[1] .. ' ' .. ARGV[11])
return 0
"""

# KEYS: task, history, deadlines, leases, events channel, audit stream
# ARGV: id, to, now ms, message ('' = keep), result json, error json, history entry json, region, replica, is_error (1/0),
#       key prefix of the owners' open-task sets, audit maxlen ('' = no audit), audit source, error code ('' = none)
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
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('ZREM', ARGV[11] .. owner, ARGV[1]) end  -- its open-task slot
  redis.call('HDEL', KEYS[1], 'request')  -- the arguments are not needed once it is over
end
redis.call('PUBLISH', KEYS[5], ARGV[1] .. ' ' .. to)
-- The audit stream (dispatcher/audit.py), in the same step: every change, whoever made it.
if ARGV[12] ~= '' then
  local event = {ts = tonumber(ARGV[3]), event = 'task.status', source = ARGV[13], task = ARGV[1], status = to,
                 owner = redis.call('HGET', KEYS[1], 'owner'), tool = redis.call('HGET', KEYS[1], 'tool')}
  if ARGV[14] ~= '' then event['code'] = ARGV[14] end
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[12], '*', 'e', cjson.encode(event))
end
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


def _error_code(error: dict[str, Any] | None) -> str:
    """Our stable code of a task's error (data.code), for the audit stream; '' if none."""
    data = error.get("data") if isinstance(error, dict) else None
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else ""


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
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        *,
        max_ttl_ms: int = 7 * 86_400_000,
        audit_maxlen: int = 0,
        audit_source: str = "",
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.max_ttl_ms = max_ttl_ms
        # Status changes also go to the audit stream (0: they do not).
        self.audit_maxlen = audit_maxlen
        self.audit_source = audit_source
        # Not a RedisKeys name (yet): the transition script builds it from the record's owner.
        self._open_prefix = f"{keys.prefix}:tasks:open:"
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._progress = redis.register_script(_PROGRESS)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._note_route = redis.register_script(_NOTE_ROUTE)
        self.events = TaskEvents(redis, keys.task_events)

    # -- writes ------------------------------------------------------------------------
    def open_tasks_key(self, owner: str) -> str:
        """ZSET task id -> record expiry (ms): ``owner``'s unfinished tasks."""
        return self._open_prefix + owner

    async def create(self, record: TaskRecord, *, lease_until_ms: int | None = None, max_open: int = 0) -> None:
        """Durably create ``record`` (returns once a tasks/get would find it).

        ``max_open`` > 0: refused with TooManyTasks if the owner already has that many
        unfinished tasks, decided atomically with the creation, fleet-wide."""
        k = self.keys
        expire_at = record.created_ms + record.ttl_ms
        fields: list[str | bytes | int] = []
        for name, value in record.to_hash().items():
            fields += [name, value]
        refused = await self._create(
            keys=[
                k.task(record.id),
                k.task_history(record.id),
                k.tasks_of(record.owner),
                k.tasks_all,
                k.task_deadlines,
                k.task_leases,
                self.open_tasks_key(record.owner),
                k.task_events,
            ],
            args=[
                record.id,
                max_open,
                now_ms(),
                expire_at,
                _entry(record.status, record.created_ms, record.message),
                index_member(record.created_ms, record.id),
                index_member(max(0, record.created_ms - self.max_ttl_ms), ""),
                max(expire_at, record.created_ms + self.max_ttl_ms),
                record.deadline_ms,
                "" if lease_until_ms is None else lease_until_ms,
                record.status,
                k.task(""),
                *fields,
            ],
        )
        if refused:
            raise TooManyTasks(
                f"{record.owner!r} already has {refused} unfinished tasks, the most one identity may have; "
                "retry when one ends, or cancel one.",
                data={
                    "retry_after_s": OPEN_TASKS_RETRY_S,
                    "limit": max_open,
                    "open": int(refused),
                    "scope": "open_tasks",
                },
            )

    async def transition(
        self,
        task_id: str,
        to: str,
        *,
        message: str | None = None,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        region: str | None = None,
        replica: str | None = None,
    ) -> str:
        """Move ``task_id`` to ``to`` if the spec allows it from where it is: "ok", else
        "missing" or the status it stays in (a terminal one, or an illegal move)."""
        at = now_ms()
        k = self.keys
        outcome = await self._transition(
            keys=[k.task(task_id), k.task_history(task_id), k.task_deadlines, k.task_leases, k.task_events, k.audit],
            args=[
                task_id,
                to,
                at,
                message or "",
                orjson.dumps(result) if result is not None else "",
                orjson.dumps(error) if error is not None else "",
                _entry(to, at, message),
                region or "",
                replica or "",
                "1" if result is not None and result.get("isError") else "0",
                self._open_prefix,
                self.audit_maxlen or "",
                self.audit_source,
                _error_code(error),
            ],
        )
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def progress(self, task_id: str, progress: dict[str, Any], message: str | None = None) -> bool:
        done = await self._progress(
            keys=[self.keys.task(task_id), self.keys.task_events],
            args=[task_id, orjson.dumps(progress), now_ms(), message or ""],
        )
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
        return bool(
            await self._claim(
                keys=[self.keys.task(task_id), self.keys.task_leases], args=[task_id, runner, until_ms, now_ms()]
            )
        )

    async def expired_leases(self, limit: int = 50) -> list[str]:
        found = cast(
            list[bytes], await self.redis.zrangebyscore(self.keys.task_leases, "-inf", now_ms(), start=0, num=limit)
        )
        return [f.decode() for f in found]

    async def past_deadline(self, limit: int = 50) -> list[str]:
        found = cast(
            list[bytes], await self.redis.zrangebyscore(self.keys.task_deadlines, "-inf", now_ms(), start=0, num=limit)
        )
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
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.task(task_id)))
        return TaskRecord.from_hash(task_id, raw) if raw else None

    async def history(self, task_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(e) for e in await self.redis.lrange(self.keys.task_history(task_id), 0, -1)]

    async def list(
        self, owner: str | None, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[TaskRecord], str | None]:
        """A page of ``owner``'s tasks (None: everyone's), newest first, and the next cursor.

        Index members are ``<created ms, 13 digits>:<id>`` with one score, so lexical order is
        creation order and a cursor (the last member seen) is an exact, stable position even
        for tasks created in the same millisecond or while someone pages."""
        limit = max(1, min(limit, MAX_PAGE))
        index = self.keys.tasks_all if owner is None else self.keys.tasks_of(owner)
        top = b"+"
        if cursor:
            position = _decode_cursor(cursor)
            if position is None:
                raise BadCursor(cursor)
            top = b"(" + position.encode()
        records: list[TaskRecord] = []
        vanished: list[bytes] = []
        last: bytes | None = None
        exhausted = False
        while len(records) < limit and not exhausted:
            members = cast(
                list[bytes], await self.redis.zrevrangebylex(index, top, b"-", start=0, num=limit - len(records))
            )
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
            top = b"(" + members[-1]
        if vanished:
            await self.redis.zrem(index, *vanished)
        more = (
            not exhausted
            and last is not None
            and bool(await self.redis.zrevrangebylex(index, b"(" + last, b"-", start=0, num=1))
        )
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
            raise_if_cancelling()
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
