"""The control-plane client (ReplicaClient) against scripted servers on 127.0.0.1: every
answer bounded in bytes and time, redirects refused, the address connected to checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from edgefleet.dispatcher.fleet.upstream import ReplicaClient, UpstreamPool
from edgefleet.dispatcher.security.agent_urls import AgentAddressRules
from edgefleet.shared.constants import MODERN_PROTOCOL_VERSION
from edgefleet.shared.errors import AgentAnswerTooLarge, AgentUnreachable, AgentUrlForbidden
from edgefleet.shared.settings import DispatcherSettings

from tests.support.http1_servers import RawServer, read_request

LIMIT = 64 * 1024
Reply = Callable[[dict[str, object]], bytes]


def json_reply(body: bytes, *, length: int | None = None) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % (len(body) if length is None else length)
        + body
    )


def result(message: dict[str, object], value: dict[str, object]) -> bytes:
    return json_reply(orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": value}))


NOT_FOUND = {"code": -32601, "message": "Method not found"}
DISCOVER = {"supportedVersions": [MODERN_PROTOCOL_VERSION], "capabilities": {"tools": {}}}


def scripted(reply: Reply) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            writer.write(reply(orjson.loads(request.split(b"\r\n\r\n", 1)[1])))
            await writer.drain()

    return handler


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool(DispatcherSettings(fleet_token="t", max_agent_answer_bytes=LIMIT))
    yield upstream
    await upstream.aclose()


async def test_a_discovery_answer_over_the_limit_is_refused_unread(pool: UpstreamPool) -> None:
    async with RawServer(scripted(lambda m: json_reply(b"{", length=400_000_000))) as server:
        client = ReplicaClient(pool, server.url + "/mcp")
        with pytest.raises(AgentAnswerTooLarge) as caught:
            await client.connect(timeout=5)
    assert caught.value.http_status == 422 and caught.value.code == "agent_answer_too_large"
    assert "server/discover" in caught.value.message and str(LIMIT) in caught.value.message


async def test_all_pages_of_a_listing_together_are_bounded(pool: UpstreamPool) -> None:
    pages: list[int] = []

    def reply(message: dict[str, object]) -> bytes:
        if message["method"] == "server/discover":
            return result(message, DISCOVER)
        if message["method"] != "tools/list":  # the 2025 initialize the client tries: a modern-only server
            return json_reply(orjson.dumps({"jsonrpc": "2.0", "id": message.get("id"), "error": NOT_FOUND}))
        pages.append(1)
        tools = [{"name": f"t{len(pages)}_{i}", "description": "d" * 1000} for i in range(10)]
        return result(message, {"tools": tools, "nextCursor": f"c{len(pages)}"})

    async with RawServer(scripted(reply)) as server:
        client = ReplicaClient(pool, server.url + "/mcp")
        with pytest.raises(AgentAnswerTooLarge, match="all pages together"):
            await client.list_tools(timeout=5)
    assert 5 <= len(pages) <= 8  # ~10 kB a page against 64 kB in all, not the 100 pages allowed


async def test_an_endless_answer_is_cut_at_the_limit_and_a_slow_one_at_the_timeout(pool: UpstreamPool) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
            await writer.drain()

    async with RawServer(endless) as server:
        with pytest.raises(AgentAnswerTooLarge):
            await ReplicaClient(pool, server.url + "/mcp", era="modern").probe(timeout=5)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.1)

    async with RawServer(trickle) as server:
        started = time.monotonic()
        with pytest.raises(AgentUnreachable, match="did not answer server/discover within 0.5 s"):
            await ReplicaClient(pool, server.url + "/mcp", era="modern").probe(timeout=0.5)
        assert time.monotonic() - started < 2, "the timeout covers the body too"


async def test_a_redirect_is_refused_and_never_followed(pool: UpstreamPool) -> None:
    followed: list[bytes] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        followed.append(await read_request(reader))

    async with RawServer(target) as elsewhere:
        redirect = (
            b"HTTP/1.1 308 Permanent Redirect\r\nlocation: "
            + elsewhere.url.encode()
            + b"/mcp\r\ncontent-length: 0\r\n\r\n"
        )
        async with RawServer(scripted(lambda m: redirect)) as server:
            with pytest.raises(AgentUnreachable, match="HTTP 308.*never follows redirects"):
                await ReplicaClient(pool, server.url + "/mcp").connect(timeout=5)
    assert followed == [] and elsewhere.connections == 0


async def test_control_connections_are_checked_by_the_address_rules() -> None:
    upstream = UpstreamPool(DispatcherSettings(fleet_token="t"), rules=AgentAddressRules(["10.0.0.0/8"]))
    async with RawServer(scripted(lambda m: result(m, DISCOVER))) as server:
        with pytest.raises(AgentUrlForbidden, match="127.0.0.1"):
            await ReplicaClient(upstream, server.url + "/mcp").connect(timeout=5)
        assert server.connections == 1  # connected, checked, and closed before a byte was sent
    await upstream.aclose()
