"""Fixtures for the conformance tests: the pinned suite, the reference server, one direct
run per era (shared by every test of the session), and a real dispatcher fleet with the
reference server added as agent ``everything``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.support import conformance
from tests.support.conformance import ConformanceSetupError, ReferenceServer, Run, Suite
from tests.support.fleet import Fleet

ERAS = list(conformance.SELECTIONS)
T = TypeVar("T")
AGENT = "everything"


def _provide(what: str, make: Callable[[], T]) -> T:
    """``make()``, or a test failure that says how to provide ``what`` (never a skip)."""
    try:
        return make()
    except ConformanceSetupError as exc:
        problem = str(exc)
    pytest.fail(f"cannot provide {what}: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def suite() -> Suite:
    return _provide("the conformance suite", lambda: Suite(conformance.install_suite()))


@pytest.fixture(scope="session")
def reference_server() -> Iterator[ReferenceServer]:
    server = _provide(
        "the conformance reference server", lambda: ReferenceServer(conformance.install_reference_server()).start()
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def direct_run(suite: Suite, reference_server: ReferenceServer) -> Callable[[str], Run]:
    """``direct_run(era)``: the suite against the reference server itself, run once per era."""
    runs: dict[str, Run] = {}

    def get(era: str) -> Run:
        if era not in runs:
            runs[era] = suite.run(reference_server.url, era, label="direct")
        return runs[era]

    return get


@pytest.fixture(scope="module")
def reference_fleet(redis_url: str, reference_server: ReferenceServer) -> Iterator[Fleet]:
    """A dispatcher process with the unmodified reference server added as agent ``everything``."""
    fleet = Fleet(redis_url, f"eftest-conf-{uuid.uuid4().hex[:8]}")
    try:
        fleet.start_dispatcher()
        conformance.add_to_fleet(fleet, reference_server.url, AGENT)
        yield fleet
    finally:
        fleet.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if conformance.TIMINGS.entries:
        terminalreporter.section("conformance timings")
        for what, seconds in conformance.TIMINGS.entries:
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
