"""A response's head and its body leave in one write when the application sends them in one
loop turn (a JSON answer), and a head whose body comes later (a stream) still leaves at the
end of its turn, not with the body (shared.http_server, issue 19)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import uvicorn

from edgefleet.shared.http_server import CoalescingHttpTools, HeadWithBody


class _Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _wrapped() -> tuple[_Recording, HeadWithBody]:
    """A recording transport, and the wrapper a response's cycle writes through."""
    real = _Recording()
    return real, HeadWithBody(cast(asyncio.Transport, real), asyncio.get_running_loop())


async def test_head_and_body_of_one_turn_are_one_write() -> None:
    real, transport = _wrapped()
    transport.write(b"HEAD")
    transport.write(b"BODY")
    assert real.writes == [b"HEADBODY"]
    transport.write(b"MORE")  # later writes pass straight through
    await asyncio.sleep(0)
    assert real.writes == [b"HEADBODY", b"MORE"]


async def test_an_interim_answer_leaves_at_once_and_the_final_head_still_waits_for_its_body() -> None:
    real, transport = _wrapped()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    await asyncio.sleep(0)  # the application works on the call over several turns
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"BODY")
    assert real.writes[1:] == [b"HTTP/1.1 200 OK\r\n\r\nBODY"]


async def test_a_body_that_looks_like_an_interim_answer_still_follows_its_head() -> None:
    real, transport = _wrapped()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\n")
    transport.write(b"HTTP/1.1 100 from the body")
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\nHTTP/1.1 100 from the body"]


async def test_a_lone_head_leaves_at_the_end_of_its_turn() -> None:
    real, transport = _wrapped()
    transport.write(b"HEAD")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HEAD"]
    transport.write(b"CHUNK")
    assert real.writes == [b"HEAD", b"CHUNK"]


async def test_close_sends_a_held_head_first_and_the_rest_is_the_transports() -> None:
    real, transport = _wrapped()
    transport.write(b"HEAD")
    transport.close()
    assert real.writes == [b"HEAD"] and real.closed and transport.is_closing()
    await asyncio.sleep(0)
    assert real.writes == [b"HEAD"]  # not twice
    assert transport.get_extra_info("peername") == "info:peername"


async def test_a_head_is_dropped_when_the_connection_closed_under_it() -> None:
    real, transport = _wrapped()
    transport.write(b"HEAD")
    real.closed = True  # the client went away within the turn
    await asyncio.sleep(0)
    assert real.writes == []


async def _stream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b"data: late\n\n", "more_body": False})


@contextlib.asynccontextmanager
async def _server(app: Any) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=CoalescingHttpTools, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


@pytest.mark.integration
async def test_a_streams_head_reaches_the_client_before_its_body() -> None:
    async with _server(_stream_app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        head_after = time.monotonic() - started
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head
    assert head_after < 0.4, "the head waited for the body"
    assert b"data: late" in rest
