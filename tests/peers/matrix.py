"""Judging a run's observations, and what is known not to work (yet) and why."""

from __future__ import annotations

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
