"""Kafka backend (``kafka://host:port[,host:port]``) on aiokafka.

Streams are topics (created on first use with ``partitions`` partitions and a retention
bound); groups are consumer groups with manual commits. A delivery is "done" when it is
acked, and offsets are committed only up to the first delivery of a partition that is
not done yet, so work in flight when a consumer dies (or its partitions move in a
rebalance) is delivered again to the new owner: at-least-once, as on Redis, without any
reclaim step. Fetch wait is tuned for latency (docs/infrastructure.md: the default adds ~250 ms).

Group timeouts keep Kafka's production-safe defaults (brokers reject sessions below
``group.min.session.timeout.ms``, 6 s by default); a local broker can take faster ones in
the URL, which every party (dispatcher and agents) then shares:
``kafka://127.0.0.1:9092?session_timeout_ms=1000&heartbeat_interval_ms=200&rebalance_timeout_ms=1000``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiokafka
import aiokafka.errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from edgefleet.bus.base import Backlog, Bus, Delivery
from edgefleet.shared.errors import BusUnavailable

# Errors that mean "the broker cannot be reached or did not answer".
_DOWN = (
    aiokafka.errors.KafkaConnectionError,
    aiokafka.errors.KafkaTimeoutError,
    aiokafka.errors.NodeNotReadyError,
    aiokafka.errors.RequestTimedOutError,
    aiokafka.errors.NoBrokersAvailable,
    aiokafka.errors.UnknownTopicOrPartitionError,
    asyncio.TimeoutError,
    OSError,
)


URL_OPTIONS = ("session_timeout_ms", "heartbeat_interval_ms", "rebalance_timeout_ms", "partitions")


class _PartitionOffsets:
    """Offsets handed out on one partition, in order; commit up to the first undone one."""

    def __init__(self) -> None:
        self.order: collections.deque[int] = collections.deque()
        self.done: set[int] = set()

    def received(self, offset: int) -> None:
        self.order.append(offset)

    def ack(self, offset: int) -> int | None:
        """Mark done; returns the offset to commit (next to read) when it advanced."""
        self.done.add(offset)
        advanced = None
        while self.order and self.order[0] in self.done:
            first = self.order.popleft()
            self.done.discard(first)
            advanced = first + 1
        return advanced


class _Group:
    def __init__(self, consumer: aiokafka.AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.offsets: dict[TopicPartition, _PartitionOffsets] = collections.defaultdict(_PartitionOffsets)


class _Rebalance(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type information
    def __init__(self, group: _Group) -> None:
        self.group = group

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:  # whoever gets them next starts at our last commit
            self.group.offsets.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class KafkaBus(Bus):
    def __init__(
        self,
        url: str,
        *,
        partitions: int = 8,
        retention_ms: int = 24 * 3600 * 1000,
        timeout_s: float = 5.0,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 1000,
        rebalance_timeout_ms: int = 6000,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.bootstrap = parts.netloc or parts.path
        if not self.bootstrap:
            raise ValueError(f"kafka URL {url!r} names no broker (kafka://host:port[,host:port])")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - set(URL_OPTIONS)
        if unknown:
            raise ValueError(f"kafka URL {url!r}: unknown option(s) {sorted(unknown)}; known: {sorted(URL_OPTIONS)}")
        session_timeout_ms = int(query.get("session_timeout_ms", session_timeout_ms))
        heartbeat_interval_ms = int(query.get("heartbeat_interval_ms", heartbeat_interval_ms))
        rebalance_timeout_ms = int(query.get("rebalance_timeout_ms", rebalance_timeout_ms))
        partitions = int(query.get("partitions", partitions))
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.timeout_s = timeout_s
        self.group_timeouts = {
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "rebalance_timeout_ms": rebalance_timeout_ms,
        }
        self.producer: aiokafka.AIOKafkaProducer | None = None
        self.groups: dict[tuple[str, str, str], _Group] = {}
        self.listeners: dict[str, aiokafka.AIOKafkaConsumer] = {}
        self.topics: set[str] = set()
        # For backlog(): one admin client (committed offsets) and one group-less consumer
        # (end offsets), opened on first use; sampled every few seconds, never per call.
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: aiokafka.AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._producer_lock = asyncio.Lock()

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.timeout_s)
        except _DOWN as exc:
            self.topics.clear()  # a broker that comes back may have lost them: create again
            raise BusUnavailable(f"Kafka bus at {self.bootstrap} unreachable: {type(exc).__name__}: {exc}") from None

    async def start(self) -> None:
        await self._producer()

    async def ping(self) -> None:
        producer = await self._producer()
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), self.timeout_s)
        except (aiokafka.errors.KafkaError, *_DOWN) as exc:
            self.topics.clear()
            raise BusUnavailable(f"Kafka bus at {self.bootstrap} unreachable: {type(exc).__name__}: {exc}") from None

    def _made_producer(self) -> aiokafka.AIOKafkaProducer | None:
        """The producer as it is now (read again after waiting for the lock)."""
        return self.producer

    async def _producer(self) -> aiokafka.AIOKafkaProducer:
        if self.producer is not None:
            return self.producer
        async with self._producer_lock:  # concurrent first publishes must share ONE producer
            made_meanwhile = self._made_producer()
            if made_meanwhile is not None:
                return made_meanwhile
            producer = aiokafka.AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                linger_ms=0,
                acks="all",
                enable_idempotence=False,
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            try:
                await self._guard(producer.start())
            except BusUnavailable:
                await self._stop_quietly(producer)
                raise
            self.producer = producer
        return self.producer

    async def reset(self) -> None:
        consumers = [g.consumer for g in self.groups.values()] + list(self.listeners.values())
        self.groups.clear()
        self.listeners.clear()
        self.topics.clear()
        clients: list[Any] = consumers
        if self.producer is not None:
            clients.append(self.producer)
            self.producer = None
        if self._offsets is not None:
            clients.append(self._offsets)
            self._offsets = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None
        for client in clients:
            await self._stop_quietly(client)

    async def _stop_quietly(self, client: Any) -> None:
        """Stop an aiokafka client whose broker may be gone. Its stop() can fail, or leak a
        CancelledError from its own fetcher tasks: swallowed unless WE are being cancelled."""
        try:
            await asyncio.wait_for(client.stop(), self.timeout_s)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception:  # noqa: BLE001 - a dead client failing to leave cleanly is expected here
            pass

    async def close(self) -> None:
        await self.reset()

    async def _ensure_topic(self, topic: str, partitions: int | None = None) -> None:
        if topic in self.topics:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
        try:
            await self._guard(admin.start())
            new = NewTopic(
                topic,
                num_partitions=partitions or self.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(self.retention_ms)},
            )
            with contextlib.suppress(aiokafka.errors.TopicAlreadyExistsError):
                await self._guard(admin.create_topics([new]))
        finally:
            await admin.close()
        self.topics.add(topic)

    async def publish(
        self, stream: str, payload: bytes, headers: Mapping[str, str] | None = None, *, key: str | None = None
    ) -> str:
        await self._ensure_topic(stream)
        producer = await self._producer()
        meta = await self._guard(
            producer.send_and_wait(
                stream,
                payload,
                key=key.encode() if key else None,
                headers=[(k, v.encode()) for k, v in (headers or {}).items()],
            )
        )
        return f"{meta.partition}:{meta.offset}"

    async def ensure_group(self, stream: str, group: str) -> None:
        await self._ensure_topic(stream)

    async def _group(self, stream: str, group: str, consumer: str) -> _Group:
        key = (stream, group, consumer)
        found = self.groups.get(key)
        if found is not None:
            return found
        async with self._lock:
            if key in self.groups:
                return self.groups[key]
            await self._ensure_topic(stream)
            kafka_consumer = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=group,
                client_id=consumer,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=10,
                max_poll_interval_ms=300_000,
                **self.group_timeouts,
            )
            state = _Group(kafka_consumer)
            kafka_consumer.subscribe([stream], listener=_Rebalance(state))
            try:
                await self._guard(kafka_consumer.start())
            except BusUnavailable:
                await self._stop_quietly(kafka_consumer)
                raise
            self.groups[key] = state
            return state

    async def ready(self, stream: str, group: str, consumer: str) -> bool:
        state = self.groups.get((stream, group, consumer))
        return state is not None and bool(state.consumer.assignment())

    async def consume(self, stream: str, group: str, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        state = await self._group(stream, group, consumer)
        try:
            batches = await state.consumer.getmany(timeout_ms=block_ms, max_records=count)
        except _DOWN as exc:
            raise BusUnavailable(f"Kafka bus at {self.bootstrap} unreachable: {type(exc).__name__}") from None
        out = []
        for tp, records in batches.items():
            for record in records:
                state.offsets[tp].received(record.offset)
                headers = {k: v.decode() for k, v in (record.headers or ())}
                out.append(Delivery(stream, f"{tp.partition}:{record.offset}", record.value or b"", headers))
        return out

    async def ack(self, delivery: Delivery, group: str) -> None:
        partition, _, offset = delivery.id.partition(":")
        tp = TopicPartition(delivery.stream, int(partition))
        for (stream, grp, _consumer), state in self.groups.items():
            if stream != delivery.stream or grp != group or tp not in state.offsets:
                continue
            commit_to = state.offsets[tp].ack(int(offset))
            if commit_to is not None:
                # CommitFailed/IllegalState: the partition moved to another consumer in a
                # rebalance; it will deliver this entry again and the task id dedupes it.
                with contextlib.suppress(aiokafka.errors.CommitFailedError, aiokafka.errors.IllegalStateError):
                    await self._guard(state.consumer.commit({tp: OffsetAndMetadata(commit_to, "")}))
            return

    async def listen(self, stream: str, *, block_ms: int, after: str | None = None) -> tuple[list[Delivery], str]:
        consumer = self.listeners.get(stream)
        if consumer is None:
            await self._ensure_topic(stream, partitions=1)
            consumer = aiokafka.AIOKafkaConsumer(
                stream,
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                fetch_max_wait_ms=10,
            )
            try:
                await self._guard(consumer.start())
            except BusUnavailable:
                await self._stop_quietly(consumer)
                raise
            self.listeners[stream] = consumer
        try:
            batches = await consumer.getmany(timeout_ms=block_ms, max_records=1000)
        except _DOWN as exc:
            raise BusUnavailable(f"Kafka bus at {self.bootstrap} unreachable: {type(exc).__name__}") from None
        out = [
            Delivery(
                stream, f"{tp.partition}:{r.offset}", r.value or b"", {k: v.decode() for k, v in (r.headers or ())}
            )
            for tp, records in batches.items()
            for r in records
        ]
        return out, out[-1].id if out else (after or "latest")

    async def backlog(self, stream: str, group: str) -> Backlog | None:
        if self._admin is None or self._offsets is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
            offsets = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
            )
            try:
                await self._guard(admin.start())
                await self._guard(offsets.start())
            except BaseException:  # any failure, cancellation included: never leak the half-started pair
                await self._stop_quietly(offsets)
                with contextlib.suppress(Exception):
                    await admin.close()
                raise
            self._admin, self._offsets = admin, offsets
        partitions = self._offsets.partitions_for_topic(stream)
        if not partitions:
            await self._guard(self._offsets._client.force_metadata_update())  # a topic created since we last looked
            partitions = self._offsets.partitions_for_topic(stream)
            if not partitions:
                return None
        tps = [TopicPartition(stream, p) for p in partitions]
        committed = await self._guard(self._admin.list_consumer_group_offsets(group, partitions=tps))
        ends = await self._guard(self._offsets.end_offsets(tps))
        # A partition the group never committed on has everything retained still to do.
        starts = await self._guard(self._offsets.beginning_offsets(tps))
        lag = sum(
            max(0, ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else starts[tp]))
            for tp in tps
        )
        return Backlog(lag=lag, pending=None)

    async def expire(self, stream: str, seconds: int) -> None:
        # Topics are bounded by retention; a private reply topic is deleted by ``drop`` when
        # its dispatcher stops (one that dies keeps it until an operator's cleanup).
        return None

    async def drop(self, stream: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
        try:
            await self._guard(admin.start())
            await self._guard(admin.delete_topics([stream]))
        except (aiokafka.errors.KafkaError, BusUnavailable):
            pass  # some brokers (the bundled one) cannot delete; retention bounds it anyway
        finally:
            await admin.close()
        self.topics.discard(stream)
