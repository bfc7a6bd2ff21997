"""The baseline: the scenario straight against each upstream, no dispatcher. It proves the
harness (clients, upstreams, observations) before anything is blamed on the dispatcher, and
that each upstream really serves one era only, so the dispatcher has to bridge."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.peers.conftest import PAIRS
from tests.peers.matrix import KNOWN_UPSTREAM_GAPS, assert_feature, compatible
from tests.support.peers import surface
from tests.support.peers.processes import EventProcess
from tests.support.peers.runs import Runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BASELINE = [
    pytest.param(c, u, f, id=f"{c}-{surface.UPSTREAMS[u].label}-direct-{f}")
    for c, u in PAIRS
    if compatible(c, u)
    for f in surface.FEATURES
    if (u, f) not in KNOWN_UPSTREAM_GAPS
]


@pytest.mark.parametrize(("client", "upstream", "feature"), BASELINE)
def test_the_scenario_passes_directly(client: str, upstream: str, feature: str, direct_runs: Runs) -> None:
    assert_feature(direct_runs.get(client, upstream, "direct", PAIRS), feature)


@pytest.mark.parametrize(("upstream", "feature"), sorted(KNOWN_UPSTREAM_GAPS))
def test_known_upstream_gaps_are_still_there(upstream: str, feature: str, direct_runs: Runs) -> None:
    """An exclusion from the per-agent mount comparison holds only while the upstream
    itself fails the feature; if an SDK update fixes it, this turns red: drop the exclusion."""
    for client, u in PAIRS:
        if u == upstream and compatible(client, u):
            outcome = direct_runs.get(client, upstream, "direct", PAIRS)
            result = outcome.features[feature]
            names = surface.naming("direct", surface.UPSTREAMS[upstream])
            assert result["ok"] and surface.problems(feature, result["value"], names, outcome.upstream, True), (
                f"{outcome.label()}: {feature} now passes directly; remove it from KNOWN_UPSTREAM_GAPS"
            )


@pytest.mark.parametrize(
    ("client", "upstream"),
    [pytest.param(c, u, id=f"{c}-{surface.UPSTREAMS[u].label}") for c, u in PAIRS if not compatible(c, u)],
)
def test_a_client_of_the_other_era_is_refused_directly(client: str, upstream: str, direct_runs: Runs) -> None:
    """Each upstream serves one era: a client that cannot fall back gets no session at all."""
    outcome = direct_runs.get(client, upstream, "direct", PAIRS)
    connected = {f: r for f, r in outcome.features.items() if r["ok"] or r.get("era")}
    assert not connected, f"{outcome.label()}: connected anyway: {connected}"


def _post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url, json=body, headers={"accept": "application/json, text/event-stream", **headers}, timeout=10)


def _sse_result(resp: httpx.Response) -> dict[str, Any]:
    text = resp.text
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip())
    parsed: dict[str, Any] = json.loads(text)
    return parsed


MODERN_META: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}


def test_the_v1_server_answers_no_2026_request(upstreams: dict[str, EventProcess]) -> None:
    """What the TypeScript SDK v1 (sessionful streamable HTTP) does with 2026-07-28: a
    ``server/discover`` has no session (400), ``initialize`` under a 2026 header is
    negotiated down to a 2025-11-25 session, and inside a session a 2026 header is 400."""
    url = upstreams["v1"].url
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": MODERN_META}}
    resp = _post(url, discover, **{"mcp-protocol-version": "2026-07-28", "mcp-method": "server/discover"})
    assert resp.status_code == 400, resp.text
    init = _post(url, INITIALIZE, **{"mcp-protocol-version": "2026-07-28"})
    assert init.status_code == 200 and _sse_result(init)["result"]["protocolVersion"] == "2025-11-25", init.text
    session = init.headers["mcp-session-id"]
    inside = _post(
        url,
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
        **{"mcp-session-id": session, "mcp-protocol-version": "2026-07-28"},
    )
    assert inside.status_code == 400 and "Unsupported protocol version" in inside.text, inside.text


def test_the_v2_server_refuses_2025(upstreams: dict[str, EventProcess]) -> None:
    """The TypeScript SDK v2 with ``legacy: 'reject'``: ``initialize`` is refused with
    -32022 naming the supported revisions; ``server/discover`` answers 2026-07-28."""
    url = upstreams["v2"].url
    init = {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": "2025-11-25"}}
    resp = _post(url, init)
    error = resp.json()["error"]
    assert resp.status_code == 400 and error["code"] == -32022, resp.text
    assert error["data"]["supported"] == ["2026-07-28"], resp.text
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": MODERN_META}}
    ok = _post(url, discover, **{"mcp-protocol-version": "2026-07-28", "mcp-method": "server/discover"})
    assert ok.status_code == 200 and "2026-07-28" in _sse_result(ok)["result"]["supportedVersions"], ok.text
