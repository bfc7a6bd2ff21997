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
SERVER_REQUESTS = frozenset({"sampling", "elicitation", "roots"})  # tools that ask the client
RESULT_FEATURES = frozenset({"call", "progress", "logging"}) | RESOURCE_FEATURES - {"unknown_resource"}
STEPS = {
    1: "per-agent mount /mcp/agents/<agent> and results normalised for the client's era (D1, D5)",
    2: "resources, templates, prompts, completions and logging levels on /mcp and the mount (D2, D10, D12)",
    3: "2025 upstream sessions per client capability set, server->client requests relayed with routable ids (D4, D8)",
    4: "subscriptions: 2025 resources/subscribe + GET stream, 2026 subscriptions/listen (D11)",
    5: "era bridges: held 2025 calls as input_required rounds, 2026 input_required as 2025 requests (D6, D7)",
}


def missing_steps(client: str, upstream: str, target: str, feature: str) -> dict[int, str]:
    """The steps a dispatcher test needs before it can pass, each with why; empty: it must
    pass today."""
    modern_client = surface.CLIENTS[client].era_with(None) == surface.MODERN_ERA
    legacy_upstream = surface.UPSTREAMS[upstream].era == surface.LEGACY_ERA
    needs: dict[int, str] = {}
    if target == "mount":
        needs[1] = "the mount does not exist (404)"
    if modern_client and legacy_upstream and feature in RESULT_FEATURES | SERVER_REQUESTS | {"gated"}:
        needs[1] = "a 2025 upstream's result reaches a 2026 client without resultType"
    if feature in RESOURCE_FEATURES:
        needs[2] = "resources, prompts and completions are not federated (-32601)"
    if feature == "logging" and legacy_upstream:
        needs[2] = "the shared 2025 upstream session logs at every level; nothing filters per client level"
    if feature == "gated" and legacy_upstream:
        needs[3] = "the dispatcher's upstream session declares no client capabilities: the server hides the tool"
    if feature in SERVER_REQUESTS:
        if legacy_upstream and not modern_client:
            needs[3] = "the client's answer to the upstream's request is acknowledged and dropped; the call times out"
        elif legacy_upstream:
            needs[5] = "a 2025 upstream's request goes out on a 2026 stream, where no client answers it"
        elif not modern_client:
            needs[5] = "the 2026 upstream's input_required result reaches a 2025 client raw"
    if feature == "cancel" and legacy_upstream:
        # Not in the design yet: closing the upstream connection is no cancellation in 2025
        # (cancellation.py says so for clients); the upstream needs notifications/cancelled.
        needs[3] = "the dispatcher closes the upstream connection, which a 2025 server does not take as a cancel"
    if feature == "subscribe":
        needs[4] = "resources/subscribe and subscriptions/listen answer -32601"
    return needs
