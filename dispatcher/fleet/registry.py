"""The fleet registry in Redis, shared by every dispatcher replica.

Layout (names in ``shared.constants.RedisKeys``):
- ``{p}:replica:{id}``  JSON ``ReplicaRecord``; expires ``heartbeat_ttl_s`` after the last
  heartbeat (static servers never expire).
- ``{p}:replicas``      ZSET id -> expiry in ms, so listing is one ZRANGE + one MGET, no SCAN.
- ``{p}:fleet:changed`` pub/sub: a replica joined or left; dispatchers resync at once
  instead of waiting for their next periodic sync.
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


def tools_hash(tools: list[dict[str, Any]]) -> str:
    canonical = orjson.dumps(sorted(tools, key=lambda t: t.get("name", "")), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


class Registry:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, heartbeat_ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = int(heartbeat_ttl_s * 1000)

    async def put(self, record: ReplicaRecord) -> None:
        """Store (or refresh) a replica and tell every dispatcher."""
        now = time.time()
        record.heartbeat_at = now
        data = record.model_dump_json().encode()
        expiry = math.inf if record.static else now * 1000 + self.ttl_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            if record.static:
                pipe.set(self.keys.replica(record.replica_id), data)
            else:
                pipe.set(self.keys.replica(record.replica_id), data, px=self.ttl_ms)
            pipe.zadd(self.keys.replicas, {record.replica_id: expiry})
            pipe.publish(self.keys.fleet_changed, record.replica_id)
            await pipe.execute()

    async def heartbeat(self, replica_id: str, load: dict[str, Any]) -> bool:
        """Extend a replica's lease; False when the registry no longer knows it.

        Read-modify-write under WATCH: a heartbeat racing a DELETE (drain) or a
        re-registration (new tools) must neither resurrect the replica nor put back its
        old record; if the key changes between our read and our write, we read again.
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
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.multi unannotated
                    if record.static:
                        pipe.set(key, record.model_dump_json().encode())
                    else:
                        pipe.set(key, record.model_dump_json().encode(), px=self.ttl_ms)
                        pipe.zadd(self.keys.replicas, {replica_id: now * 1000 + self.ttl_ms})
                    await pipe.execute()
                    return True
                except redis.exceptions.WatchError:
                    continue
        raise redis.exceptions.WatchError(f"heartbeat of {replica_id}: the record kept changing")

    async def remove(self, replica_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.replica(replica_id))
            pipe.zrem(self.keys.replicas, replica_id)
            pipe.publish(self.keys.fleet_changed, replica_id)
            deleted, _, _ = await pipe.execute()
        return bool(deleted)

    async def get(self, replica_id: str) -> ReplicaRecord | None:
        raw = await self.redis.get(self.keys.replica(replica_id))
        return None if raw is None else ReplicaRecord.model_validate_json(raw)

    async def live(self) -> list[ReplicaRecord]:
        """Every replica whose lease has not expired (expired ones are pruned here)."""
        now_ms = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.keys.replicas, "-inf", now_ms)
            pipe.zrange(self.keys.replicas, 0, -1)
            _, ids = await pipe.execute()
        if not ids:
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
        return records
