"""Judging a run's observations, and what is known not to work (yet) and why."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.peers import surface
from tests.support.peers.runs import Outcome

# (upstream, feature) the upstream itself fails; excluded where the dispatcher relays the
# agent's own answer (the per-agent mount). test_direct checks each is still a gap.
KNOWN_UPSTREAM_GAPS = {
    ("v1", "unknown_resource"): (
        "the TypeScript SDK v1 answers an unknown resource with -32602 'Resource X not found' "
        "and no data (SEP-2164 data.uri came with 2026-07-28); the mount forwards the agent's answer"
    ),
}


def compatible(client: str, upstream: str) -> bool:
    """Whether ``client`` gets a session from ``upstream`` directly (its era, or a fallback)."""
    return surface.CLIENTS[client].era_with(surface.UPSTREAMS[upstream].era) is not None


def assert_feature(outcome: Outcome, feature: str) -> None:
    result = outcome.features[feature]
    where = f"{outcome.label()}: {feature} (client era {result.get('era')})"
    if not result["ok"]:
        error = result["error"]
        kind = "HUNG" if error.get("type") == "hang" else "failed"
        raise AssertionError(f"{where} {kind} after {result['seconds']:.1f} s: {error}")
    names = surface.naming(outcome.target, outcome.upstream)
    found = surface.problems(feature, result["value"], names, outcome.upstream, exact=outcome.target != "mcp")
    assert not found, f"{where}: " + "; ".join(found)


# -- what the dispatcher does not do yet: docs/design-mcp-surface.md section 3, by step -------
RESOURCE_FEATURES = frozenset(
    {
        "resources",
        "read_text",
        "read_binary",
        "templates",
        "read_template",
        "prompts",
        "prompt_get",
        "complete_prompt",
        "complete_template",
        "unknown_resource",
    }
)
READS = frozenset({"read_text", "read_binary", "read_template"})
SERVER_REQUESTS = frozenset({"sampling", "elicitation", "roots"})  # tools that ask the client
STEPS = {
    1: "per-agent mount /mcp/agents/<agent> and results normalised for the client's era (D1, D5)",
    2: "resources, templates, prompts, completions and logging levels on /mcp and the mount (D2, D10, D12)",
    3: "2025 upstream sessions per client capability set, server->client requests relayed with routable ids (D4, D8)",
    4: "subscriptions: 2025 resources/subscribe + GET stream, 2026 subscriptions/listen (D11)",
    5: "era bridges: held 2025 calls as input_required rounds, 2026 input_required as 2025 requests (D6, D7)",
}
LANDED = frozenset({1, 2, 3, 4, 5})  # on main; what still fails there is a bug of that step (see the reason)


def missing_steps(client: str, upstream: str, target: str, feature: str) -> dict[int, str]:
    """The steps a dispatcher test needs before it can pass, each with why; empty: it must
    pass today."""
    needs: dict[int, str] = {}
    return needs


def xfail_reason(needs: dict[int, str]) -> str:
    """``issue 18 step N: ...`` for the last step a case waits for, and every reason."""
    step = max(needs)
    why = "; ".join(needs[s] for s in sorted(needs))
    status = "landed, still failing" if step in LANDED else STEPS[step]
    return f"issue 18 step {step}: {status} ({why})"


def case(client: str, upstream: str, target: str, feature: str, *, in_id: bool = True) -> Any:
    """A ``pytest.param`` (client, upstream, [target,] feature) named after all of them, with a
    strict xfail naming the step when the dispatcher cannot pass it yet."""
    needs = missing_steps(client, upstream, target, feature)
    marks = [pytest.mark.xfail(strict=True, reason=xfail_reason(needs))] if needs else []
    where = f"-{target}" if in_id else ""
    args = (client, upstream, target, feature) if in_id else (client, upstream, feature)
    return pytest.param(*args, id=f"{client}-{surface.UPSTREAMS[upstream].label}{where}-{feature}", marks=marks)
