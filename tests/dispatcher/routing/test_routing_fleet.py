"""Nearest-region routing and failover with real processes: three regions of echo agents
on one machine, callers simulated from three loopback addresses that a custom GeoIP
database (built with mmdb-writer, as an operator would) places in three regions."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.support.fleet import Fleet
from tests.support.geo import write_private_db

pytestmark = pytest.mark.integration

CALLERS = {"eu-west": "127.0.0.2", "us-east": "127.0.0.3", "ap-southeast": "127.0.0.4"}
OUTCOME_UNKNOWN = -31004


@pytest.fixture
def geo_fleet(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    db = write_private_db(tmp_path / "regions.mmdb", {f"{ip}/32": {"region": region} for region, ip in CALLERS.items()})
    fleet = Fleet(redis_url, redis_prefix, region="eu-west")
    fleet.private_db = db  # type: ignore[attr-defined]
    try:
        # 127.0.0.1 is a trusted proxy (its X-Forwarded-For counts); the callers are not.
        fleet.start_dispatcher(geoip_private_db=db, trusted_proxies="127.0.0.1/32", eject_base_s=30)
        for region in ("eu-west", "eu-west", "us-east", "ap-southeast"):
            fleet.start_agent("edgefleet.agents.examples.echo", region)
        yield fleet
    finally:
        fleet.stop()


def client_from(fleet: Fleet, address: str) -> Client:
    http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(local_address=address), timeout=30)
    return Client(streamable_http_client(fleet.mcp_url, http_client=http))


async def served_region(client: Client, tool: str = "echo.where", arguments: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(tool, arguments or {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return str(result.structured_content["region"])


def raw_call(
    fleet: Fleet, address: str, headers: dict[str, str] | None = None, *, url: str | None = None
) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo.where",
            "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    base = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo.where",
    }
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10) as http:
        return http.post(url or fleet.mcp_url, json=body, headers={**base, **(headers or {})})


async def test_each_caller_is_served_by_its_nearest_region(geo_fleet: Fleet) -> None:
    for region, address in CALLERS.items():
        async with client_from(geo_fleet, address) as client:
            assert {await served_region(client) for _ in range(6)} == {region}
        route = raw_call(geo_fleet, address).headers["edgefleet-route"]
        assert f"region={region};" in route and f"caller-region={region};" in route and "reason=private-db" in route


async def test_forwarded_headers_count_only_from_trusted_proxies(geo_fleet: Fleet) -> None:
    # An untrusted caller in ap-southeast claims to be the eu-west caller: ignored.
    forged = raw_call(geo_fleet, CALLERS["ap-southeast"], {"x-forwarded-for": CALLERS["eu-west"]})
    assert "region=ap-southeast;" in forged.headers["edgefleet-route"]
    forged = raw_call(geo_fleet, CALLERS["ap-southeast"], {"forwarded": f"for={CALLERS['eu-west']}"})
    assert "region=ap-southeast;" in forged.headers["edgefleet-route"]
    # The trusted proxy (127.0.0.1) relays a us-east caller: believed.
    relayed = raw_call(geo_fleet, "127.0.0.1", {"x-forwarded-for": CALLERS["us-east"]})
    assert "region=us-east;" in relayed.headers["edgefleet-route"]
    # A dispatcher trusting no proxy ignores the header even from loopback (the server
    # underneath must not rewrite the peer address on its own either).
    strict = geo_fleet.start_dispatcher(geoip_private_db=geo_fleet.private_db)
    geo_fleet.wait_for(
        lambda: sum(r["routable"] for a in geo_fleet.agents_view(strict) for r in a["replicas"]) == 4,
        "second dispatcher warm",
    )
    unproxied = raw_call(geo_fleet, "127.0.0.1", {"x-forwarded-for": CALLERS["us-east"]}, url=strict + "/mcp")
    assert (
        "reason=default" in unproxied.headers["edgefleet-route"]
        and "region=eu-west;" in unproxied.headers["edgefleet-route"]
    )
    # A region hint orders the choice; a hint naming no region is a clear error.
    hinted = raw_call(geo_fleet, CALLERS["eu-west"], {"x-edge-region": "ap-southeast"})
    assert (
        "region=ap-southeast;" in hinted.headers["edgefleet-route"]
        and "reason=hint" in hinted.headers["edgefleet-route"]
    )
    bad = raw_call(geo_fleet, CALLERS["eu-west"], {"x-edge-region": "atlantis"})
    assert bad.status_code == 400 and "atlantis" in bad.json()["error"]["message"]


async def test_losing_a_region_moves_its_callers_to_the_next_nearest(geo_fleet: Fleet) -> None:
    eu_replicas = [p for p in geo_fleet.agents if p.name.endswith("eu-west")]
    us_replica = next(p for p in geo_fleet.agents if p.name.endswith("us-east"))
    regions: Counter[str] = Counter()
    failures: list[str] = []
    stop = asyncio.Event()

    async def caller() -> None:
        async with client_from(geo_fleet, CALLERS["eu-west"]) as client:
            while not stop.is_set():
                try:
                    regions[await served_region(client)] += 1
                except (MCPError, AssertionError) as exc:
                    failures.append(repr(exc))

    workers = [asyncio.create_task(caller()) for _ in range(4)]
    await asyncio.sleep(1.5)
    before = dict(regions)
    for proc in eu_replicas:  # the whole region dies, mid-load
        proc.kill9()
    await asyncio.sleep(2.0)
    after_kill = regions["us-east"]
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*workers)
    assert failures == [], failures[:3]
    assert set(before) == {"eu-west"} and before["eu-west"] > 10
    assert regions["us-east"] > after_kill > 0, "eu-west callers must move to us-east (next nearest), not ap-southeast"
    assert regions["ap-southeast"] == 0

    # A started, non-idempotent call whose replica dies: a clear "outcome unknown".
    async with client_from(geo_fleet, CALLERS["us-east"]) as client:
        call = asyncio.create_task(client.call_tool("echo.wait", {"seconds": 10}))
        await asyncio.sleep(1.0)
        us_replica.kill9()
        with pytest.raises(MCPError) as failed:
            await call
        assert failed.value.error.code == OUTCOME_UNKNOWN
        # ... and the us-east caller's next calls go to the only region left.
        assert await served_region(client) == "ap-southeast"


async def test_read_only_tools_with_a_ttl_are_served_from_the_cache(fleet: Fleet) -> None:
    fleet.start_agent("edgefleet.agents.examples.text", "eu-west")

    def detect(text: str) -> httpx.Response:
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "text.detect_language",
                "arguments": {"text": text},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
        headers = {
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": "text.detect_language",
        }
        return httpx.post(fleet.mcp_url, json=body, headers=headers, timeout=10)

    first = detect("Der Hund schläft und die Katze spielt im Garten.")
    assert "cache=hit" not in first.headers["edgefleet-route"]
    again = detect("Der Hund schläft und die Katze spielt im Garten.")
    assert again.headers["edgefleet-route"] == "cache=hit"
    answer = again.json()
    assert answer["id"] == 7 and answer["result"]["structuredContent"]["language"] == "de"
    other = detect("The dog sleeps and the cat plays in the garden.")
    assert "cache=hit" not in other.headers["edgefleet-route"]
