"""DNS rebinding, end to end: an agent's host name resolves to an allowed address when its
URL is checked and to a forbidden one when a connection opens. A real dispatcher (in this
process, so that its resolver can be one the test controls: no system DNS, no /etc/hosts)
registers and calls a real echo agent; the forbidden address is a server on 127.0.0.2 that
counts every byte it receives. The agent listens on 127.0.0.3 (the SDK checks the Host
header of servers on 127.0.0.1 against DNS rebinding itself, and would refuse the name)."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from edgefleet.dispatcher.app import Dispatcher
from edgefleet.shared.settings import DispatcherSettings

from tests.support.calls import tools_call
from tests.support.fleet import Fleet, Proc

pytestmark = pytest.mark.integration

NAME = "agent.rebind.test"
AGENT_HOST = "127.0.0.3"


class Rebinding:
    """Answers ``NAME`` with ``first`` for the first ``times`` lookups, then with ``then``."""

    def __init__(self) -> None:
        self.first, self.then, self.times = AGENT_HOST, "127.0.0.2", 1
        self.asked = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        if host != NAME:
            raise OSError(f"unknown host {host}")
        self.asked += 1
        return [self.first if self.asked <= self.times else self.then]


class Counting:
    """The forbidden host: counts connections and bytes."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while data := await reader.read(65536):
            self.received += len(data)
        writer.close()


@pytest.fixture
def echo_port(redis_url: str, redis_prefix: str) -> Iterator[int]:
    """A real echo agent on 127.0.0.3, on its own (it does not register itself)."""
    fleet = Fleet(redis_url, redis_prefix)
    proc = Proc(
        [sys.executable, "-m", "edgefleet.agents.examples.echo", "--region", "eu-west", "--port", "0"],
        {**fleet.base_env, "EDGEFLEET_AGENT_HOST": AGENT_HOST},
        "echo",
    )
    fleet.agents.append(proc)
    try:
        ready = re.compile(r"EDGEFLEET_AGENT_READY .* url=http://127\.0\.0\.3:(\d+)/mcp")
        fleet.wait_for(lambda: ready.search(proc.output()) is not None, "the echo agent", proc=proc)
        match = ready.search(proc.output())
        assert match is not None
        yield int(match.group(1))
    finally:
        fleet.stop()


@pytest.fixture
async def forbidden(echo_port: int) -> AsyncIterator[Counting]:
    counting = Counting()
    server = await asyncio.start_server(counting, "127.0.0.2", echo_port)  # same port, forbidden address
    async with server:
        yield counting


@pytest.fixture
async def dispatcher(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[Dispatcher, Rebinding, httpx.AsyncClient]]:
    resolver = Rebinding()
    settings = DispatcherSettings(
        fleet_token="t",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        region="eu-west",
        auth="none",
        agent_networks=[f"{AGENT_HOST}/32"],
        probe_interval_s=0.5,
        log_format="text",
    )
    app = Dispatcher(settings, resolver=resolver)
    await app.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as http:
            yield app, resolver, http
    finally:
        await app.aclose()


async def register(http: httpx.AsyncClient, port: int) -> httpx.Response:
    body = {"name": "echo", "region": "eu-west", "url": f"http://{NAME}:{port}/mcp", "static": True}
    return await http.post("/v1/agents", json=body, headers={"authorization": "Bearer t"})


async def call(http: httpx.AsyncClient, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body, headers = tools_call(tool, arguments)
    resp = await http.post("/mcp", content=body, headers=headers, timeout=30)
    return orjson.loads(resp.content)  # type: ignore[no-any-return]


async def test_a_name_rebound_between_the_check_and_the_connection_gets_nothing_sent(
    dispatcher: tuple[Dispatcher, Rebinding, httpx.AsyncClient], echo_port: int, forbidden: Counting
) -> None:
    _, resolver, http = dispatcher
    resolver.times = 1  # the URL check sees the agent's address; every connection after it, 127.0.0.2
    resp = await register(http, echo_port)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "agent_url_forbidden" and "127.0.0.2" in error["message"], error
    assert "outside EDGEFLEET_AGENT_NETWORKS" in error["message"]
    assert resolver.asked >= 2, "the connection resolved the name again"
    await asyncio.sleep(0.1)
    assert forbidden.received == 0, "no byte reached the forbidden address"


async def test_a_name_rebound_after_registration_never_gets_a_call(
    dispatcher: tuple[Dispatcher, Rebinding, httpx.AsyncClient], echo_port: int, forbidden: Counting
) -> None:
    app, resolver, http = dispatcher
    resolver.times = 10**9  # honest while it registers and warms up
    resp = await register(http, echo_port)
    assert resp.status_code == 201, resp.text
    for _ in range(200):
        if any(r.warm for r in app.fleet.replicas.values()):
            break
        await asyncio.sleep(0.05)
    assert (await call(http, "echo.echo", {"text": "hi"}))["result"]["isError"] is False
    resolver.times = resolver.asked  # from now on the name points at 127.0.0.2
    # More calls at once than open connections: the new connections resolve the name again.
    answers = await asyncio.gather(*(call(http, "echo.wait", {"seconds": 0.3}) for _ in range(12)))
    served = [a for a in answers if "result" in a]
    refused = [a for a in answers if "error" in a]
    assert served, "the connections opened while it was honest still serve"
    assert refused and all(a["error"]["data"]["code"] == "agent_unavailable" for a in refused), refused
    assert any("127.0.0.2" in a["error"]["message"] for a in refused), refused
    (replica,) = app.fleet.replicas.values()
    assert not replica.breaker.admits(), "ejected at once"
    assert forbidden.received == 0, "no byte reached the forbidden address"
