"""The ``Bus`` interface: durable streams of work with consumer groups, shared by the
dispatcher (publishes calls, listens for replies) and agents (consume calls, reply).

Semantics every backend keeps:
- ``publish`` appends to a named stream (Redis stream / Kafka topic) and returns once the
  server has it; streams are bounded (Redis MAXLEN, Kafka retention).
- ``consume`` hands a group's consumer new deliveries; a delivery stays pending until
  ``ack``; pending work of a consumer that died is delivered again to another one
  (Redis: ``reclaim`` after a visibility timeout, which ``touch`` extends while the work
  runs; Kafka: uncommitted offsets after a group rebalance). Delivery is at-least-once:
  consumers and the dispatcher dedupe by task id.
- ``listen`` reads a stream from "now" without a group (a dispatcher's reply stream).
- Any failure to reach the server raises ``BusUnavailable`` (never hangs past the call's
  own timeout); the client reconnects by itself on the next call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Delivery:
    stream: str
    id: str  # Redis entry id, or "partition:offset" on Kafka
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    deliveries: int = 1  # how many times this entry has been handed out (1 = first time)


@dataclass(frozen=True, slots=True)
class Backlog:
    """A consumer group's backlog on one stream: ``lag`` entries not yet delivered to any
    consumer, ``pending`` delivered and not yet acknowledged (None: the backend cannot
    tell them apart; Kafka's committed offset counts both in ``lag``)."""

    lag: int
    pending: int | None


class Bus(ABC):
    """One connection to a bus server (or the in-process memory bus)."""

    url: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect eagerly (so the first call does not pay for it)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def reset(self) -> None:  # noqa: B027 - optional hook
        """Drop client-side consumer state after an outage so it is rebuilt on next use
        (a broker that lost its data no longer knows our groups or topics)."""

    async def ping(self) -> None:  # noqa: B027 - servers override
        """Raise ``BusUnavailable`` unless the server answers now (consumers of some
        backends just see "no new entries" while it is gone)."""

    @abstractmethod
    async def publish(
        self, stream: str, payload: bytes, headers: Mapping[str, str] | None = None, *, key: str | None = None
    ) -> str:
        """Append ``payload``; returns the entry id. ``key`` keeps related entries in order (Kafka partitioning)."""

    @abstractmethod
    async def ensure_group(self, stream: str, group: str) -> None:
        """Create ``stream`` and consumer ``group`` if missing (the group sees entries already there)."""

    @abstractmethod
    async def consume(self, stream: str, group: str, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` new deliveries for ``consumer``, waiting up to ``block_ms`` for the first."""

    @abstractmethod
    async def ack(self, delivery: Delivery, group: str) -> None:
        """The work of ``delivery`` is done: never deliver it again."""

    async def reclaim(self, stream: str, group: str, consumer: str, *, idle_ms: int, count: int) -> list[Delivery]:
        """Take over entries other consumers left pending for ``idle_ms`` (none where the
        backend redelivers by itself, as Kafka does on rebalance)."""
        return []

    async def ready(self, stream: str, group: str, consumer: str) -> bool:
        """Is ``consumer`` receiving ``stream``'s work yet? (Kafka: partitions assigned.)"""
        return True

    async def touch(self, delivery: Delivery, group: str, consumer: str) -> None:  # noqa: B027 - optional hook
        """Still working on ``delivery``: restart its visibility timeout."""

    @abstractmethod
    async def listen(self, stream: str, *, block_ms: int, after: str | None = None) -> tuple[list[Delivery], str]:
        """Entries of ``stream`` after position ``after`` (None: from now), and the new position."""

    @abstractmethod
    async def expire(self, stream: str, seconds: int) -> None:
        """Let a private stream (a reply stream) disappear once unused for ``seconds``."""

    async def backlog(self, stream: str, group: str) -> Backlog | None:
        """The group's backlog on ``stream`` (None: no such stream or group yet)."""
        return None

    async def drop(self, stream: str) -> None:  # noqa: B027 - optional hook
        """Delete a private stream now (a dispatcher's reply stream when it stops)."""
