"""The dispatcher's own requestState: what it is bound to, and every way it is refused."""

from __future__ import annotations

import time

import pytest

from edgefleet.dispatcher.mcp.request_state import RequestStates, RoundBinding, arguments_digest
from edgefleet.shared.errors import InvalidRequestState

OLD, NEW = "o" * 32, "n" * 32


def binding(states: RequestStates, **changes: object) -> RoundBinding:
    fields: dict[str, object] = {
        "identity": "alice",
        "method": "tools/call",
        "target": "weather.plan_trip",
        "arguments": {"city": "Lisbon", "days": 2},
    }
    fields.update(changes)
    return RoundBinding(states, **fields)  # type: ignore[arg-type]


def test_a_state_opens_for_the_request_it_was_minted_for() -> None:
    states = RequestStates([NEW], ttl_s=60)
    token = binding(states).seal("wrap", rep="weather@eu-west#1", s="agent-state")
    claims = binding(states, arguments={"days": 2, "city": "Lisbon"}).open(token)  # key order is not identity
    assert claims["k"] == "wrap" and claims["rep"] == "weather@eu-west#1" and claims["s"] == "agent-state"
    assert "agent-state" not in token and "alice" not in token  # sealed, not merely signed


@pytest.mark.parametrize(
    "other",
    [
        {"identity": "mallory"},
        {"method": "prompts/get"},
        {"target": "weather.other_tool"},
        {"arguments": {"city": "Porto", "days": 2}},
        {"arguments": {"city": "Lisbon"}},
    ],
)
def test_a_state_is_refused_for_any_other_request(other: dict[str, object]) -> None:
    states = RequestStates([NEW], ttl_s=60)
    token = binding(states).seal("held", inst="i", held="h")
    with pytest.raises(InvalidRequestState) as refused:
        binding(states, **other).open(token)
    assert refused.value.to_jsonrpc() == {
        "code": -32602,
        "message": "Invalid or expired requestState",
        "data": {"code": "invalid_request_state"},
    }


def test_tampered_foreign_expired_or_malformed_states_are_refused() -> None:
    states = RequestStates([NEW], ttl_s=60)
    token = binding(states).seal("wrap", s=None)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    foreign = binding(RequestStates(["f" * 32], ttl_s=60)).seal("wrap", s=None)
    expired = binding(states).seal("wrap", s=None, ttl_s=-1)
    for bad in (flipped, foreign, expired, "v1.", "not-a-state", 42, None, ""):
        with pytest.raises(InvalidRequestState):
            binding(states).open(bad)


def test_keys_rotate_the_first_seals_every_one_opens() -> None:
    before = RequestStates([OLD], ttl_s=60)
    during = RequestStates([NEW, OLD], ttl_s=60)
    after = RequestStates([NEW], ttl_s=60)
    minted_before = binding(before).seal("wrap", s=1)
    minted_during = binding(during).seal("wrap", s=2)
    assert binding(during).open(minted_before)["s"] == 1
    assert binding(after).open(minted_during)["s"] == 2
    with pytest.raises(InvalidRequestState):
        binding(after).open(minted_before)


def test_keys_must_be_long_and_a_ring_without_keys_is_this_process_only() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        RequestStates(["short"], ttl_s=60)
    one, two = RequestStates([], ttl_s=60), RequestStates([], ttl_s=60)
    assert not one.shared and RequestStates([NEW], ttl_s=60).shared
    with pytest.raises(InvalidRequestState):
        binding(two).open(binding(one).seal("wrap", s=None))


def test_the_expiry_is_the_ttl() -> None:
    states = RequestStates([NEW], ttl_s=30)
    before = time.time()
    claims = binding(states).open(binding(states).seal("wrap", s=None))
    assert before + 29 < claims["exp"] <= time.time() + 30


def test_the_digest_covers_target_and_canonical_arguments() -> None:
    assert arguments_digest("t", {"a": 1, "b": [1, 2]}) == arguments_digest("t", {"b": [1, 2], "a": 1})
    assert arguments_digest("t", None) == arguments_digest("t", {})
    assert arguments_digest("t", {"a": 1}) != arguments_digest("u", {"a": 1})
    assert arguments_digest("t", {"a": 1}) != arguments_digest("t", {"a": "1"})
