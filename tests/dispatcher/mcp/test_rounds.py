"""Agents asking the client things mid-call, across the two eras (docs/design-mcp-surface.md,
D6, D7, D9), with the official Python client and unmodified servers on the official SDK:

- a 2025-era agent asks a 2026-era client: the call is held, the question goes out as an
  input_required round, the retry resumes it (on any dispatcher of the fleet);
- a 2026-era agent's input_required round reaches a 2025-era client as the requests its
  era knows;
- a 2026-era agent and client: the round passes, its state wrapped in ours, and the retry
  goes back to the replica that minted the agent's state.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from mcp import Client
from mcp_types import CreateMessageResult, ElicitResult, ListRootsResult, Root, TextContent

from edgefleet.shared import sse

from tests.support.fleet import Fleet, plain_server

MODERN_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
}


def meta(**capabilities: Any) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }


def asking_server(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    return plain_server(*flags, script="asking_mcp_server.py")


@pytest.fixture
def servers(fleet: Fleet) -> Iterator[Fleet]:
    """``old``: the asking server as a 2025-only server; ``new``: the same, 2026-only."""
    procs = []
    try:
        for name, flag in (("old", "--legacy-only"), ("new", "--modern-only")):
            proc, url = asking_server(flag)
            procs.append(proc)
            fleet.add_server(name, url)
        yield fleet
    finally:
        for proc in procs:
            proc.kill()


class Answers:
    """A client's callbacks, with what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def elicit(self, context: Any, params: Any) -> ElicitResult:
        self.asked.append(params.message)
        if "budget" in params.message:
            return ElicitResult(action="accept", content={"euros": 900})
        return ElicitResult(action="accept", content={"start": "2027-01-03"})

    async def sample(self, context: Any, params: Any) -> CreateMessageResult:
        self.asked.append("sampling")
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="old pond"), model="m")

    async def roots(self, context: Any) -> ListRootsResult:
        self.asked.append("roots")
        return ListRootsResult(roots=[Root(uri="file:///work")])

    def client(self, url: str, **options: Any) -> Client:
        return Client(
            url,
            elicitation_callback=self.elicit,
            sampling_callback=self.sample,
            list_roots_callback=self.roots,
            **options,
        )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("agent", ["old", "new"])
async def test_every_question_reaches_the_client_in_its_own_era(servers: Fleet, agent: str, mode: str) -> None:
    answers = Answers()
    async with answers.client(servers.mcp_url, mode=mode) as client:
        one = await client.call_tool(f"{agent}.plan_trip", {"city": "Lisbon"})
        two = await client.call_tool(f"{agent}.plan_budget_trip", {"city": "Porto"})
        poem = await client.call_tool(f"{agent}.haiku", {"topic": "frogs"})
        listed = await client.call_tool(f"{agent}.roots", {})
    assert not one.is_error and "trip to Lisbon from 2027-01-03" in str(one.content), one
    assert not two.is_error and "from 2027-01-03 for 900 EUR" in str(two.content), two
    assert not poem.is_error and "haiku: old pond" in str(poem.content), poem
    assert not listed.is_error and "file:///work" in str(listed.content), listed
    assert answers.asked == [
        "Which dates in Lisbon?",
        "Which dates in Porto?",
        "What budget for Porto?",
        "sampling",
        "roots",
    ]


