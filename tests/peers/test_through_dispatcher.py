"""The official clients, both eras, through a real dispatcher to a 2025-only and a 2026-only
upstream: ``/mcp`` (namespaced names) and ``/mcp/agents/<agent>`` (the agent's own names).
Issue 18 item 5; the strict xfails name the step of docs/design-mcp-surface.md section 3
that makes them pass (they turn red that day: remove the marker with the change)."""

from __future__ import annotations

import pytest

from tests.peers.conftest import PAIRS
from tests.peers.matrix import KNOWN_UPSTREAM_GAPS, assert_feature, case
from tests.support.peers import surface
from tests.support.peers.runs import Runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TARGETS = ("mcp", "mount")


MATRIX = [
    case(c, u, t, f)
    for t in TARGETS
    for c, u in PAIRS
    for f in surface.FEATURES
    if not (t == "mount" and (u, f) in KNOWN_UPSTREAM_GAPS)
]


@pytest.mark.parametrize(("client", "upstream", "target", "feature"), MATRIX)
def test_the_feature_works_through_the_dispatcher(
    client: str, upstream: str, target: str, feature: str, dispatcher_runs: Runs
) -> None:
    assert_feature(dispatcher_runs.get(client, upstream, target, PAIRS), feature)


@pytest.mark.parametrize(
    ("client", "upstream", "target"),
    [pytest.param(c, u, t, id=f"{c}-{surface.UPSTREAMS[u].label}-{t}") for t in TARGETS for c, u in PAIRS],
)
def test_no_request_hangs(client: str, upstream: str, target: str, dispatcher_runs: Runs) -> None:
    """Every request, server->client requests included, is answered or ends with an error
    within the call's deadline; none is left hanging."""
    outcome = dispatcher_runs.get(client, upstream, target, PAIRS)
    hung = {
        f: r["error"]["message"] for f, r in outcome.features.items() if not r["ok"] and r["error"]["type"] == "hang"
    }
    assert not hung, f"{outcome.label()}: hung: {hung}"
