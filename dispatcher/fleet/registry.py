"""The fleet registry in Redis, shared by every dispatcher replica.

Layout (names in ``shared.constants.RedisKeys`` where they are shared):
- ``{p}:replica:{id}``  JSON ``ReplicaRecord`` without its tools (a few hundred bytes):
  rewritten by every heartbeat, read by every dispatcher every ``registry_sync_s``;
  expires ``heartbeat_ttl_s`` after the last heartbeat (static servers never expire).
- ``{p}:tools:{id}``    JSON list of the replica's tool definitions, written once at
  registration, same lifetime as the record. Read only by a dispatcher that does not
  hold that list yet (by the record's ``tools_hash``): an agent's tools cost Redis and
  the event loop once per new list, not once per sync or heartbeat (issue 16: a 12 MB
  record read every second by every dispatcher took the fleet down).
- ``{p}:replicas``      ZSET id -> expiry in ms, so listing is one ZRANGE + one MGET, no SCAN.
- ``{p}:agents:seen``   ZSET agent name -> last registration or heartbeat (ms): the agents
  a dispatcher that starts should find again before it calls itself ready, even when
  their leases lapsed while no dispatcher was there to take heartbeats.
- ``{p}:fleet:changed`` pub/sub: a replica joined or left; dispatchers resync at once
  instead of waiting for their next periodic sync.

Records written by dispatchers of earlier versions carry their tools inline; they are
read as before.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from pydantic import ValidationError

from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.models import ReplicaRecord

log = logging.getLogger("edgefleet.registry")

# How long an agent stays expected after it was last seen (by anyone).
SEEN_FOR_MS = 24 * 3600 * 1000


def tools_hash(tools: list[dict[str, Any]]) -> str:
    canonical = orjson.dumps(sorted(tools, key=lambda t: t.get("name", "")), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


EMPTY_HASH = tools_hash([])


class Registry:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, heartbeat_ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = int(heartbeat_ttl_s * 1000)
        self.seen_key = f"{keys.prefix}:agents:seen"
        # tools_hash -> the tool list, shared by every replica (and record object) that has
        # it; pruned to the lists of live replicas at each read.
        self.tools: dict[str, list[dict[str, Any]]] = {EMPTY_HASH: []}
        self._unreadable: set[str] = set()  # replicas whose tool list could not be read (warned once)

    def tools_key(self, replica_id: str) -> str:
        return f"{self.keys.prefix}:tools:{replica_id}"

    async def put(self, record: ReplicaRecord) -> None:
        """Store (or refresh) a replica and its tools, and tell every dispatcher."""
        now = time.time()
        record.heartbeat_at = now
        data = record.model_dump_json(exclude={"tools"}).encode()
        tools = orjson.dumps(record.tools)
        expiry = math.inf if record.static else now * 1000 + self.ttl_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            if record.static:
                pipe.set(self.keys.replica(record.replica_id), data)
                pipe.set(self.tools_key(record.replica_id), tools)
            else:
                pipe.set(self.keys.replica(record.replica_id), data, px=self.ttl_ms)
                pipe.set(self.tools_key(record.replica_id), tools, px=self.ttl_ms)
            pipe.zadd(self.keys.replicas, {record.replica_id: expiry})
            pipe.zadd(self.seen_key, {record.agent: int(now * 1000)})
            pipe.publish(self.keys.fleet_changed, record.replica_id)
            await pipe.execute()
        self.tools[record.tools_hash] = record.tools

    async def heartbeat(self, replica_id: str, load: dict[str, Any]) -> bool:
        """Extend a replica's lease; False when the registry no longer knows it.

        Read-modify-write under WATCH: a heartbeat racing a DELETE (drain) or a
        re-registration (new tools) must neither resurrect the replica nor put back its
        old record; if the key changes between our read and our write, we read again.
        The record is small (its tools live apart and are only given a longer lease).
        """
        key = self.keys.replica(replica_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(10):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return False  # leaving the block resets the pipeline (and its WATCH)
                    record = ReplicaRecord.model_validate_json(raw)
                    record.load = load
                    now = time.time()
                    record.heartbeat_at = now
                    inline = bool(record.tools)  # written by an earlier version: keep it as it was
                    data = (record.model_dump_json() if inline else record.model_dump_json(exclude={"tools"})).encode()
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    if record.static:
                        pipe.set(key, data)
                    else:
                        pipe.set(key, data, px=self.ttl_ms)
                        pipe.pexpire(self.tools_key(replica_id), self.ttl_ms)
                        pipe.zadd(self.keys.replicas, {replica_id: now * 1000 + self.ttl_ms})
                    pipe.zadd(self.seen_key, {record.agent: int(now * 1000)})
                    await pipe.execute()
                    return True
                except redis.exceptions.WatchError:
                    continue
        raise redis.exceptions.WatchError(f"heartbeat of {replica_id}: the record kept changing")

    async def remove(self, replica_id: str) -> bool:
        record = await self.get(replica_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.replica(replica_id))
            pipe.delete(self.tools_key(replica_id))
            pipe.zrem(self.keys.replicas, replica_id)
            if record is not None:
                # A removed agent is not expected back; its other replicas (if any) say
                # otherwise with their next heartbeat.
                pipe.zrem(self.seen_key, record.agent)
            pipe.publish(self.keys.fleet_changed, replica_id)
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    async def get(self, replica_id: str) -> ReplicaRecord | None:
        """One replica's record, without its tools."""
        raw = await self.redis.get(self.keys.replica(replica_id))
        return None if raw is None else ReplicaRecord.model_validate_json(raw)

    async def seen(self) -> set[str]:
        """Agents registered or heartbeating (anywhere in the fleet) within the last day."""
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.seen_key, "-inf", now_ms - SEEN_FOR_MS)
            pipe.zrange(self.seen_key, 0, -1)
            _, names = await pipe.execute()
        return {n.decode() if isinstance(n, bytes) else str(n) for n in names}

    async def live(self) -> list[ReplicaRecord]:
        """Every replica whose lease has not expired (expired ones are pruned here), each
        with its tools: from memory when this dispatcher holds that list already, else read
        once. A list that cannot be read leaves the record without tools and without a
        tools_hash, so the next read that finds it shows as a change."""
        now_ms = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.keys.replicas, "-inf", now_ms)
            pipe.zrange(self.keys.replicas, 0, -1)
            _, ids = await pipe.execute()
        if not ids:
            self.tools = {EMPTY_HASH: []}
            return []
        raws = await self.redis.mget([self.keys.replica(i.decode() if isinstance(i, bytes) else i) for i in ids])
        records = []
        for raw in raws:
            if raw is None:
                continue
            try:
                records.append(ReplicaRecord.model_validate_json(raw))
            except ValidationError:
                log.error("skipping an unreadable registry record: %.200r", raw)
        await self._fill_tools(records)
        return records

    async def _fill_tools(self, records: list[ReplicaRecord]) -> None:
        missing: dict[str, list[ReplicaRecord]] = {}  # tools_hash -> records whose list is not held here
        for record in records:
            if record.tools:  # inline (an earlier version wrote it)
                self.tools.setdefault(record.tools_hash, record.tools)
                record.tools = self.tools[record.tools_hash]
            elif record.tools_hash in self.tools:
                record.tools = self.tools[record.tools_hash]
            else:
                missing.setdefault(record.tools_hash, []).append(record)
        if missing:
            # One read per list, whichever replica it is read from.
            found = await self.redis.mget([self.tools_key(group[0].replica_id) for group in missing.values()])
            for (digest, group), raw in zip(missing.items(), found, strict=True):
                tools = _tool_list(raw)
                if tools is None or tools_hash(tools) != digest:
                    for record in group:
                        if record.replica_id not in self._unreadable:
                            log.warning(
                                "replica %s: its tool list is missing or does not match its record", record.replica_id
                            )
                            self._unreadable.add(record.replica_id)
                        record.tools_hash = ""
                    continue
                self.tools[digest] = tools
                for record in group:
                    self._unreadable.discard(record.replica_id)
                    record.tools = tools
        held = {r.tools_hash for r in records} | {EMPTY_HASH}
        self.tools = {h: t for h, t in self.tools.items() if h in held}


def _tool_list(raw: bytes | str | None) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    try:
        tools = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return tools if isinstance(tools, list) and all(isinstance(t, dict) for t in tools) else None
