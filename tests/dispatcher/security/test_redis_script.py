"""The rate limiter's pipelined script client (issue 19): the same count as the ``limits``
library on the same keys, replies matched to their callers, NOSCRIPT, lost and silent
connections, db selection, and the limiter still failing open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from edgefleet.dispatcher.security.rate_limits import RateLimits
from edgefleet.dispatcher.security.redis_script import ScriptClient, supports
from edgefleet.shared.errors import RateLimited
from edgefleet.shared.settings import DispatcherSettings

ECHO = "return ARGV[1]"


def _limits(redis_url: str, prefix: str, **extra: object) -> RateLimits:
    return RateLimits(DispatcherSettings(redis_url=redis_url, redis_prefix=prefix, **extra))  # type: ignore[arg-type]


def _with_db(url: str, db: int) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


async def test_one_budget_with_the_limits_library(redis_url: str, redis_prefix: str) -> None:
    """Hits through the script client and through the library on the same identity count
    in one window: a dispatcher on either client enforces one budget."""
    ours = _limits(redis_url, redis_prefix, rate_limit="5/minute")
    assert ours.script is not None
    theirs = MovingWindowRateLimiter(
        RedisStorage("async+" + redis_url, implementation="redispy", key_prefix=f"{redis_prefix}:ratelimit")
    )
    item = parse("5/minute")
    try:
        for _ in range(3):
            await ours.admit("alice", "echo.echo")
        assert await theirs.hit(item, "alice")
        assert await theirs.hit(item, "alice")
        with pytest.raises(RateLimited) as refused:
            await ours.admit("alice", "echo.echo")
        assert refused.value.data["scope"] == "identity" and refused.value.data["retry_after_s"] >= 1
        assert ours.refused["identity"] == 1
        stats = await theirs.get_window_stats(item, "alice")
        assert stats.remaining == 0
        await ours.admit("bob", "echo.echo")  # another identity, another budget
    finally:
        await ours.aclose()


async def test_per_tool_limit_counts_through_the_script_client(redis_url: str, redis_prefix: str) -> None:
    limits = _limits(redis_url, redis_prefix, rate_limit="100/minute", tool_rate_limits="echo.*=2/minute")
    try:
        await limits.admit("alice", "echo.echo")
        await limits.admit("alice", "echo.where")
        with pytest.raises(RateLimited) as refused:
            await limits.admit("alice", "echo.echo")
        assert refused.value.data["scope"] == "tool"
        await limits.admit("alice", "text.upper")  # other tools: only the identity's budget
    finally:
        await limits.aclose()


@pytest.fixture
async def echo(redis_url: str) -> AsyncIterator[ScriptClient]:
    """A script client whose script answers its first argument."""
    client = ScriptClient(redis_url, ECHO)
    try:
        yield client
    finally:
        await client.aclose()


async def test_concurrent_calls_get_their_own_replies(echo: ScriptClient) -> None:
    replies = await asyncio.gather(*(echo.call(["k"], [f"v{i}"]) for i in range(200)))
    assert replies == [f"v{i}".encode() for i in range(200)]


async def test_noscript_is_answered_with_the_script(echo: ScriptClient, redis_client: aioredis.Redis) -> None:
    assert await echo.call(["k"], ["a"]) == b"a"
    await redis_client.script_flush()
    assert await echo.call(["k"], ["b"]) == b"b"
    assert await echo.call(["k"], ["c"]) == b"c"


async def test_script_errors_are_response_errors(redis_url: str, redis_client: aioredis.Redis) -> None:
    client = ScriptClient(redis_url, "return redis.call('incr', KEYS[1])")
    key = f"eftest-notanumber-{time.time_ns()}"
    try:
        await redis_client.set(key, "x")
        with pytest.raises(redis.exceptions.ResponseError):
            await client.call([key], [])
        assert await client.call([key + "-n"], []) == 1  # the connection is still good
    finally:
        await client.aclose()
        await redis_client.delete(key, key + "-n")


async def test_a_lost_connection_is_opened_again(echo: ScriptClient, redis_client: aioredis.Redis) -> None:
    assert await echo.call(["k"], ["a"]) == b"a"
    await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await asyncio.sleep(0.05)
    assert await echo.call(["k"], ["b"]) == b"b"


async def test_the_db_of_the_url_is_selected(redis_url: str, redis_prefix: str) -> None:
    url = _with_db(redis_url, 3)
    client = ScriptClient(url, "return redis.call('set', KEYS[1], ARGV[1])")
    in_db3 = aioredis.Redis.from_url(url)
    in_db0 = aioredis.Redis.from_url(_with_db(redis_url, 0))
    key = f"{redis_prefix}:db"
    try:
        await client.call([key], ["here"])
        assert await in_db3.get(key) == b"here"
        assert await in_db0.get(key) is None
    finally:
        await client.aclose()
        await in_db3.delete(key)
        await in_db3.aclose()
        await in_db0.aclose()


async def test_a_silent_server_times_the_calls_out() -> None:
    """A peer that accepts and never answers: the waiting calls fail within ~timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ScriptClient(f"redis://127.0.0.1:{port}/0", ECHO, timeout_s=0.4)
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            await asyncio.wait_for(client.call(["k"], ["a"]), 5)
        assert time.monotonic() - started < 2
    finally:
        await client.aclose()
        server.close()


async def test_the_limiter_still_fails_open(redis_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listening: the call is let through and a warning logged, as before."""
    limits = _limits("redis://127.0.0.1:1/0", redis_prefix, rate_limit="1/minute")
    try:
        await limits.admit("alice", "echo.echo")
        await limits.admit("alice", "echo.echo")
        assert "rate limit not checked" in caplog.text
    finally:
        await limits.aclose()


def test_other_urls_keep_the_library_client() -> None:
    assert supports("redis://h:6379/0") and supports("unix:///tmp/redis.sock")
    assert not supports("rediss://h:6380/0")
    limits = RateLimits(DispatcherSettings(redis_url="rediss://h:6380/0", rate_limit="5/minute"))
    assert limits.script is None and limits.limiter is not None


async def test_user_and_password_of_the_url(redis_url: str, redis_prefix: str, redis_client: aioredis.Redis) -> None:
    user = f"{redis_prefix}-user"
    host = redis_url.split("//", 1)[1]
    await redis_client.execute_command("ACL", "SETUSER", user, "on", ">s3cret", "~*", "+@all")
    client = ScriptClient(f"redis://{user}:s3cret@{host}", ECHO)
    wrong = ScriptClient(f"redis://{user}:nope@{host}", ECHO)
    try:
        assert await client.call(["k"], ["a"]) == b"a"
        with pytest.raises(redis.exceptions.ConnectionError):  # AuthenticationError: the limiter fails open
            await wrong.call(["k"], ["a"])
    finally:
        await client.aclose()
        await wrong.aclose()
        await redis_client.execute_command("ACL", "DELUSER", user)


def test_under_uvloop_the_limit_holds(redis_url: str, redis_prefix: str) -> None:
    """The dispatcher runs on uvloop (whose transports are not asyncio.Transport
    subclasses): the count must hold there, not fail open."""
    import uvloop

    async def main() -> list[str]:
        limits = _limits(redis_url, redis_prefix, rate_limit="3/minute")
        outcomes = []
        try:
            for _ in range(5):
                try:
                    await limits.admit("alice", "echo.echo")
                    outcomes.append("ok")
                except RateLimited:
                    outcomes.append("refused")
        finally:
            await limits.aclose()
        return outcomes

    assert uvloop.run(main()) == ["ok", "ok", "ok", "refused", "refused"]
