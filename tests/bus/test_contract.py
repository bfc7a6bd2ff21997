"""One contract, three backends: the memory bus and the REAL Redis and Kafka servers
(fixtures in tests/conftest.py). What the dispatcher and the agents rely on is checked
here once for every backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from edgefleet import bus
from edgefleet.bus import Bus, Delivery
from edgefleet.shared.errors import BusUnavailable, ConfigError

# Group timeouts short enough for tests (docs/infrastructure.md: defaults make a rejoin take 18 s).
FAST_KAFKA = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 200, "rebalance_timeout_ms": 1000, "partitions": 2}


def _url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("kafka_url"))


@pytest.fixture(params=["memory", "redis", "kafka"])
def bus_url(request: pytest.FixtureRequest) -> str:
    return _url(request)


@pytest.fixture(params=["redis", "kafka"])
def server_bus_url(request: pytest.FixtureRequest) -> str:
    """Backends with a server that can be unreachable."""
    return _url(request)


@pytest.fixture(params=["memory", "redis"])
def visibility_bus_url(request: pytest.FixtureRequest) -> str:
    """Backends with a visibility timeout (Kafka instead keeps a live consumer's partitions)."""
    return _url(request)


def make(url: str) -> Bus:
    return bus.connect(url, **FAST_KAFKA) if url.startswith("kafka") else bus.connect(url)


@pytest.fixture
async def one(bus_url: str) -> AsyncIterator[Bus]:
    b = make(bus_url)
    await b.start()
    yield b
    await b.close()


def name() -> str:
    return f"eftest.{uuid.uuid4().hex[:10]}"


async def drain(b: Bus, stream: str, group: str, consumer: str, want: int, timeout: float = 15.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        got += await b.consume(stream, group, consumer, count=want - len(got), block_ms=200)
    return got


async def test_publish_consume_ack_with_headers(one: Bus) -> None:
    stream = name()
    await one.ensure_group(stream, "g")
    await one.publish(stream, b"hello", {"traceparent": "00-abc-def-01"}, key="task-1")
    (delivery,) = await drain(one, stream, "g", "c1", 1)
    assert (
        delivery.payload == b"hello" and delivery.headers["traceparent"] == "00-abc-def-01" and delivery.deliveries == 1
    )
    await one.ack(delivery, "g")
    assert await one.consume(stream, "g", "c1", count=10, block_ms=100) == []


async def test_a_group_shares_work_and_sees_entries_published_before_it_read(bus_url: str) -> None:
    stream = name()
    a, b = make(bus_url), make(bus_url)
    if bus_url.startswith("memory"):
        b = a  # one process-local bus: two consumers on the same object
    await a.start()
    await b.start()
    try:
        await a.ensure_group(stream, "g")
        for i in range(20):
            await a.publish(stream, str(i).encode(), key=f"k{i}")
        first = await drain(a, stream, "g", "c1", 20, timeout=5)
        rest = await drain(b, stream, "g", "c2", 20 - len(first), timeout=10) if len(first) < 20 else []
        payloads = sorted(int(d.payload) for d in first + rest)
        assert payloads == list(range(20)), "every entry delivered exactly once to the group"
    finally:
        await a.close()
        if b is not a:
            await b.close()


async def test_unacked_work_of_a_dead_consumer_is_delivered_again(bus_url: str) -> None:
    stream = name()
    dead = make(bus_url)
    await dead.start()
    await dead.ensure_group(stream, "g")
    await dead.publish(stream, b"job", key="job")
    (taken,) = await drain(dead, stream, "g", "dead", 1)
    survivor = dead if bus_url.startswith("memory") else make(bus_url)
    if survivor is not dead:
        await dead.close()  # the consumer goes away without acking (Kafka: leaves the group)
        await survivor.start()
    try:
        again: list[Delivery] = []
        deadline = asyncio.get_running_loop().time() + 20
        while not again and asyncio.get_running_loop().time() < deadline:
            again = await survivor.reclaim(stream, "g", "survivor", idle_ms=300, count=10)
            again += await survivor.consume(stream, "g", "survivor", count=10, block_ms=200)
        assert [d.payload for d in again] == [b"job"]
        if not bus_url.startswith("kafka"):
            assert again[0].deliveries == 2 and again[0].id == taken.id
        await survivor.ack(again[0], "g")
    finally:
        await survivor.close()


async def test_touch_keeps_long_work_from_being_reclaimed(visibility_bus_url: str) -> None:
    one = make(visibility_bus_url)
    await one.start()
    stream = name()
    await one.ensure_group(stream, "g")
    await one.publish(stream, b"long")
    (work,) = await drain(one, stream, "g", "worker", 1)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await one.touch(work, "g", "worker")
        assert await one.reclaim(stream, "g", "thief", idle_ms=300, count=10) == []
    await one.close()


async def test_listen_sees_only_what_comes_after(one: Bus) -> None:
    stream = name()
    await one.publish(stream, b"old")
    found, position = await one.listen(stream, block_ms=100)
    assert [d.payload for d in found] == []
    # Order is kept per key (Kafka: one partition per key), which is what replies rely on.
    await one.publish(stream, b"new-1", key="task-1")
    await one.publish(stream, b"new-2", key="task-1")
    seen: list[bytes] = []
    for _ in range(50):
        found, position = await one.listen(stream, block_ms=200, after=position)
        seen += [d.payload for d in found]
        if len(seen) >= 2:
            break
    assert seen == [b"new-1", b"new-2"]


async def test_unreachable_server_is_a_clear_error_not_a_hang(server_bus_url: str) -> None:
    from edgefleet.dispatcher.devtools.embedded_redis import free_port

    dead_url = (
        f"redis://127.0.0.1:{free_port()}/0"
        if server_bus_url.startswith("redis")
        else f"kafka://127.0.0.1:{free_port()}"
    )
    b = bus.connect(dead_url, timeout_s=1.0)
    started = asyncio.get_running_loop().time()
    with pytest.raises(BusUnavailable):
        await b.start()
    with pytest.raises(BusUnavailable):
        await b.publish("x", b"y")
    await b.close()
    assert asyncio.get_running_loop().time() - started < 10


def test_unknown_schemes_are_rejected_with_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as refused:
        bus.connect("amqp://localhost")
    assert "redis://" in refused.value.message and "kafka://" in refused.value.message
