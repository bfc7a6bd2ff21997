"""Bus-path calls with real processes on BOTH real backends (Redis Streams via the
bundled redis-server, Kafka via the bundled broker): results, progress, and no call lost
or duplicated when a replica is killed with -9 mid-work."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.calls import call
from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "kafka"])
def bus_fleet(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> Iterator[Fleet]:
    bus_url = redis_url if request.param == "redis" else request.getfixturevalue("kafka_url")
    fleet = Fleet(redis_url, redis_prefix, region="eu-west")
    try:
        fleet.start_dispatcher(bus_url=bus_url, bus_tools="echo.*,trainer.*")
        yield fleet
    finally:
        fleet.stop()


async def test_bus_calls_return_results_and_progress(bus_fleet: Fleet) -> None:
    bus_fleet.start_agent("edgefleet.agents.examples.echo", "eu-west", bus_visibility_s=2)
    bus_fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west", bus_visibility_s=2)
    bus_fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    async with aiohttp.ClientSession() as session:
        answer, route, _ = await call(session, bus_fleet.mcp_url, 1, "echo.echo", {"text": "over the bus"})
        assert answer["result"]["content"][0]["text"] == "over the bus"
        assert "path=bus" in route
        # Progress of a bus call reaches the client as on the direct path.
        answer, route, raw = await call(
            session, bus_fleet.mcp_url, 2, "trainer.train", {"epochs": 3}, {"progressToken": "p1"}
        )
        assert "path=bus" in route and "error" not in answer and not answer["result"]["isError"]
        assert raw.count(b"notifications/progress") == 3 and b'"progressToken":"p1"' in raw
        # Tools not configured for the bus still go direct on the same dispatcher.
        answer, route, _ = await call(session, bus_fleet.mcp_url, 3, "text.stats", {"text": "one two"})
        assert "path=bus" not in route and "error" not in answer


async def test_no_call_lost_or_duplicated_when_a_replica_dies_mid_work(bus_fleet: Fleet) -> None:
    # The victim logs each bus call it starts and finishes (debug), so we can prove it died
    # with work in hand - work that must then complete elsewhere, exactly once for the client.
    victim = bus_fleet.start_agent(
        "edgefleet.agents.examples.echo", "eu-west", bus_visibility_s=2, bus_max_inflight=32, log_level="debug"
    )
    bus_fleet.start_agent("edgefleet.agents.examples.echo", "eu-west", bus_visibility_s=2, bus_max_inflight=32)
    n = 500
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as session:
        calls = [
            asyncio.create_task(call(session, bus_fleet.mcp_url, i, "echo.wait", {"seconds": 0.3})) for i in range(n)
        ]
        deadline = time.monotonic() + 30
        while victim.output().count("started (wait)") < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        victim.kill9()
        log = victim.output()
        started = set(re.findall(r"bus call (\w+) started", log))
        finished = set(re.findall(r"bus call (\w+) finished", log))
        in_hand = started - finished
        results = await asyncio.gather(*calls)
    assert in_hand, "the victim must die with calls in progress for this test to mean anything\n" + log[-1500:]
    answers = [a for a, _, _ in results]
    failed = [a for a in answers if "error" in a or a["result"].get("isError")]
    assert failed == [], failed[:3]
    assert sorted(a["id"] for a in answers) == list(range(n))
    # Calls the victim had in hand were finished by the survivor.
    survivors = {a["result"]["structuredContent"]["url"] for a in answers}
    assert len(survivors) == 2


@pytest.mark.parametrize("backend", ["redis", "kafka"])
async def test_bus_outage_gives_clear_errors_and_the_fleet_recovers_by_itself(
    backend: str, redis_url: str, redis_prefix: str
) -> None:
    from edgefleet.dispatcher.devtools.embedded_kafka import EmbeddedKafka
    from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis, free_port

    port = free_port()
    make = (lambda: EmbeddedRedis(port)) if backend == "redis" else (lambda: EmbeddedKafka(port))
    server = make().start()
    bus_url = server.url if backend == "redis" else server.fast_url  # type: ignore[union-attr]
    fleet = Fleet(redis_url, redis_prefix, region="eu-west")  # the registry stays up: only the bus goes away
    try:
        fleet.start_dispatcher(bus_url=bus_url, bus_tools="echo.*")
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west", bus_visibility_s=2)
        async with aiohttp.ClientSession() as session:
            answer, _, _ = await call(session, fleet.mcp_url, 0, "echo.echo", {"text": "before"})
            assert answer["result"]["content"][0]["text"] == "before"
            running = [
                asyncio.create_task(call(session, fleet.mcp_url, i, "echo.wait", {"seconds": 5})) for i in range(1, 6)
            ]
            await asyncio.sleep(1.0)
            assert server.process is not None
            server.process.kill()  # a crash, not a polite shutdown that lets the calls finish
            server.process.wait()
            started = time.monotonic()
            during = await asyncio.gather(*running)
            assert time.monotonic() - started < 15, "calls in flight must be answered, not left to hang"
            for answer, _, _ in during:
                assert answer.get("error", {}).get("code") == -31005, answer  # bus_unavailable, said plainly
            answer, _, _ = await call(session, fleet.mcp_url, 6, "echo.echo", {"text": "while down"})
            assert answer["error"]["code"] == -31005 and "bus" in answer["error"]["message"].lower()

            server = make().start()  # back, on the same address
            deadline = time.monotonic() + 40
            recovered = None
            while time.monotonic() < deadline:
                answer, _, _ = await call(session, fleet.mcp_url, 7, "echo.echo", {"text": "after"}, timeout_ms=3000)
                if "result" in answer:
                    recovered = answer
                    break
                await asyncio.sleep(0.5)
            assert recovered is not None, (
                f"no recovery: {answer}\n"
                + fleet.agents[0].output()[-3000:]
                + "\n----\n"
                + fleet.dispatchers[0][1].output()[-3000:]
            )
            assert recovered["result"]["content"][0]["text"] == "after"
    finally:
        fleet.stop()
        server.stop()
