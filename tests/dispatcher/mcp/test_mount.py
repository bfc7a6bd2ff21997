"""The per-agent mount (/mcp/agents/<agent>: one agent under its own names) and answers
shaped for the client's protocol era, against unmodified MCP servers of both eras."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
from mcp import Client

from edgefleet.shared import jsonrpc

from tests.support.fleet import Fleet, plain_server

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture
def servers(fleet: Fleet) -> Iterator[Fleet]:
    """``weather``: a 2025-only server; ``meteo``: the same server speaking both eras."""
    legacy, legacy_url = plain_server("--legacy-only")
    both, both_url = plain_server()
    try:
        fleet.add_server("weather", legacy_url)
        fleet.add_server("meteo", both_url)
        yield fleet
    finally:
        legacy.kill()
        both.kill()


def post(fleet: Fleet, path: str, method: str, params: dict[str, object], **headers: str) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    base = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    return httpx.post(fleet.url + path, content=orjson.dumps(body), headers={**base, **headers}, timeout=30)


async def test_a_2026_client_uses_a_2025_only_server(servers: Fleet) -> None:
    # The 2025 server answers without resultType; the 2026 client requires it.
    async with Client(servers.mcp_url) as client:
        result = await client.call_tool("weather.forecast", {"city": "Lisbon", "days": 2})
    assert not result.is_error and "Lisbon" in str(result.content)


async def test_the_mount_serves_one_agent_by_its_own_names_in_both_eras(servers: Fleet) -> None:
    for agent in ("weather", "meteo"):
        url = f"{servers.url}/mcp/agents/{agent}"
        async with Client(url) as modern, Client(url, mode="legacy") as legacy:
            for client in (modern, legacy):
                assert [t.name for t in (await client.list_tools()).tools] == ["forecast"]
                result = await client.call_tool("forecast", {"city": "Porto"})
                assert not result.is_error and "Porto" in str(result.content), (agent, client)


def open_session(fleet: Fleet, path: str) -> dict[str, str]:
    """A 2025-11-25 session opened at ``path``: the headers that use it."""
    init = httpx.post(
        fleet.url + path,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers={"accept": "application/json, text/event-stream"},
        timeout=30,
    )
    assert init.status_code == 200, init.text
    return {
        "mcp-session-id": init.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
        "accept": "application/json, text/event-stream",
    }


def test_a_session_belongs_to_the_url_it_was_opened_on(servers: Fleet) -> None:
    session = open_session(servers, "/mcp/agents/weather")
    listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    here = httpx.post(servers.url + "/mcp/agents/weather", json=listed, headers=session, timeout=30)
    assert [t["name"] for t in here.json()["result"]["tools"]] == ["forecast"]
    for elsewhere in ("/mcp", "/mcp/agents/meteo"):
        assert httpx.post(servers.url + elsewhere, json=listed, headers=session, timeout=30).status_code == 404


def test_an_unknown_agent_mount_is_404_method_not_found(servers: Fleet) -> None:
    resp = post(servers, "/mcp/agents/nobody", "tools/list", {"_meta": META})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601


def test_initialize_under_the_2026_header_is_a_removed_method(servers: Fleet) -> None:
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
        "_meta": META,
    }
    resp = post(servers, "/mcp", "initialize", params)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601


def answer_of(resp: httpx.Response) -> dict[str, object]:
    """The JSON-RPC response in a JSON body or an SSE stream."""
    found = jsonrpc.last_response(resp.content, stream=resp.headers["content-type"].startswith("text/event-stream"))
    assert found is not None, resp.text
    return found


def test_results_carry_the_fields_of_the_clients_era_only(servers: Fleet) -> None:
    call = {"name": "weather.forecast", "arguments": {"city": "Faro"}, "_meta": META}
    modern = answer_of(post(servers, "/mcp", "tools/call", call, **{"mcp-name": "weather.forecast"}))
    assert modern["result"]["resultType"] == "complete"  # type: ignore[index]
    # A 2025 client calling the server that also speaks 2026 (its answers carry resultType).
    legacy = httpx.post(
        servers.mcp_url,
        json={
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "meteo.forecast", "arguments": {"city": "Faro"}},
        },
        headers=open_session(servers, "/mcp"),
        timeout=30,
    )
    result = answer_of(legacy)["result"]
    assert "Faro" in str(result) and "resultType" not in result  # type: ignore[operator]
