"""The upstream HTTP/1.1 client against servers that misbehave on purpose (raw asyncio
servers on 127.0.0.1): every bad answer raises its error promptly, nothing hangs, no
connection leaks, and the keep-alive race is retried only when the replica provably
never received the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.dispatcher.http1 import (
    ClosedBeforeRequest,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    HeadersTooLarge,
    RemoteProtocolError,
    RequestMaybeSent,
    RequestNotSent,
    ResponseTimeout,
    UpstreamPool,
)

from tests.support.http1_servers import RawServer, read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def answer_once(head_and_body: bytes) -> Callable[[Reader, Writer], Awaitable[None]]:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(head_and_body)
        await writer.drain()
        await reader.read()  # until the client goes away

    return handler


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


# -- answers that are not HTTP ---------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="garbage"),
        pytest.param(b"hello from HTTP/0.9\n", id="http09"),
        pytest.param(b"HTTP/1.1 2OO OK\r\n\r\n", id="bad-status"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", id="two-lengths"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", id="upgrade"
        ),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="bare-101"),
    ],
)
async def test_an_answer_that_is_not_http_raises_a_protocol_error(answer: bytes) -> None:
    pool = UpstreamPool()
    async with RawServer(answer_once(answer)) as server:
        with pytest.raises(RemoteProtocolError) as caught:
            await pool.request(server.url, "POST", "/mcp", (), b"{}", head_timeout_s=5)
        assert isinstance(caught.value, RequestMaybeSent)
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_a_bad_chunk_size_fails_the_body_read() -> None:
    pool = UpstreamPool()
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    async with RawServer(answer_once(bad)) as server:
        resp = await pool.request(server.url, "GET", "/")
        with pytest.raises(RemoteProtocolError):
            await resp.read(1000)
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_a_close_in_the_middle_of_the_body_is_connection_lost() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        resp = await pool.request(server.url, "GET", "/")
        with pytest.raises(ConnectionLost):
            await resp.read(1000)
        with pytest.raises(ConnectionLost):  # asking again says the same
            await resp.read(1000)
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_a_body_delimited_by_the_close_is_read_and_not_reused() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        resp = await pool.request(server.url, "GET", "/")
        assert resp.content_length is None
        assert await resp.read(1000) == b"until the end"
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_informational_heads_are_skipped() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    pool = UpstreamPool()
    async with RawServer(answer_once(hints + hints + OK)) as server:
        resp = await pool.request(server.url, "GET", "/")
        assert resp.status == 200
        assert b"link" not in resp.headers
        assert await resp.read() == b"ok"
    await pool.aclose()


# -- heads that never end or never stop growing ----------------------------------------------
async def test_a_slow_head_hits_the_head_timeout() -> None:
    pool = UpstreamPool()
    async with RawServer(answer_once(b"HTTP/1.1 200 OK\r\nX-Slow: ")) as server:
        started = time.monotonic()
        with pytest.raises(ResponseTimeout):
            await pool.request(server.url, "POST", "/mcp", (), b"{}", head_timeout_s=0.2)
        assert time.monotonic() - started < 2
        assert pool.counts() == (0, 0)
    await pool.aclose()


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", id="one-huge-header"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-N: 1\r\n" * 200 + b"\r\n", id="too-many-headers"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-N: " + b"b" * 1000 + b"\r\n" * 1 + b"\r\n", id="fits"),
    ],
)
async def test_response_heads_are_bounded(head: bytes) -> None:
    pool = UpstreamPool(max_header_bytes=64 * 1024, max_headers=100)
    async with RawServer(answer_once(head)) as server:
        if len(head) < 64 * 1024 and head.count(b"\r\n") < 100:
            resp = await pool.request(server.url, "GET", "/")
            assert resp.headers[b"x-n"] == b"b" * 1000
            resp.close()
        else:
            with pytest.raises(HeadersTooLarge):
                await pool.request(server.url, "GET", "/")
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_a_header_that_never_ends_is_cut_off() -> None:
    sent = 0

    async def handler(reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        while sent < 50_000_000:
            writer.write(b"a" * 4096)
            sent += 4096
            await writer.drain()

    pool = UpstreamPool(max_header_bytes=64 * 1024)
    async with RawServer(handler) as server:
        with pytest.raises(HeadersTooLarge):
            await pool.request(server.url, "GET", "/")
        assert pool.counts() == (0, 0)
    assert sent < 20_000_000  # the client stopped reading long before the server gave up
    await pool.aclose()


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(b"5\r\nhello\r\n0\r\nX-Trailer: ", id="endless-trailer"),
        pytest.param(b"5;ext=", id="endless-chunk-extension"),
    ],
)
async def test_framing_that_never_ends_is_cut_off(start: bytes) -> None:
    sent = 0

    async def handler(reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + start)
        while sent < 50_000_000:
            writer.write(b"a" * 4096)
            sent += 4096
            await writer.drain()
        await reader.read()

    pool = UpstreamPool(max_header_bytes=64 * 1024)
    async with RawServer(handler) as server:
        resp = await pool.request(server.url, "GET", "/")
        with pytest.raises(RemoteProtocolError):
            async with asyncio.timeout(10):
                await resp.read(limit=1000)
        assert pool.counts() == (0, 0)
    assert sent < 20_000_000
    await pool.aclose()


async def test_unread_body_bytes_are_bounded_by_the_high_water_mark() -> None:
    total = 32 * 1024 * 1024
    finished = asyncio.Event()

    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        piece = b"z" * (256 * 1024)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
        finished.set()
        await reader.read()

    pool = UpstreamPool(high_water=128 * 1024)
    async with RawServer(handler) as server:
        resp = await pool.request(server.url, "GET", "/")
        # Nobody reads: the transport pauses, the kernel buffers fill, the server blocks.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(finished.wait(), 0.5)
        held = resp._conn.buffered if resp._conn is not None else -1
        assert 0 < held <= 128 * 1024 + 256 * 1024
        assert len(await resp.read()) == total
        assert finished.is_set()
    await pool.aclose()


# -- bytes nobody asked for --------------------------------------------------------------------
async def test_a_second_unsolicited_response_spoils_the_connection() -> None:
    pool = UpstreamPool()
    async with RawServer(answer_once(OK + OK)) as server:
        resp = await pool.request(server.url, "GET", "/")
        assert await resp.read() == b"ok"
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_bytes_on_an_idle_connection_close_it() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await reader.read()

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        assert await (await pool.request(server.url, "GET", "/")).read() == b"ok"
        assert pool.counts() == (1, 0)
        await until(lambda: pool.counts() == (0, 0))
        assert await (await pool.request(server.url, "GET", "/")).read() == b"ok"
        assert server.connections == 2
    await pool.aclose()


# -- the keep-alive race -----------------------------------------------------------------------
async def keep_alive_race() -> None:
    """The replica closes its idle connection as we reuse it: resent once, transparently."""
    requests = 0

    async def handler(reader: Reader, writer: Writer) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(OK)  # keep-alive, then closed at once: never reads the next request
        await writer.drain()

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        assert await (await pool.request(server.url, "POST", "/mcp", (), b"{}")).read() == b"ok"
        # No await between the two: the next request is written before the close is seen.
        assert await (await pool.request(server.url, "POST", "/mcp", (), b"{}")).read() == b"ok"
        assert pool.stale_retries == 1
        assert (server.connections, requests) == (2, 2)
    await pool.aclose()


async def crash_after_reading() -> None:
    """The replica read the request on a reused connection, then died: never resent."""
    requests = 0

    async def handler(reader: Reader, writer: Writer) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        requests += 1
        # ... and the process dies before answering.

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        assert await (await pool.request(server.url, "POST", "/mcp", (), b"{}")).read() == b"ok"
        with pytest.raises(ConnectionLost) as caught:
            await pool.request(server.url, "POST", "/mcp", (), b"{}")
        assert isinstance(caught.value, RequestMaybeSent)
        assert pool.stale_retries == 0
        assert (server.connections, requests) == (1, 2)
        assert pool.counts() == (0, 0)
    await pool.aclose()


async def closed_while_idle_is_never_used() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        assert await (await pool.request(server.url, "GET", "/")).read() == b"ok"
        await until(lambda: pool.counts() == (0, 0))  # the close was noticed while idle
        assert await (await pool.request(server.url, "GET", "/")).read() == b"ok"
        assert pool.stale_retries == 0
    await pool.aclose()


async def resent_only_once() -> None:
    """If the fresh connection is closed too, the caller hears about it: no third try."""

    async def handler(reader: Reader, writer: Writer) -> None:
        if server.connections == 1:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()
        # the second connection is closed without reading anything

    pool = UpstreamPool()
    async with RawServer(handler) as server:
        assert await (await pool.request(server.url, "POST", "/mcp", (), b"{}")).read() == b"ok"
        with pytest.raises((ClosedBeforeRequest, ConnectionLost)):
            # Which of the two depends on whether the replica's kernel acknowledged the
            # request before its application closed the socket unread (both are honest).
            await pool.request(server.url, "POST", "/mcp", (), b"{}")
        assert pool.stale_retries == 1
        assert server.connections == 2
    await pool.aclose()


async def resend_keeps_other_idle_connections() -> None:
    """The resend opens a new connection when there is room; healthy idle ones stay."""
    gates = {b"/closing": asyncio.Event(), b"/healthy": asyncio.Event()}

    async def handler(reader: Reader, writer: Writer) -> None:
        path = (await read_request(reader)).split(b" ")[1]
        if path in gates:  # half an answer, the rest when the test says: holds the connection
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
            await writer.drain()
            await gates[path].wait()
            writer.write(b"k")
            await writer.drain()
            if path == b"/closing":
                return  # closed as soon as it answered: the race
        else:
            writer.write(OK)
        while True:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()

    pool = UpstreamPool(max_per_origin=4)
    async with RawServer(handler) as server:
        closing = await pool.request(server.url, "GET", "/closing")
        healthy = await pool.request(server.url, "GET", "/healthy")
        gates[b"/healthy"].set()
        assert await healthy.read() == b"ok"  # idle first
        gates[b"/closing"].set()
        assert await closing.read() == b"ok"  # idle last: reused first (LIFO)
        assert await (await pool.request(server.url, "POST", "/mcp", (), b"{}")).read() == b"ok"
        assert pool.stale_retries == 1
        assert server.connections == 3
        assert pool.counts() == (2, 0)  # the healthy idle one was not sacrificed for room
    await pool.aclose()


RACES = [
    keep_alive_race,
    crash_after_reading,
    closed_while_idle_is_never_used,
    resent_only_once,
    resend_keeps_other_idle_connections,
]


@pytest.mark.parametrize("scenario", RACES, ids=lambda f: f.__name__)
async def test_keep_alive_race_on_asyncio(scenario: Callable[[], Awaitable[None]]) -> None:
    await scenario()


@pytest.mark.parametrize("scenario", RACES, ids=lambda f: f.__name__)
def test_keep_alive_race_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    # The dispatcher runs on uvloop, whose transports report a close differently.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())  # type: ignore[arg-type]


# -- connecting ------------------------------------------------------------------------------
async def test_a_refused_connection_was_never_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    pool = UpstreamPool()
    with pytest.raises(ConnectFailed) as caught:
        await pool.request(f"http://127.0.0.1:{port}", "POST", "/mcp", (), b"{}")
    assert isinstance(caught.value, RequestNotSent)
    assert pool.counts() == (0, 0)
    await pool.aclose()


async def test_a_connection_that_never_opens_times_out() -> None:
    # A listener whose accept queue is full drops new SYNs: connect() just waits.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        pool = UpstreamPool(connect_timeout_s=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectTimeout) as caught:
                await pool.request(f"http://127.0.0.1:{port}", "GET", "/")
            assert time.monotonic() - started < 3
            assert isinstance(caught.value, RequestNotSent)
            assert pool.counts() == (0, 0)
            # The caller's own deadline, shorter than the connect timeout, cancels cleanly.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await pool.request(f"http://127.0.0.1:{port}", "GET", "/")
            assert pool.counts() == (0, 0)
        finally:
            await pool.aclose()
            for filler in fillers:
                filler.close()


# -- TLS ---------------------------------------------------------------------------------------
def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test replica")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_with_one_context_for_the_pool(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()

    connections = 0

    async def serve(reader: Reader, writer: Writer) -> None:
        nonlocal connections
        connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    trusting = UpstreamPool(ssl_context=ssl.create_default_context(cafile=cert))
    default = UpstreamPool()  # the system's trust store: this certificate is not in it
    try:
        for _ in range(3):
            assert await (await trusting.request(url, "POST", "/mcp", (), b"{}")).read() == b"ok"
        assert connections == 1
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await default.request(url, "GET", "/")
        assert default.counts() == (0, 0)
    finally:
        await trusting.aclose()
        await default.aclose()
        server.close()
        await server.wait_closed()
