"""The 2025-era session store against a real Redis: bounded per identity, in what it keeps
of an ``initialize`` and in its local cache; a Redis outage never turns into a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis
from edgefleet.dispatcher.mcp.sessions import MAX_DECLARED_BYTES, SessionStore
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import InvalidParams, StoreUnavailable

T = TypeVar("T")


async def _later(step: Awaitable[T]) -> T:
    """``step``, then a few milliseconds (sessions used within one millisecond tie in the LRU)."""
    done = await step
    await asyncio.sleep(0.005)
    return done


async def test_one_identity_holds_at_most_its_cap_and_the_least_recently_used_goes(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    store = SessionStore(redis_client, RedisKeys(redis_prefix), 60, max_per_owner=3)
    other = SessionStore(redis_client, RedisKeys(redis_prefix), 60, max_per_owner=3)  # another dispatcher
    # Last use is kept in milliseconds: a few apart, so the order below is the order of use.
    first, second, third = [await _later(store.create("2025-11-25", {}, {}, owner="alice")) for _ in range(3)]
    first.touched = second.touched = 0  # due for a lease renewal: it refreshes their last use
    assert await _later(store.get(first.id)) is first
    fourth = await other.create("2025-11-25", {}, {}, owner="alice")
    # second was least recently used: ended fleet-wide (Redis) - the first dispatcher finds
    # out at its next renewal; the others live on, and other identities are not affected.
    assert await redis_client.exists(RedisKeys(redis_prefix).session(second.id)) == 0
    assert await store.get(second.id) is None
    for kept in (first, third, fourth):
        assert await other.get(kept.id) is not None
    assert await redis_client.zcard(store.owner_key("alice")) == 3
    bob = await store.create("2025-11-25", {}, {}, owner="bob")
    assert await store.get(bob.id) is bob and await redis_client.zcard(store.owner_key("bob")) == 1
    assert await store.delete(first.id) and await redis_client.zcard(store.owner_key("alice")) == 2


async def test_what_a_session_keeps_of_its_initialize_is_bounded(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """50 sessions with 3 MB capabilities took Redis from 1.9 to 194 MB in 0.8 s."""
    store = SessionStore(redis_client, RedisKeys(redis_prefix), 60)
    with pytest.raises(InvalidParams) as refused:
        await store.create("2025-11-25", {"name": "x"}, {"experimental": {"blob": "x" * (3 * 1024 * 1024)}})
    assert refused.value.data == {"max_bytes": MAX_DECLARED_BYTES} and refused.value.jsonrpc_code == -32602
    assert await redis_client.keys(f"{redis_prefix}:session:*") == []
    fits = await store.create("2025-11-25", {"name": "x"}, {"experimental": {"blob": "x" * (MAX_DECLARED_BYTES - 100)}})
    assert await store.get(fits.id) is fits


async def test_the_local_cache_is_bounded_in_entries_and_bytes(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    store = SessionStore(redis_client, RedisKeys(redis_prefix), 60, cache_size=5, cache_bytes=20_000)
    made = [await store.create("2025-11-25", {}, {}, owner=f"u{i}") for i in range(8)]
    assert len(store.cache) == 5 and list(store.cache) == [s.id for s in made[3:]]
    blob = {"experimental": {"blob": "x" * 9000}}
    big = [await store.create("2025-11-25", {}, blob, owner=f"b{i}") for i in range(3)]
    assert store.cached_bytes <= 20_000 and big[-1].id in store.cache and big[0].id not in store.cache
    assert store.cached_bytes == sum(s.size for s in store.cache.values())
    # Evicted from the cache is not ended: Redis still has it, and it comes back.
    again = await store.get(made[0].id)
    assert again is not None and again.owner == "u0" and made[0].id in store.cache


async def test_a_redis_outage_serves_cached_sessions_and_refuses_the_rest_clearly(redis_prefix: str) -> None:
    server = EmbeddedRedis().start()
    redis = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    try:
        store = SessionStore(redis, RedisKeys(redis_prefix), 60)
        cached = await store.create("2025-11-25", {}, {}, owner="alice")
        server.stop()
        cached.touched = 0  # its lease renewal is due: it used to raise redis ConnectionError (HTTP 500)
        assert await store.get(cached.id) is cached
        for attempt in (
            store.get("x" * 32),
            store.create("2025-11-25", {}, {}, owner="alice"),
            store.delete(cached.id),
        ):
            with pytest.raises(StoreUnavailable) as unavailable:
                await attempt
            assert unavailable.value.http_status == 503 and unavailable.value.jsonrpc_code == -31011
    finally:
        await redis.aclose()
        server.stop()
