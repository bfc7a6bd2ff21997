"""Registry credentials against a real dispatcher and real agents: per-agent keys bound to
their namespace, the fleet token, operators (fleet token or admin scope), every refusal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from edgefleet.dispatcher.security.agent_auth import new_agent_key
from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

ECHO_KEY = new_agent_key()  # bound to the name "echo"
TEXT_KEY = new_agent_key()  # bound to "text", in eu-west only
ROOT = new_key()  # client API key with the admin scope
BOB = new_key()  # client API key, no admin scope


@pytest.fixture(scope="module")
def keyed_fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    tmp: Path = tmp_path_factory.mktemp("agentauth")
    agents = tmp / "agents.yaml"
    agents.write_text(
        yaml.safe_dump(
            {
                "agents": [
                    {"agent": "echo", "sha256": hash_key(ECHO_KEY)},
                    {"agent": "text", "sha256": hash_key(TEXT_KEY), "regions": ["eu-west"]},
                ]
            }
        )
    )
    clients = tmp / "keys.yaml"
    clients.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"identity": "root", "sha256": hash_key(ROOT), "scopes": ["admin"]},
                    {"identity": "bob", "sha256": hash_key(BOB)},
                ]
            }
        )
    )
    fleet = Fleet(redis_url, "eftest-agentauth-" + str(int(time.time() * 1000)), region="eu-west")
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(agent_keys_file=agents, api_keys_file=clients)
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west", env={"EDGEFLEET_AGENT_KEY": ECHO_KEY})
        yield fleet
    finally:
        fleet.stop()


def _bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def _register(fleet: Fleet, credential: str | None, name: str, region: str = "eu-west") -> httpx.Response:
    body = {"name": name, "region": region, "url": "http://127.0.0.1:9/mcp"}
    return httpx.post(
        fleet.url + "/v1/agents", json=body, headers=_bearer(credential) if credential else {}, timeout=30
    )


def _code(resp: httpx.Response) -> str:
    return resp.json()["error"]["code"]


def _echo_replica(fleet: Fleet) -> str:
    return next(a for a in fleet.agents_view() if a["name"] == "echo")["replicas"][0]["id"]


def test_an_agent_with_its_own_key_joins_and_serves(keyed_fleet: Fleet) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo.echo",
            "arguments": {"text": "keyed"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        **_bearer(ROOT),
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo.echo",
    }
    resp = httpx.post(keyed_fleet.mcp_url, json=call, headers=headers, timeout=30)
    assert resp.status_code == 200 and "keyed" in resp.text


def test_an_agent_cannot_register_in_another_agents_namespace(keyed_fleet: Fleet) -> None:
    # echo's key claiming "text" (tools text.*): refused before anything is contacted.
    resp = _register(keyed_fleet, ECHO_KEY, "text")
    assert (
        resp.status_code == 403
        and _code(resp) == "namespace_forbidden"
        and "belongs to agent 'echo'" in resp.json()["error"]["message"]
    )
    # The shared fleet token cannot take a name that has its own key.
    resp = _register(keyed_fleet, keyed_fleet.token, "echo")
    assert resp.status_code == 403 and _code(resp) == "namespace_forbidden"
    # A key bound to regions registers only there.
    resp = _register(keyed_fleet, TEXT_KEY, "text", region="us-east")
    assert resp.status_code == 403 and "only in eu-west" in resp.json()["error"]["message"]
    # Nothing of it reached the registry.
    assert {a["name"] for a in keyed_fleet.agents_view()} == {"echo"}


def test_a_real_agent_with_the_wrong_key_is_refused(keyed_fleet: Fleet) -> None:
    proc = keyed_fleet.start_agent(
        "edgefleet.agents.examples.text", "eu-west", wait=False, env={"EDGEFLEET_AGENT_KEY": ECHO_KEY}
    )
    keyed_fleet.wait_for(lambda: "refused: HTTP 403" in proc.output(), "the agent's registration refused", proc=proc)
    assert "namespace_forbidden" in proc.output()
    assert "text" not in {a["name"] for a in keyed_fleet.agents_view()}


def test_unknown_agent_keys_and_wrong_fleet_tokens_are_401(keyed_fleet: Fleet) -> None:
    replica = _echo_replica(keyed_fleet)
    beat = keyed_fleet.url + f"/v1/agents/replicas/{replica}/heartbeat"
    for credential in (None, new_agent_key(), "wrong-fleet-token", keyed_fleet.token + "x"):
        resp = _register(keyed_fleet, credential, "newcomer")
        assert resp.status_code == 401 and _code(resp) == "unauthorized", (credential, resp.text)
        resp = httpx.post(beat, json={}, headers=_bearer(credential) if credential else {}, timeout=10)
        assert resp.status_code == 401, (credential, resp.text)
    assert "Unknown agent key" in _register(keyed_fleet, new_agent_key(), "newcomer").json()["error"]["message"]


def test_heartbeats_and_removal_only_for_your_own_replicas(keyed_fleet: Fleet) -> None:
    replica = _echo_replica(keyed_fleet)
    base = keyed_fleet.url + f"/v1/agents/replicas/{replica}"
    assert httpx.post(base + "/heartbeat", json={}, headers=_bearer(ECHO_KEY), timeout=10).status_code == 200
    for call in (
        lambda h: httpx.post(base + "/heartbeat", json={}, headers=h, timeout=10),
        lambda h: httpx.delete(base, headers=h, timeout=10),
    ):
        resp = call(_bearer(TEXT_KEY))
        assert resp.status_code == 403 and _code(resp) == "namespace_forbidden"
    # The fleet token cannot heartbeat a keyed agent's replica (it could not register it either).
    assert httpx.post(base + "/heartbeat", json={}, headers=keyed_fleet.auth(), timeout=10).status_code == 403
    assert _echo_replica(keyed_fleet) == replica


def test_operator_routes_need_the_fleet_token_or_the_admin_scope(keyed_fleet: Fleet) -> None:
    agents = keyed_fleet.url + "/v1/agents"
    assert httpx.get(agents, headers=keyed_fleet.auth(), timeout=10).status_code == 200
    assert [a["name"] for a in httpx.get(agents, headers=_bearer(ROOT), timeout=10).json()["agents"]] == ["echo"]
    for credential in (BOB, ECHO_KEY):
        resp = httpx.get(agents, headers=_bearer(credential), timeout=10)
        assert resp.status_code == 403 and _code(resp) == "forbidden", resp.text
        resp = httpx.delete(agents + "/echo", headers=_bearer(credential), timeout=10)
        assert resp.status_code == 403
    assert httpx.get(agents, timeout=10).status_code == 401
    assert _echo_replica(keyed_fleet)
