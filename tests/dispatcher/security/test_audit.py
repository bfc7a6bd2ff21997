"""The audit writer against a real Redis: batches in order, keeps events while Redis is
away, drops the oldest (counted) when its buffer is full, and fingerprints credentials."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.security import audit
from edgefleet.dispatcher.security.audit import AuditLog, AuditReader, fingerprint
from edgefleet.dispatcher.security.auth import bearer, hash_key

pytestmark = pytest.mark.integration


async def test_events_wait_for_redis_and_arrive_in_order(redis_url: str, redis_prefix: str) -> None:
    key = f"{redis_prefix}:audit"
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    log = AuditLog(dead, key, maxlen=1000, arguments=False, source="test")
    for i in range(3):
        log.record("call", identity="alice", n=i, nothing=None)
    with pytest.raises((OSError, aioredis.ConnectionError)):
        await log.flush()
    assert len(log._buffer) == 3 and log.written == 0  # nothing lost while Redis is away
    live = aioredis.Redis.from_url(redis_url)
    try:
        log.redis = live
        await log.flush()
        events = await AuditReader(live, key).last(10)
        assert [e["n"] for e in events] == [0, 1, 2] and log.written == 3
        assert all(e["source"] == "test" and e["event"] == "call" and "nothing" not in e for e in events)
        assert await AuditReader(live, key).after(events[0]["id"], 10, 0) == events[1:]
    finally:
        await live.delete(key)
        await live.aclose()
        await dead.aclose()


def test_a_full_buffer_drops_the_oldest_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "BUFFER", 2)
    log = AuditLog(object(), "k", maxlen=1000, arguments=False, source="t")  # type: ignore[arg-type]
    for i in range(5):
        log.record("call", n=i)
    assert log.dropped == 3 and [b'"n":3' in e for e in log._buffer] == [True, False]


def test_arguments_are_names_unless_configured_and_credentials_are_fingerprints() -> None:
    names = AuditLog(None, "k", maxlen=1000, arguments=False, source="t")
    values = AuditLog(None, "k", maxlen=1000, arguments=True, source="t")
    assert names.call_arguments({"b": 1, "a": "secret"}) == {"argument_names": ["a", "b"]}
    assert values.call_arguments({"a": 1}) == {"arguments": {"a": 1}}
    assert not names.enabled  # no Redis, no audit: record() is a no-op
    names.record("call")
    assert not names._buffer
    assert fingerprint(bearer("Bearer ef_key")) == hash_key("ef_key")[:12] and fingerprint(bearer(None)) is None
    assert bearer("Basic dXNlcg==") is None and bearer("Bearer  ") is None and bearer("bearer x ") == "x"


async def test_batches_larger_than_one_write_arrive_whole_and_in_order(redis_url: str, redis_prefix: str) -> None:
    key = f"{redis_prefix}:audit"
    live = aioredis.Redis.from_url(redis_url)
    log = AuditLog(live, key, maxlen=10_000, arguments=False, source="test")
    try:
        for i in range(audit.BATCH * 2 + 7):
            log.record("call", n=i, tool="echo.echo", text='quotes " and\nnewlines')
        await log.flush()
        events = await AuditReader(live, key).last(audit.BATCH * 3)
        assert [e["n"] for e in events] == list(range(audit.BATCH * 2 + 7)) and log.written == len(events)
        assert events[-1]["text"] == 'quotes " and\nnewlines' and not log._buffer
    finally:
        await live.delete(key)
        await live.aclose()
