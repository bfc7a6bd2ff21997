"""Slow clients cannot hold a dispatcher's connections (issue 16, slowloris): a request's
head and body have deadlines, and connections past the cap are turned away at once. Real
dispatcher processes; the clients are raw sockets sending a header line at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration


async def _slow_head(port: int, every_s: float, cap_s: float) -> tuple[float, bytes]:
    """Send a request head one header line every ``every_s`` and never finish it; how long
    until the server closed the connection (``cap_s`` if it did not), and what it said."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    said = b""
    try:
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        line = 0
        while time.monotonic() - started < cap_s:
            try:
                data = await asyncio.wait_for(reader.read(4096), every_s)
            except TimeoutError:
                line += 1
                writer.write(f"X-Slow-{line}: a\r\n".encode())
                continue
            if not data:
                return time.monotonic() - started, said
            said += data
        return cap_s, said
    except ConnectionError:
        return time.monotonic() - started, said
    finally:
        writer.close()


async def _slow_body(port: int, every_s: float, cap_s: float) -> tuple[float, bytes]:
    """A complete head announcing 1,000 bytes of body, then one byte every ``every_s``."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    said = b""
    try:
        writer.write(
            b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\naccept: application/json\r\n"
            b"mcp-protocol-version: 2026-07-28\r\ncontent-length: 1000\r\n\r\n{"
        )
        while time.monotonic() - started < cap_s:
            try:
                data = await asyncio.wait_for(reader.read(4096), every_s)
            except TimeoutError:
                writer.write(b" ")
                continue
            if not data:
                return time.monotonic() - started, said
            said += data
        return cap_s, said
    except ConnectionError:
        return time.monotonic() - started, said
    finally:
        writer.close()


@pytest.fixture
def bare(redis_url: str, redis_prefix: str) -> Iterator[Fleet]:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        yield fleet
    finally:
        fleet.stop()


async def test_slow_heads_and_bodies_are_cut_off_at_their_deadlines(bare: Fleet) -> None:
    fleet = bare
    url = fleet.start_dispatcher(header_timeout_s=1.5, body_timeout_s=2.0)
    port = int(url.rsplit(":", 1)[1])
    heads = [asyncio.create_task(_slow_head(port, 0.3, 15)) for _ in range(100)]
    bodies = [asyncio.create_task(_slow_body(port, 0.3, 15)) for _ in range(20)]
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient() as client:  # meanwhile, a normal client is served
        assert (await client.get(url + "/healthz", timeout=5)).status_code == 200
    # An idle kept-alive connection is not a slow head: its next request may come later.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for pause in (0.0, 2.5):
        await asyncio.sleep(pause)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        await reader.readexactly(length)
    writer.close()
    for lived, said in await asyncio.gather(*heads):
        assert 1.4 <= lived < 3.0, lived  # it used to stay open until the client gave up
        assert said.startswith(b"HTTP/1.1 408 ")
    for lived, said in await asyncio.gather(*bodies):
        assert 2.0 <= lived < 4.0, lived
        assert b" 500 " not in said
    assert "Traceback" not in fleet.dispatchers[-1][1].output()


async def test_connections_past_the_cap_are_turned_away_at_once(bare: Fleet) -> None:
    url = bare.start_dispatcher(max_connections=40, header_timeout_s=30)
    port = int(url.rsplit(":", 1)[1])
    holders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
    try:
        await asyncio.sleep(0.3)
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        said = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert said.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in said
        assert time.monotonic() - started < 1.0
    finally:
        for _, holder in holders:
            holder.close()
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient() as client:  # room again
        assert (await client.get(url + "/healthz", timeout=5)).status_code == 200


async def _send(port: int, *parts: bytes) -> bytes:
    """Write ``parts`` one after the other (each its own write) and read until the server closes
    or 5 s pass: everything it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    said = b""
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return said
            said += data
    except (ConnectionError, TimeoutError):
        return said
    finally:
        writer.close()


async def test_a_request_head_over_the_bound_gets_431_and_a_body_is_never_counted(bare: Fleet) -> None:
    url = bare.start_dispatcher(max_header_bytes=16384)
    port = int(url.rsplit(":", 1)[1])
    # A 100 KB header, in pieces (one huge header line is what was read whole and answered).
    piece = b"a" * 8192
    said = await _send(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", *[piece] * 12, b"\r\n\r\n")
    assert said.startswith(b"HTTP/1.1 431 "), said[:80]
    assert b"200 OK" not in said
    # Many headers over the bound, on a kept-alive connection after a good request.
    good = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    many = [b"".join(b"X-H: %d\r\n" % i for i in range(start, start + 500)) for start in range(0, 3000, 500)]
    said = await _send(port, good, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", *many)
    assert said.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 431 " in said, said[-200:]
    # Under the bound: served. A 1 MB body after a small head is not a head.
    said = await _send(
        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 12000 + b"\r\nConnection: close\r\n\r\n"
    )
    assert said.startswith(b"HTTP/1.1 200 "), said[:80]
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"p" * 1_000_000 + b'"}}'
    said = await _send(
        port,
        b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\naccept: application/json\r\n"
        b"mcp-protocol-version: 2026-07-28\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body,
    )
    assert not said.startswith(b"HTTP/1.1 431 "), said[:80]
    assert said.startswith(b"HTTP/1.1 "), said[:80]
    # A whole request in one read, body larger than the bound: answered (the read holds a
    # complete head, so its bytes are not a head's). So are pipelined requests in one read.
    small = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"p" * 30_000 + b'"}}'
    request = (
        b"POST /mcp HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\naccept: application/json\r\n"
        b"mcp-protocol-version: 2026-07-28\r\ncontent-length: %d\r\n\r\n" % len(small) + small
    )
    said = await _send(port, request + request.replace(b"Host: x", b"Host: x\r\nConnection: close"))
    assert said.count(b"HTTP/1.1 ") == 2 and b" 431 " not in said, said[:200]
    said = await _send(port, good * 2000 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert said.count(b"HTTP/1.1 200 ") == 2001, said.count(b"HTTP/1.1 200 ")
    assert "Traceback" not in bare.dispatchers[-1][1].output()
