"""The upstream HTTP/1.1 client against a real uvicorn replica on 127.0.0.1: keep-alive,
limits, streaming, redirects, cancellation, the pool's bounds and bookkeeping.

Misbehaving servers (garbage, early closes, the keep-alive race) are in test_http1_hostile.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from edgefleet.dispatcher.http1 import (
    AcceptTimeout,
    BodyTooLarge,
    ConnectFailed,
    ConnectionLost,
    PoolClosed,
    PoolTimeout,
    RequestMaybeSent,
    RequestNotSent,
    ResponseTimeout,
    UpstreamPool,
)

from tests.support.http1_servers import (
    RawServer,
    ReplicaApp,
    UvicornServer,
    read_request,
)

JSON = [(b"content-type", b"application/json")]


@pytest.fixture
def app() -> ReplicaApp:
    return ReplicaApp()


@pytest.fixture
def replica(app: ReplicaApp) -> Iterator[UvicornServer]:
    with UvicornServer(app) as server:
        yield server


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for something another thread or the kernel does; fail if it never happens."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


async def test_keep_alive_one_connection_for_sequential_calls(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        for i in range(20):
            resp = await pool.request(replica.url, "POST", "/echo", JSON, f'{{"n": {i}}}'.encode())
            assert resp.status == 200
            echoed = orjson.loads(await resp.read(10_000))
            assert echoed["body"] == f'{{"n": {i}}}'
        assert dict(echoed["headers"])["host"] == f"127.0.0.1:{replica.port}"
        assert dict(echoed["headers"])["content-length"] == str(len(echoed["body"]))
        assert len(app.clients) == 1
        assert pool.counts() == (1, 0)
    finally:
        await pool.aclose()


async def test_prebuilt_header_bytes_are_sent_as_given(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, b"POST", b"/echo", b"x-one: 1\r\nx-two: 2\r\n", b"{}")
        headers = dict(orjson.loads(await resp.read())["headers"])
        assert (headers["x-one"], headers["x-two"]) == ("1", "2")
    finally:
        await pool.aclose()


async def test_header_injection_is_refused_before_anything_is_sent(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        for headers in ([(b"x-a", b"1\r\nx-evil: 1")], [(b"bad name", b"1")], [(b"Content-Length", b"5")]):
            with pytest.raises(ValueError):
                await pool.request(replica.url, "POST", "/echo", headers, b"{}")
        with pytest.raises(ValueError):
            await pool.request(replica.url, "GET", "/echo HTTP/1.1\r\nx-evil: 1")
        assert app.hits["/echo"] == 0
    finally:
        await pool.aclose()


async def test_headers_lower_cased_repeated_fields_kept(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "GET", "/repeat")
        assert resp.headers[b"x-a"] == b"1, 2"
        assert [v for k, v in resp.raw_headers if k == b"set-cookie"] == [b"a=1", b"b=2"]
        assert await resp.read() == b"ok"
    finally:
        await pool.aclose()


async def test_a_redirect_is_an_answer_never_followed(app: ReplicaApp, replica: UvicornServer) -> None:
    async def forbidden(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    pool = UpstreamPool()
    try:
        async with RawServer(forbidden) as target:
            app.redirect_to = target.url + "/latest/meta-data/"
            resp = await pool.request(replica.url, "POST", "/redirect", JSON, b"{}")
            assert resp.status == 307
            assert resp.headers[b"location"] == app.redirect_to.encode()
            assert await resp.read() == b""
            assert target.connections == 0
    finally:
        await pool.aclose()


async def test_sse_is_relayed_chunk_by_chunk_as_it_arrives(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "POST", "/sse-gated", JSON, b"{}")
        assert resp.headers[b"content-type"] == b"text/event-stream"
        chunks = resp.iter_chunks()
        # The server holds the second event until we hold the first: no buffering to the end.
        assert await chunks.__anext__() == b"data: first\n\n"
        app.gate.set()
        assert [chunk async for chunk in chunks] == [b"data: second\n\n"]
        assert pool.counts() == (1, 0)  # ended: the connection went back by itself
    finally:
        await pool.aclose()


async def test_many_sse_events_arrive_whole(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "POST", "/sse?n=500", JSON, b"{}")
        body = b"".join([chunk async for chunk in resp.iter_chunks()])
        assert body.count(b"event: message\n") == 500
        assert body.endswith(b'data: {"i": 499}\n\n')
    finally:
        await pool.aclose()


async def test_read_limit_refuses_a_large_content_length_without_reading_it(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "GET", "/big?n=5000000")
        assert resp.content_length == 5_000_000
        with pytest.raises(BodyTooLarge) as caught:
            await resp.read(limit=1000)
        assert caught.value.seen == 5_000_000
        assert pool.counts() == (0, 0)  # dropped, not drained
        ok = await pool.request(replica.url, "GET", "/big?n=1000")
        assert len(await ok.read(limit=1000)) == 1000  # exactly the limit is fine
    finally:
        await pool.aclose()


async def test_read_limit_stops_an_endless_body_within_one_chunk(replica: UvicornServer) -> None:
    pool = UpstreamPool(high_water=64 * 1024)
    try:
        resp = await pool.request(replica.url, "GET", "/stream?n=0")
        assert resp.content_length is None
        with pytest.raises(BodyTooLarge) as caught:
            await resp.read(limit=100_000)
        # At most the limit plus one take: the high-water mark and one network read.
        assert 100_000 < caught.value.seen <= 100_000 + 64 * 1024 + 256 * 1024
        assert pool.counts() == (0, 0)
    finally:
        await pool.aclose()


async def test_a_chunked_body_is_read_whole(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "GET", "/stream?n=64&size=10000")
        assert len(await resp.read(limit=640_000)) == 640_000
        assert pool.counts() == (1, 0)
    finally:
        await pool.aclose()


async def test_connection_close_from_the_server_is_honoured(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "GET", "/close")
        assert await resp.read() == b"bye"
        await until(lambda: pool.counts() == (0, 0))
        await (await pool.request(replica.url, "GET", "/close")).read()
        assert len(app.clients) == 2
    finally:
        await pool.aclose()


async def test_bodiless_statuses_and_head(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "GET", "/empty?status=204")
        assert (resp.status, await resp.read()) == (204, b"")
        assert pool.counts() == (1, 0)
        head = await pool.request(replica.url, "HEAD", "/big?n=100")
        assert head.status == 200 and head.content_length == 100
        assert await head.read() == b""
        assert pool.counts() == (0, 0)  # a HEAD answer's connection is not reused
    finally:
        await pool.aclose()


async def test_releasing_an_unread_body_drops_the_connection(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        async with await pool.request(replica.url, "GET", "/stream?n=0") as resp:
            assert await resp.next_chunk()
        assert pool.counts() == (0, 0)
        # Read to the end, the same kind of response leaves its connection for reuse.
        async with await pool.request(replica.url, "GET", "/stream?n=3") as resp:
            assert len(await resp.read()) == 3 * 16384
        assert pool.counts() == (1, 0)
    finally:
        await pool.aclose()


async def test_concurrency_is_capped_per_origin(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool(max_per_origin=2)
    try:

        async def call() -> bytes:
            resp = await pool.request(replica.url, "GET", "/slow?s=0.05")
            return await resp.read()

        assert await asyncio.gather(*(call() for _ in range(8))) == [b"slow"] * 8
        assert len(app.clients) == 2
        assert pool.counts() == (2, 0)
    finally:
        await pool.aclose()


async def test_a_full_origin_fails_with_pool_timeout(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool(max_per_origin=1, acquire_timeout_s=0.1)
    try:
        held = await pool.request(replica.url, "GET", "/stream?n=0")
        with pytest.raises(PoolTimeout) as caught:
            await pool.request(replica.url, "POST", "/echo", JSON, b"{}")
        assert isinstance(caught.value, RequestNotSent)
        assert app.hits["/echo"] == 0
        held.close()
        resp = await pool.request(replica.url, "POST", "/echo", JSON, b"{}")
        assert resp.status == 200
        await resp.read()
    finally:
        await pool.aclose()


async def test_a_queued_caller_gets_the_released_connection(replica: UvicornServer) -> None:
    pool = UpstreamPool(max_per_origin=1)
    try:
        first = await pool.request(replica.url, "GET", "/stream?n=2")
        second = asyncio.create_task(pool.request(replica.url, "GET", "/empty?status=204"))
        cancelled = asyncio.create_task(pool.request(replica.url, "GET", "/empty?status=204"))
        await asyncio.sleep(0)  # both queue behind the one connection
        cancelled.cancel()
        await first.read()
        resp = await asyncio.wait_for(second, 5)
        assert resp.status == 204
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert pool.counts() == (1, 0)
    finally:
        await pool.aclose()


async def test_head_timeout_bounds_a_hung_replica(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        started = time.monotonic()
        with pytest.raises(ResponseTimeout) as caught:
            await pool.request(replica.url, "POST", "/wait", JSON, b"{}", head_timeout_s=0.2)
        assert time.monotonic() - started < 2
        assert isinstance(caught.value, RequestMaybeSent)
        assert pool.counts() == (0, 0)
        # A head in time is not affected by the timer afterwards (a long body is the caller's).
        resp = await pool.request(replica.url, "GET", "/stream?n=3", head_timeout_s=0.2)
        assert len(await resp.read()) == 3 * 16384
    finally:
        await pool.aclose()


async def test_cancelling_a_call_closes_its_connection_and_reaches_the_agent(
    app: ReplicaApp, replica: UvicornServer
) -> None:
    pool = UpstreamPool()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request(replica.url, "POST", "/wait?tag=head", JSON, b"{}")
        assert pool.counts() == (0, 0)
        await until(lambda: app.disconnects["head"] == 1)

        resp = await pool.request(replica.url, "GET", "/stream?n=0")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                async for _ in resp.iter_chunks():
                    pass
        resp.close()  # the caller's half of the contract: close what it stops reading
        assert pool.counts() == (0, 0)

        resp = await pool.request(replica.url, "POST", "/echo", JSON, b"{}")
        assert resp.status == 200 and await resp.read()
    finally:
        await pool.aclose()


async def test_a_response_dropped_without_release_frees_its_slot(replica: UvicornServer) -> None:
    pool = UpstreamPool(max_per_origin=1)
    try:
        await pool.request(replica.url, "GET", "/stream?n=0")  # never released, never kept
        assert pool.counts() == (0, 0)
        resp = await asyncio.wait_for(pool.request(replica.url, "GET", "/empty"), 5)
        assert resp.status == 204
    finally:
        await pool.aclose()


async def test_warm_opens_connections_ahead_of_traffic(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool(max_per_origin=4)
    seen: list[str] = []
    try:
        assert await pool.warm(replica.url, 3, check_peer=seen.append) == 3
        assert pool.counts() == (3, 0)
        assert seen == ["127.0.0.1"] * 3
        assert await pool.warm(replica.url, 3) == 0  # already there

        async def call() -> bytes:
            return await (await pool.request(replica.url, "GET", "/slow?s=0.05", check_peer=seen.append)).read()

        assert await asyncio.gather(call(), call(), call()) == [b"slow"] * 3
        assert len(app.clients) == 3  # the warm connections served them: no new ones
        assert seen == ["127.0.0.1"] * 3  # same check, already passed on each connection
    finally:
        await pool.aclose()


async def test_check_peer_sees_the_connected_address_and_can_refuse(app: ReplicaApp, replica: UvicornServer) -> None:
    class Forbidden(Exception):
        pass

    def refuse(address: str) -> None:
        raise Forbidden(address)

    pool = UpstreamPool()
    try:
        with pytest.raises(Forbidden, match="127.0.0.1"):
            await pool.request(replica.url, "POST", "/echo", JSON, b"{}", check_peer=refuse)
        assert app.hits["/echo"] == 0
        assert pool.counts() == (0, 0)
        # A pooled connection checked by nobody is checked before a checking caller uses it.
        await (await pool.request(replica.url, "POST", "/echo", JSON, b"{}")).read()
        assert pool.counts() == (1, 0)
        with pytest.raises(Forbidden):
            await pool.request(replica.url, "POST", "/echo", JSON, b"{}", check_peer=refuse)
        assert app.hits["/echo"] == 1
        assert pool.counts() == (0, 0)
    finally:
        await pool.aclose()


async def test_idle_connections_close_after_the_idle_timeout(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool(idle_timeout_s=0.1)
    try:
        await (await pool.request(replica.url, "GET", "/empty")).read()
        assert pool.counts() == (1, 0)
        await until(lambda: pool.counts() == (0, 0), within=3)
    finally:
        await pool.aclose()


async def test_close_origin_and_aclose(app: ReplicaApp, replica: UvicornServer) -> None:
    pool = UpstreamPool()
    streaming = await pool.request(replica.url, "GET", "/stream?n=0")
    pool.close_origin(replica.url)
    with pytest.raises(ConnectionLost):
        while await streaming.next_chunk():
            pass
    assert pool.counts() == (0, 0)
    await (await pool.request(replica.url, "GET", "/empty")).read()  # a new pool for it
    streaming = await pool.request(replica.url, "GET", "/stream?n=0")
    await pool.aclose()
    with pytest.raises(ConnectionLost):
        while await streaming.next_chunk():
            pass
    with pytest.raises(PoolClosed):
        await pool.request(replica.url, "GET", "/empty")


async def test_aclose_fails_queued_callers(replica: UvicornServer) -> None:
    pool = UpstreamPool(max_per_origin=1)
    held = await pool.request(replica.url, "GET", "/stream?n=0")
    queued = asyncio.create_task(pool.request(replica.url, "GET", "/empty"))
    await asyncio.sleep(0)  # it queues behind the one connection
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await asyncio.wait_for(queued, 5)
    with pytest.raises(ConnectionLost):
        await held.read()
    assert pool.counts() == (0, 0)


async def test_urls_are_origins(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url + "/mcp?x=1", "GET", "/empty")  # only the origin counts
        assert resp.status == 204
        for bad in ("ftp://127.0.0.1/", "http:///nohost", "http://user:pw@127.0.0.1/", "http://127.0.0.1:99999/"):
            with pytest.raises(ValueError):
                await pool.request(bad, "GET", "/")
    finally:
        await pool.aclose()


# -- Expect: 100-continue and the accept timeout ---------------------------------------------
CONTINUE = [*JSON, (b"expect", b"100-continue")]


async def test_a_live_server_accepts_at_once_however_long_it_then_takes(replica: UvicornServer) -> None:
    """uvicorn answers 100 Continue when the application starts reading the request: the
    accept timer stops there, and a slow answer is not cut off by it."""
    pool = UpstreamPool()
    try:
        resp = await pool.request(replica.url, "POST", "/slow?s=0.5", CONTINUE, b"{}", accept_timeout_s=0.2)
        assert resp.status == 200 and resp.interim == (100,)
        assert await resp.read() == b"slow"
        # Without the expectation nothing interim comes, and the answer is the same.
        resp = await pool.request(replica.url, "POST", "/slow?s=0.01", JSON, b"{}")
        assert resp.interim == () and await resp.read() == b"slow"
    finally:
        await pool.aclose()


async def test_the_accept_timeout_ends_an_attempt_nobody_reads() -> None:
    """A stopped process: its kernel completes the connection and takes the request, but
    no byte of an answer ever comes."""
    got: list[bytes] = []

    async def stopped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await read_request(reader))
        await reader.read()

    pool = UpstreamPool()
    async with RawServer(stopped) as server:
        started = time.monotonic()
        with pytest.raises(AcceptTimeout) as caught:
            await pool.request(server.url, "POST", "/mcp", CONTINUE, b"{}", accept_timeout_s=0.2, head_timeout_s=30)
        assert 0.2 <= time.monotonic() - started < 2
        assert isinstance(caught.value, ResponseTimeout) and isinstance(caught.value, RequestMaybeSent)
        assert b"expect: 100-continue" in got[0]
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_an_interim_head_stops_only_the_accept_timer(replica: UvicornServer) -> None:
    pool = UpstreamPool()
    try:
        with pytest.raises(ResponseTimeout) as caught:
            await pool.request(replica.url, "POST", "/wait", CONTINUE, b"{}", accept_timeout_s=0.2, head_timeout_s=0.6)
        assert not isinstance(caught.value, AcceptTimeout)
    finally:
        await pool.aclose()


# -- name resolution -------------------------------------------------------------------------
async def test_host_names_go_through_the_resolver_and_its_addresses_are_tried_in_order(
    app: ReplicaApp, replica: UvicornServer
) -> None:
    # The replica listens on 127.0.0.1 only: 127.0.0.2 and .3 refuse its port.
    asked: list[tuple[str, int]] = []
    seen: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.2", "127.0.0.3"] if host == "nowhere.test" else ["127.0.0.3", "127.0.0.1"]

    pool = UpstreamPool(resolver=resolver)
    try:
        url = f"http://replica.test:{replica.port}"
        resp = await pool.request(url, "POST", "/echo", JSON, b"{}", check_peer=seen.append)
        echoed = orjson.loads(await resp.read())
        assert ["host", f"replica.test:{replica.port}"] in echoed["headers"]  # the name, not the address
        assert asked == [("replica.test", replica.port)] and seen == ["127.0.0.1"]  # 127.0.0.3 refused it
        with pytest.raises(ConnectFailed):
            await pool.request(f"http://nowhere.test:{replica.port}", "GET", "/echo")
        # IP literals are not resolved at all.
        await (await pool.request(replica.url, "POST", "/echo", JSON, b"{}")).read()
        assert len(asked) == 2
    finally:
        await pool.aclose()


async def test_a_name_that_does_not_resolve_was_never_sent() -> None:
    async def nothing(host: str, port: int) -> list[str]:
        return []

    pool = UpstreamPool(resolver=nothing)
    with pytest.raises(ConnectFailed, match="resolves to no address") as caught:
        await pool.request("http://gone.test:80", "GET", "/")
    assert isinstance(caught.value, RequestNotSent) and pool.counts() == (0, 0)
    pool = UpstreamPool()
    with pytest.raises(ConnectFailed):
        await pool.request("http://name-that-does-not-exist.invalid:80", "GET", "/")
    await pool.aclose()
