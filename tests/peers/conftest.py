"""Fixtures for the peer tests: Node 22 and the official TypeScript SDKs (installed once into
the conformance cache), the two upstreams (started once per session), a real dispatcher
with both added as static agents, and the client runs (computed a target at a time)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.support import conformance
from tests.support.conformance import ConformanceSetupError
from tests.support.fleet import Fleet
from tests.support.peers import node, surface
from tests.support.peers.processes import EventProcess
from tests.support.peers.runs import CALL_DEADLINE_S, Runs
from tests.support.peers.surface import UpstreamKind

T = TypeVar("T")
# Every (client, upstream) pair, run against each target.
PAIRS = [(c, u) for c in surface.CLIENTS for u in surface.UPSTREAMS]


def _provide(what: str, make: Callable[[], T]) -> T:
    """``make()``, or a test failure saying how to provide ``what`` (never a skip)."""
    try:
        return make()
    except ConformanceSetupError as exc:
        problem = str(exc)
    pytest.fail(f"cannot provide {what}: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def peer_install() -> node.NodeInstall:
    return _provide("Node 22 and the MCP TypeScript SDKs", node.install)


@pytest.fixture(scope="session")
def upstreams(peer_install: node.NodeInstall) -> Iterator[dict[str, EventProcess]]:
    started: dict[str, EventProcess] = {}
    try:
        for key, kind in surface.UPSTREAMS.items():
            started[key] = _provide(kind.label, node.upstream(peer_install, kind.script, kind.agent).start)
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


@pytest.fixture(scope="session")
def peer_fleet(redis_url: str, upstreams: dict[str, EventProcess]) -> Iterator[Fleet]:
    """A dispatcher with both unmodified upstreams added as static agents (``peer-v1``,
    ``peer-v2``), with a short call deadline so a hang shows within a test's time."""
    fleet = Fleet(redis_url, f"eftest-peers-{uuid.uuid4().hex[:8]}")
    try:
        fleet.start_dispatcher(call_timeout_s=CALL_DEADLINE_S)
        for key, kind in surface.UPSTREAMS.items():
            conformance.add_to_fleet(fleet, upstreams[key].url, kind.agent)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="session")
def direct_runs(peer_install: node.NodeInstall, upstreams: dict[str, EventProcess]) -> Runs:
    def url_for(target: str, upstream: UpstreamKind) -> str:
        assert target == "direct"
        return upstreams[upstream.key].url

    return Runs(peer_install, upstreams, url_for)


@pytest.fixture(scope="session")
def dispatcher_runs(peer_install: node.NodeInstall, upstreams: dict[str, EventProcess], peer_fleet: Fleet) -> Runs:
    def url_for(target: str, upstream: UpstreamKind) -> str:
        return peer_fleet.mcp_url if target == "mcp" else f"{peer_fleet.mcp_url}/agents/{upstream.agent}"

    return Runs(peer_install, upstreams, url_for)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    peers = [(w, s) for w, s in conformance.TIMINGS.entries if "peer" in w.lower() or "SDKs" in w]
    if peers:
        terminalreporter.section("peer test timings")
        for what, seconds in peers:
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
