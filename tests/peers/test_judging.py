"""The judge of observations and the expectations table, without any process: a wrong,
partial or hung observation must fail, so a passing peer test means something."""

from __future__ import annotations

from typing import Any

import pytest

from tests.peers.matrix import assert_feature, compatible, missing_steps, xfail_reason
from tests.support.peers import surface
from tests.support.peers.runs import Outcome

V1, V2 = surface.UPSTREAMS["v1"], surface.UPSTREAMS["v2"]
NAMESPACED = surface.naming("mcp", V1)
OWN = surface.naming("mount", V1)


def outcome(target: str, feature: str, result: dict[str, Any]) -> Outcome:
    return Outcome(surface.CLIENTS["py-auto"], V1, target, "http://x/mcp", {feature: result}, 1.0)


def test_names_and_uris_are_namespaced_on_mcp_only() -> None:
    assert NAMESPACED.name("echo") == "peer-v1.echo" and OWN.name("echo") == "echo"
    assert NAMESPACED.uri("peer://items/{id}") == "peer-v1+peer://items/{id}" and OWN.uri("peer://x") == "peer://x"


@pytest.mark.parametrize(
    ("feature", "value", "complaint"),
    [
        ("call", ["echo: bye"], "expected ['echo: hello']"),
        ("progress", {"text": ["counted 3"], "progress": []}, "no notifications/progress"),
        ("progress", {"text": ["counted 3"], "progress": [2, 1]}, "increasing"),
        ("logging", {"text": ["chattered"], "levels": ["debug", "info", "warning", "error"]}, "expected"),
        ("sampling", {"text": ["sampled: ? (model x)"], "asked": "What is six times seven?"}, "expected"),
        ("cancel", {"started": True, "upstream_cancelled": False}, "never saw the cancellation"),
        ("cancel", {"started": False, "error": {"type": "MCPError"}}, "never started"),
        ("unknown_resource", {"error": {"code": -32602, "message": "Resource not found"}}, "data.uri"),
        ("unknown_resource", {"answered": []}, "expected an error"),
        ("subscribe", [], "expected notifications/resources/updated"),
    ],
)
def test_a_wrong_observation_fails(feature: str, value: Any, complaint: str) -> None:
    found = surface.problems(feature, value, NAMESPACED, V1, exact=False)
    assert found and complaint in " ".join(found), found


def test_a_listing_on_the_mount_must_be_the_agent_alone() -> None:
    own = sorted(surface.TOOLS)
    assert surface.problems("tools", own, OWN, V1, exact=True) == []
    assert "not this agent's" in " ".join(surface.problems("tools", [*own, "peer-v2.echo"], OWN, V1, exact=True))
    # On /mcp the other agents' names are expected beside this one's.
    namespaced = [NAMESPACED.name(t) for t in surface.TOOLS]
    assert surface.problems("tools", [*namespaced, "peer-v2.echo"], NAMESPACED, V1, exact=False) == []


def test_a_hang_is_reported_as_one() -> None:
    hung = {"ok": False, "seconds": 18.0, "era": "2026-07-28", "error": {"type": "hang", "message": "no answer"}}
    with pytest.raises(AssertionError, match="sampling .* HUNG after 18.0 s"):
        assert_feature(outcome("mcp", "sampling", hung), "sampling")


def test_the_right_observation_passes() -> None:
    right = {"ok": True, "seconds": 0.1, "era": "2026-07-28", "value": ["echo: hello"]}
    assert_feature(outcome("mcp", "call", right), "call")


def test_client_eras_against_single_era_servers() -> None:
    assert compatible("py-auto", "v1") and compatible("ts-auto", "v1") and compatible("py-auto", "v2")
    assert not compatible("py-legacy", "v2") and not compatible("ts-legacy", "v2") and not compatible("ts-pin", "v1")


def test_every_dispatcher_case_today_or_a_step() -> None:
    """What must pass on main (steps 1-5 landed) and what still names a step."""
    assert missing_steps("ts-pin", "v1", "mount", "call") == {}
    assert missing_steps("py-legacy", "v1", "mcp", "sampling") == {}
    assert missing_steps("py-auto", "v1", "mcp", "read_text") == {}
    assert missing_steps("ts-auto", "v1", "mcp", "read_text") == {}
    assert missing_steps("py-legacy", "v1", "mcp", "logging") == {}
    assert missing_steps("py-auto", "v1", "mount", "elicitation") == {}
    assert missing_steps("ts-legacy", "v2", "mcp", "roots") == {}
    assert missing_steps("ts-auto", "v2", "mount", "subscribe") == {}
    assert missing_steps("py-legacy", "v1", "mcp", "subscribe") == {}
    assert missing_steps("py-legacy", "v1", "mount", "cancel") == {}
    assert missing_steps("py-legacy", "v1", "mcp", "gated") == {}
    assert missing_steps("py-auto", "v1", "mcp", "gated") == {}
    assert xfail_reason({2: "x"}).startswith("issue 18 step 2: landed, still failing (x)")
    assert xfail_reason({2: "x", 4: "y"}).startswith("issue 18 step 4: landed, still failing (x; y)")


def test_the_capability_gated_tool_is_judged_on_its_own() -> None:
    """``tools`` passes with or without ``gated`` (a 2025 server lists it only to clients
    that declared sampling); the ``gated`` feature requires it."""
    always = [OWN.name(t) for t in surface.TOOLS if t != "gated"]
    assert surface.problems("tools", always, OWN, V1, exact=True) == []
    assert surface.problems("tools", [*always, "gated"], OWN, V1, exact=True) == []
    hidden = {"listed": False, "text": ["gated: for clients with sampling"]}
    assert surface.problems("gated", hidden, OWN, V1, exact=True)