def first_round(url: str, tool: str, arguments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta(elicitation={}), **extra},
    }
    resp = httpx.post(
        url + "/mcp", content=orjson.dumps(body), headers={**MODERN_HEADERS, "mcp-name": tool}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    message = last_message(resp)
    assert message["id"] == 7, message
    return message


def last_message(resp: httpx.Response) -> dict[str, Any]:
    if resp.headers["content-type"].startswith("text/event-stream"):
        return list(sse.messages(resp.content))[-1]
    return resp.json()  # type: ignore[no-any-return]


def retry(url: str, tool: str, arguments: dict[str, Any], state: Any, responses: dict[str, Any]) -> dict[str, Any]:
    body = {
        "jsonrpc": "2.0",
        "id": 8,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "inputResponses": responses,
            "requestState": state,
            "_meta": meta(elicitation={}),
        },
    }
    resp = httpx.post(
        url + "/mcp", content=orjson.dumps(body), headers={**MODERN_HEADERS, "mcp-name": tool}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    return last_message(resp)


@pytest.fixture
def two_dispatchers(redis_url: str, redis_prefix: str) -> Iterator[Fleet]:
    """Two dispatchers of one fleet (same Redis, same requestState keys), both asking servers."""
    fleet = Fleet(redis_url, redis_prefix)
    procs = []
    try:
        for _ in range(2):
            fleet.start_dispatcher(request_state_keys="k" * 32 + ",older-" + "s" * 32)
        for name, flag in (("old", "--legacy-only"), ("new", "--modern-only")):
            proc, url = asking_server(flag)
            procs.append(proc)
            fleet.add_server(name, url)
        yield fleet
    finally:
        for proc in procs:
            proc.kill()
        fleet.stop()


@pytest.mark.parametrize("agent", ["old", "new"])
def test_the_retry_may_land_on_another_dispatcher(two_dispatchers: Fleet, agent: str) -> None:
    (here, _), (other, _) = two_dispatchers.dispatchers
    two_dispatchers.wait_for(
        lambda: any(a["name"] == agent and a["replicas"][0]["routable"] for a in two_dispatchers.agents_view(other)),
        f"{agent} routable at the second dispatcher",
    )
    tool = f"{agent}.plan_trip"
    asked = first_round(here, tool, {"city": "Oslo"})["result"]
    assert asked["resultType"] == "input_required", asked
    [(key, request)] = asked["inputRequests"].items()
    assert request["method"] == "elicitation/create" and request["params"]["message"] == "Which dates in Oslo?"
    done = retry(
        other,
        tool,
        {"city": "Oslo"},
        asked["requestState"],
        {key: {"action": "accept", "content": {"start": "2027-02-01"}}},
    )
    assert done["id"] == 8 and done["result"]["resultType"] == "complete", done
    assert "trip to Oslo from 2027-02-01" in str(done["result"]["content"])


@pytest.mark.parametrize("agent", ["old", "new"])
def test_a_state_for_other_arguments_or_tampered_with_is_refused(servers: Fleet, agent: str) -> None:
    tool = f"{agent}.plan_trip"
    asked = first_round(servers.url, tool, {"city": "Rome"})["result"]
    [key] = asked["inputRequests"]
    answer = {key: {"action": "accept", "content": {"start": "2027-03-01"}}}
    state = asked["requestState"]
    tampered = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
    for arguments, token in (({"city": "Paris"}, state), ({"city": "Rome"}, tampered), ({"city": "Rome"}, 42)):
        refused = retry(servers.url, tool, arguments, token, answer)
        assert refused["error"]["code"] == -32602, refused
        assert refused["error"]["message"] == "Invalid or expired requestState"
        assert refused["error"]["data"]["code"] == "invalid_request_state"
    # The genuine retry still works after the refusals.
    done = retry(servers.url, tool, {"city": "Rome"}, state, answer)
    assert "trip to Rome from 2027-03-01" in str(done["result"]["content"]), done


def test_unanswered_questions_are_asked_again(servers: Fleet) -> None:
    tool = "old.plan_trip"
    asked = first_round(servers.url, tool, {"city": "Bern"})["result"]
    again = retry(servers.url, tool, {"city": "Bern"}, asked["requestState"], {})["result"]
    assert again["resultType"] == "input_required"
    assert again["inputRequests"] == asked["inputRequests"]
    [key] = again["inputRequests"]
    done = retry(
        servers.url,
        tool,
        {"city": "Bern"},
        again["requestState"],
        {key: {"action": "accept", "content": {"start": "x"}}},
    )
    assert "trip to Bern from x" in str(done["result"]["content"]), done


def test_replicas_each_get_back_the_rounds_they_started(fleet: Fleet) -> None:
    """Two replicas of a 2026-era agent, each sealing with a key of its own process: every
    retry must reach the replica that minted the state, or the agent refuses it."""
    procs = []
    try:
        for _ in range(2):
            proc, url = asking_server("--modern-only")
            procs.append(proc)
            fleet.add_server("new", url)
        fleet.wait_for(
            lambda: sum(r["routable"] for a in fleet.agents_view() if a["name"] == "new" for r in a["replicas"]) == 2,
            "two routable replicas",
        )
        for n in range(8):
            asked = first_round(fleet.url, "new.plan_trip", {"city": f"c{n}"})["result"]
            [key] = asked["inputRequests"]
            done = retry(
                fleet.url,
                "new.plan_trip",
                {"city": f"c{n}"},
                asked["requestState"],
                {key: {"action": "accept", "content": {"start": "d"}}},
            )
            assert "result" in done and f"trip to c{n} from d" in str(done["result"]["content"]), done
    finally:
        for proc in procs:
            proc.kill()


def test_held_calls_are_bounded_per_identity_and_in_time(servers: Fleet) -> None:
    bounded = servers.start_dispatcher(held_calls_per_identity=1, round_timeout_s=2)
    servers.wait_for(
        lambda: any(a["name"] == "old" and a["replicas"][0]["routable"] for a in servers.agents_view(bounded)),
        "old routable at the bounded dispatcher",
    )
    held = first_round(bounded, "old.plan_trip", {"city": "Riga"})["result"]
    assert held["resultType"] == "input_required"
    # One call of this identity is held: the agent hears that the client cannot be asked.
    refused = first_round(bounded, "old.plan_trip", {"city": "Kyiv"})
    # (what it makes of that is its own affair: this SDK fails the call with the reason)
    assert "EDGEFLEET_HELD_CALLS_PER_IDENTITY" in str(refused.get("error") or refused["result"]), refused
    # The round expires (its state with it), and the slot is free again.
    servers.wait_for(
        lambda: "input_required" in str(first_round(bounded, "old.plan_trip", {"city": "Kyiv"})),
        "a free slot",
        timeout=10,
    )
    [key] = held["inputRequests"]
    late = retry(
        bounded,
        "old.plan_trip",
        {"city": "Riga"},
        held["requestState"],
        {key: {"action": "accept", "content": {"start": "x"}}},
    )
    assert late["error"]["data"]["code"] == "invalid_request_state", late


def test_an_agent_asking_a_client_that_declared_nothing_hears_so_at_once(servers: Fleet) -> None:
    """No capability declared: nothing is held, and whatever the agent asks is answered by
    the dispatcher (-32601), so the call ends now instead of at its deadline."""
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "old.haiku", "arguments": {"topic": "rain"}, "_meta": meta()},
    }
    resp = httpx.post(
        servers.url + "/mcp",
        content=orjson.dumps(body),
        headers={**MODERN_HEADERS, "mcp-name": "old.haiku"},
        timeout=20,
    )
    message = last_message(resp)
    assert message["id"] == 3 and "input_required" not in str(message), message
    assert "error" in message or message["result"]["isError"] is True, message


@pytest.mark.parametrize("capabilities", [{}, {"elicitation": {}}])
def test_requests_a_2026_client_cannot_be_asked_are_answered_for_it(
    servers: Fleet, capabilities: dict[str, Any]
) -> None:
    """A 2025-era agent that pings and asks for roots without checking what the client
    declared: the dispatcher answers the ping itself and refuses roots (-32601) to the agent,
    whether the call is held for rounds (elicitation declared) or not."""
    body = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "tools/call",
        "params": {"name": "old.blunt_roots", "arguments": {}, "_meta": meta(**capabilities)},
    }
    headers = {**MODERN_HEADERS, "mcp-name": "old.blunt_roots"}
    resp = httpx.post(servers.url + "/mcp", content=orjson.dumps(body), headers=headers, timeout=20)
    message = last_message(resp)
    assert message["id"] == 4 and message["result"]["resultType"] == "complete", message
    text = str(message["result"]["content"])
    assert "pinged; roots refused:" in text and "roots/list" in text, text
