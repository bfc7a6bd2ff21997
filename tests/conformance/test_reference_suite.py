"""The official MCP conformance suite (pinned) against its reference server: directly, and
through a real dispatcher process (issue 18). The rule: a check that passes directly must
pass through the dispatcher; a failure names the scenario and the check."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conformance.conftest import AGENT, ERAS
from tests.support import conformance
from tests.support.conformance import Run, Suite
from tests.support.fleet import Fleet

# Cold: two npm installs (~20 s here) + the runs; warm: the runs take seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.mark.parametrize("era", ERAS)
def test_the_reference_server_passes_directly(era: str, direct_run: Callable[[str], Run], suite: Suite) -> None:
    """Guards the baseline: every check on 2025-11-25; every scenario 2026-07-28 requires,
    except the reference server's own known gap (tools/call results over SSE without
    resultType, shared/conformance/README.md). A suite or server update that moves the
    baseline shows up here, not as a mystery in the dispatcher comparison."""
    run = direct_run(era)
    if era == conformance.LEGACY_ERA:
        failing = run.failures()
    else:
        required = suite.scored(era)
        missing = sorted(required - set(run.results))
        assert not missing, f"required {era} scenarios that did not run: {missing}"
        failing = [f for f in run.failures(required) if not conformance.is_known_reference_gap(*f)]
    assert not failing, "directly against the reference server:\n" + "\n".join(
        f"{s} / {c}: {k.message[:300]}" for s, c, k in failing
    )


@pytest.mark.parametrize("era", ERAS)
def test_the_suite_passes_through_the_per_agent_mount(
    era: str, direct_run: Callable[[str], Run], suite: Suite, reference_fleet: Fleet
) -> None:
    """The reference server's own names at ``/mcp/agents/everything``: everything that
    passes directly passes here, subscriptions included (2025 ``resources/subscribe`` through
    the session of the client's capability set, 2026 ``subscriptions/listen`` relayed from the
    agent's NDJSON as SSE)."""
    through = suite.run(f"{reference_fleet.url}/mcp/agents/{AGENT}", era, label=f"through /mcp/agents/{AGENT}")
    conformance.assert_no_regressions(direct_run(era), through)
