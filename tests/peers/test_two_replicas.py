"""Multi-round calls across two dispatcher replicas: a load balancer (split_proxy) sends every
client *answer* (a 2025 JSON-RPC response to a server->client request, a 2026 retry with
inputResponses/requestState) to replica B and everything else to replica A, so each round
crosses replicas (issue 18: "the round may land on another dispatcher replica: make it work
there too"; docs/design-mcp-surface.md D6-D9)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.peers.conftest import _provide
from tests.peers.matrix import assert_feature, case
from tests.support import conformance
from tests.support.fleet import ROOT, Fleet
from tests.support.peers import surface
from tests.support.peers.node import NodeInstall
from tests.support.peers.processes import EventProcess
from tests.support.peers.runs import CALL_DEADLINE_S, Runs
from tests.support.peers.surface import UpstreamKind

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLIENTS = ("py-legacy", "py-auto", "ts-legacy", "ts-pin")
FEATURES = ("call", "sampling", "elicitation")
PAIRS = [(c, u) for c in CLIENTS for u in surface.UPSTREAMS]


@pytest.fixture(scope="module")
def split(redis_url: str, upstreams: dict[str, EventProcess]) -> Iterator[EventProcess]:
    """Two dispatchers on one registry with both upstreams, behind the split proxy."""
    fleet = Fleet(redis_url, f"eftest-split-{uuid.uuid4().hex[:8]}")
    proxy: EventProcess | None = None
    try:
        # One fleet behind one URL shares its requestState keys (a round sealed on A opens on B).
        keys = "peer-test-request-state-key-" + "x" * 32
        a = fleet.start_dispatcher(call_timeout_s=CALL_DEADLINE_S, request_state_keys=keys)
        b = fleet.start_dispatcher(call_timeout_s=CALL_DEADLINE_S, request_state_keys=keys)
        for key, kind in surface.UPSTREAMS.items():
            conformance.add_to_fleet(fleet, upstreams[key].url, kind.agent)
        agents = {kind.agent for kind in surface.UPSTREAMS.values()}
        fleet.wait_for(
            lambda: agents <= {x["name"] for x in fleet.agents_view(b) if any(r["routable"] for r in x["replicas"])},
            "replica B routes to both upstreams",
        )
        command = [sys.executable, "-m", "tests.support.peers.split_proxy", a, b]
        proxy = _provide("the split proxy", EventProcess(command, ROOT, "split-proxy", prefix="SPLIT").start)
        yield proxy
    finally:
        if proxy is not None:
            proxy.stop()
        fleet.stop()


@pytest.fixture(scope="module")
def split_runs(peer_install: NodeInstall, upstreams: dict[str, EventProcess], split: EventProcess) -> Runs:
    def url_for(target: str, upstream: UpstreamKind) -> str:
        assert target == "mcp"
        return split.url

    return Runs(peer_install, upstreams, url_for, features=FEATURES)


@pytest.mark.parametrize(
    ("client", "upstream", "feature"), [case(c, u, "mcp", f, in_id=False) for c, u in PAIRS for f in FEATURES]
)
def test_a_round_answered_on_the_other_replica(client: str, upstream: str, feature: str, split_runs: Runs) -> None:
    assert_feature(split_runs.get(client, upstream, "mcp", PAIRS), feature)


def test_the_answers_really_went_to_the_other_replica(split_runs: Runs, split: EventProcess) -> None:
    """The split is not vacuous: with the runs done, some answers reached replica B."""
    for client, upstream in PAIRS:
        split_runs.get(client, upstream, "mcp", PAIRS)
    routed = [e for e in split.events() if e.get("event") == "routed"]
    assert any(e["to"] == "a" for e in routed), routed[:20]
    assert any(e["to"] == "b" and e["method"] == "POST" for e in routed), f"no answer reached replica B: {routed[:40]}"
