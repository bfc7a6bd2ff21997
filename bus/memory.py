"""In-process memory bus (``memory://``): the same semantics as the Redis backend, for
unit tests only. Nothing survives the process; never use it for a real fleet."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgefleet.bus.base import Backlog, Bus, Delivery


@dataclass
class _Pending:
    consumer: str
    since: float
    times: int


@dataclass
class _Group:
    next_index: int = 0
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    entries: list[Delivery] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class MemoryBus(Bus):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.streams: dict[str, _Stream] = {}
        self._ids = itertools.count(1)

    def _stream(self, name: str) -> _Stream:
        return self.streams.setdefault(name, _Stream())

    async def close(self) -> None:
        self.streams.clear()

    async def publish(
        self, stream: str, payload: bytes, headers: Mapping[str, str] | None = None, *, key: str | None = None
    ) -> str:
        s = self._stream(stream)
        entry_id = f"{next(self._ids)}-0"
        s.entries.append(Delivery(stream, entry_id, payload, dict(headers or {})))
        async with s.changed:
            s.changed.notify_all()
        return entry_id

    async def ensure_group(self, stream: str, group: str) -> None:
        self._stream(stream).groups.setdefault(group, _Group())

    async def backlog(self, stream: str, group: str) -> Backlog | None:
        s = self.streams.get(stream)
        g = s.groups.get(group) if s is not None else None
        if s is None or g is None:
            return None
        return Backlog(lag=len(s.entries) - g.next_index, pending=len(g.pending))

    async def consume(self, stream: str, group: str, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        s = self._stream(stream)
        g = s.groups.setdefault(group, _Group())
        if g.next_index >= len(s.entries) and block_ms > 0:
            async with s.changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(s.changed.wait_for(lambda: g.next_index < len(s.entries)), block_ms / 1000)
        out = s.entries[g.next_index : g.next_index + count]
        g.next_index += len(out)
        now = time.monotonic()
        for d in out:
            g.pending[d.id] = _Pending(consumer, now, 1)
        return out

    async def ack(self, delivery: Delivery, group: str) -> None:
        self._stream(delivery.stream).groups.setdefault(group, _Group()).pending.pop(delivery.id, None)

    async def reclaim(self, stream: str, group: str, consumer: str, *, idle_ms: int, count: int) -> list[Delivery]:
        s = self._stream(stream)
        g = s.groups.setdefault(group, _Group())
        now = time.monotonic()
        by_id = {d.id: d for d in s.entries}
        out: list[Delivery] = []
        for entry_id, p in list(g.pending.items()):
            if len(out) >= count:
                break
            if (now - p.since) * 1000 >= idle_ms and entry_id in by_id:
                p.consumer, p.since, p.times = consumer, now, p.times + 1
                d = by_id[entry_id]
                out.append(Delivery(d.stream, d.id, d.payload, d.headers, deliveries=p.times))
        return out

    async def touch(self, delivery: Delivery, group: str, consumer: str) -> None:
        p = self._stream(delivery.stream).groups.setdefault(group, _Group()).pending.get(delivery.id)
        if p is not None:
            p.consumer, p.since = consumer, time.monotonic()

    async def listen(self, stream: str, *, block_ms: int, after: str | None = None) -> tuple[list[Delivery], str]:
        s = self._stream(stream)
        if after is None:
            return [], str(len(s.entries))
        start = int(after)
        if start >= len(s.entries) and block_ms > 0:
            async with s.changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(s.changed.wait_for(lambda: start < len(s.entries)), block_ms / 1000)
        out = s.entries[start:]
        return list(out), str(start + len(out))

    async def expire(self, stream: str, seconds: int) -> None:
        return None
