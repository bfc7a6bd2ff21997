from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from edgefleet.dispatcher.tasks.store import TaskStore
from edgefleet.shared.constants import RedisKeys


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[TaskStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = TaskStore(client, RedisKeys(redis_prefix))
    await store.events.start()
    try:
        yield store
    finally:
        await store.events.aclose()
        await client.aclose()
