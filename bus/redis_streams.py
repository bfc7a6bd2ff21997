"""Redis Streams backend (``redis://``, ``rediss://``, ``unix://``).

One stream per work queue, one consumer group per agent; an entry is two fields, the
payload and the headers (JSON). Redelivery of work a dead consumer left pending is the
two-step XPENDING IDLE + XCLAIM (works on Redis 6.2, whose XAUTOCLAIM reply differs from
7.x, and gives the delivery count for free). XCLAIM with JUSTID and idle 0 is how a busy
consumer says "still mine" (``touch``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.typing import EncodableT, FieldT

from edgefleet.bus.base import Backlog, Bus, Delivery
from edgefleet.shared.errors import BusUnavailable

# Redis 6 has no lag field: the backlog is counted by reading entries, so the count is
# capped (the figure then means "at least this many"; a few ms and ~1 MB per sample).
LAG_COUNT_CAP = 1_000
_PAYLOAD = b"p"
_HEADERS = b"h"


class RedisStreamsBus(Bus):
    def __init__(self, url: str, *, maxlen: int = 100_000, timeout_s: float = 5.0, max_connections: int = 128) -> None:
        self.url = url
        self.maxlen = maxlen
        # Blocking reads add their own block time to this socket timeout (see _blocking).
        self.timeout_s = timeout_s
        # A blocking pool: a burst of calls waits for a connection (backpressure) instead of
        # failing with "Too many connections" (redis-py's default pool caps at 100 and raises).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            health_check_interval=10,
        )
        self.redis = aioredis.Redis(connection_pool=pool)

    async def start(self) -> None:
        await self._run(self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        await self._run(self.redis.ping())

    async def _run(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            # (BlockingConnectionPool's "no connection available in time" is a ConnectionError too.)
            raise BusUnavailable(f"Redis bus at {_safe(self.url)} unreachable: {exc}") from None

    async def publish(
        self, stream: str, payload: bytes, headers: Mapping[str, str] | None = None, *, key: str | None = None
    ) -> str:
        fields: dict[FieldT, EncodableT] = {_PAYLOAD: payload, _HEADERS: orjson.dumps(dict(headers or {}))}
        entry_id: bytes = await self._run(self.redis.xadd(stream, fields, maxlen=self.maxlen, approximate=True))
        return entry_id.decode()

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self._run(self.redis.xgroup_create(stream, group, id="0", mkstream=True))
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def consume(self, stream: str, group: str, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        try:
            reply = await self._run(self.redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms))
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream was deleted or trimmed away under us: recreate and try next time.
            await self.ensure_group(stream, group)
            return []
        return [_delivery(stream, entry_id, fields) for _, entries in reply or () for entry_id, fields in entries]

    async def ack(self, delivery: Delivery, group: str) -> None:
        await self._run(self.redis.xack(delivery.stream, group, delivery.id))

    async def reclaim(self, stream: str, group: str, consumer: str, *, idle_ms: int, count: int) -> list[Delivery]:
        pending = await self._run(self.redis.xpending_range(stream, group, min="-", max="+", count=count, idle=idle_ms))
        if not pending:
            return []
        times = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        claimed = await self._run(
            self.redis.xclaim(stream, group, consumer, min_idle_time=idle_ms, message_ids=list(times))
        )
        out = []
        for entry_id, fields in claimed:
            if fields:  # an entry trimmed away while pending comes back empty: nothing to run
                out.append(_delivery(stream, entry_id, fields, deliveries=times.get(entry_id, 1) + 1))
            else:
                await self._run(self.redis.xack(stream, group, entry_id))
        return out

    async def touch(self, delivery: Delivery, group: str, consumer: str) -> None:
        await self._run(
            self.redis.xclaim(delivery.stream, group, consumer, min_idle_time=0, message_ids=[delivery.id], justid=True)
        )

    async def listen(self, stream: str, *, block_ms: int, after: str | None = None) -> tuple[list[Delivery], str]:
        position = after or "$"
        reply = await self._run(self.redis.xread({stream: position}, count=1000, block=block_ms))
        out = [_delivery(stream, entry_id, fields) for _, entries in reply or () for entry_id, fields in entries]
        if out:
            return out, out[-1].id
        if position == "$":
            # Pin "now" so entries written between two listen calls are not skipped.
            last = (
                await self._run(self.redis.xinfo_stream(stream)) if await self._run(self.redis.exists(stream)) else None
            )
            return [], (last["last-generated-id"].decode() if last else "0-0")
        return [], position

    async def expire(self, stream: str, seconds: int) -> None:
        await self._run(self.redis.expire(stream, seconds))

    async def backlog(self, stream: str, group: str) -> Backlog | None:
        try:
            groups = await self._run(self.redis.xinfo_groups(stream))
        except redis.exceptions.ResponseError:  # no such stream yet
            return None
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != group:
                continue
            lag = info.get("lag")
            if lag is None:  # Redis < 7 has no lag field: count what follows the last delivery (capped)
                last = info["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else str(last)
                lag = len(await self._run(self.redis.xrange(stream, min=f"({last}", max="+", count=LAG_COUNT_CAP)))
            return Backlog(lag=int(lag), pending=int(info["pending"]))
        return None

    async def drop(self, stream: str) -> None:
        await self._run(self.redis.delete(stream))


def _delivery(stream: str, entry_id: Any, fields: dict[bytes, bytes], *, deliveries: int = 1) -> Delivery:
    entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    headers = orjson.loads(fields.get(_HEADERS, b"{}"))
    return Delivery(stream=stream, id=entry, payload=fields.get(_PAYLOAD, b""), headers=headers, deliveries=deliveries)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
