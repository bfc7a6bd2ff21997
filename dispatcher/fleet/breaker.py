"""Per-replica circuit breaker: passive outlier ejection that half-opens to retry.

closed     calls flow; consecutive failures or the error rate over a window open it;
           a refused connection (the replica is certainly down) opens it at once.
open       no calls for ``base_s * 2**(ejections-1)`` (capped at ``max_s``): a replica that
           keeps failing stays out longer, like Envoy's outlier detection.
half-open  after that time ONE trial at a time (the next call or active probe); its
           success closes the breaker, its failure opens it again for longer. Results of
           calls that started before the breaker opened do not count as verdicts.

Written here rather than taken from pybreaker/purgatory: those wrap a callable and keep
their own clocks and listeners, while this state is read on every routing decision
(a few attribute reads) and is fed by both calls and active probes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerPolicy:
    consecutive_failures: int = 2
    error_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 10.0
    base_s: float = 5.0
    max_s: float = 60.0


class CircuitBreaker:
    __slots__ = (
        "policy",
        "clock",
        "state",
        "consecutive",
        "ejections",
        "open_until",
        "trial_inflight",
        "window_start",
        "window_calls",
        "window_failures",
        "last_change",
    )

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.state = CLOSED
        self.consecutive = 0
        self.ejections = 0
        self.open_until = 0.0
        self.trial_inflight = False
        self.window_start = clock()
        self.window_calls = 0
        self.window_failures = 0
        self.last_change = self.window_start

    # -- routing -------------------------------------------------------------------------
    def admits(self) -> bool:
        """Could a call be sent now? (Reserves nothing: ``begin`` decides for real.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() < self.open_until:
                return False
            self._set(HALF_OPEN)
            self.trial_inflight = False
        return not self.trial_inflight

    def begin(self) -> bool | None:
        """A call or probe is about to be sent: None = refused (breaker open, or the one
        half-open trial is taken), else whether this attempt IS the trial. Pass that flag
        back to ``success``/``failure``/``release``."""
        if not self.admits():
            return None
        if self.state == HALF_OPEN:
            self.trial_inflight = True
            return True
        return False

    # -- outcomes ------------------------------------------------------------------------
    def success(self, trial: bool = False) -> bool:
        """Record a success; True when this closed the breaker (only the trial can)."""
        self.consecutive = 0
        self._count(failed=False)
        if not (trial and self.state == HALF_OPEN):
            # A call that started before the breaker opened proves nothing about now.
            return False
        self.ejections = 0
        self.trial_inflight = False
        self._set(CLOSED)
        return True

    def failure(self, *, decisive: bool = False, trial: bool = False) -> bool:
        """Record a failure; True when this opened the breaker."""
        self.consecutive += 1
        self._count(failed=True)
        if self.state == OPEN:
            return False
        if self.state == HALF_OPEN:
            if not trial:
                return False  # a straggler from before; the trial decides
            self._open()
            return True
        policy = self.policy
        if (
            decisive
            or self.consecutive >= policy.consecutive_failures
            or (self.window_calls >= policy.min_calls and self.window_failures / self.window_calls >= policy.error_rate)
        ):
            self._open()
            return True
        return False

    def release(self, trial: bool) -> None:
        """An attempt ended without a verdict (cancelled, or a slow tool's deadline)."""
        if trial:
            self.trial_inflight = False

    # -- internals -----------------------------------------------------------------------
    def _open(self) -> None:
        self.ejections += 1
        self.open_until = self.clock() + min(self.policy.base_s * 2 ** (self.ejections - 1), self.policy.max_s)
        self.trial_inflight = False
        self.window_calls = self.window_failures = 0
        self._set(OPEN)

    def _count(self, *, failed: bool) -> None:
        now = self.clock()
        if now - self.window_start > self.policy.window_s:
            self.window_start = now
            self.window_calls = self.window_failures = 0
        self.window_calls += 1
        if failed:
            self.window_failures += 1

    def _set(self, state: str) -> None:
        self.state = state
        self.last_change = self.clock()

    def snapshot(self) -> dict[str, object]:
        retry_in = max(0.0, self.open_until - self.clock()) if self.state == OPEN else 0.0
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive,
            "ejections": self.ejections,
            "retry_in_s": round(retry_in, 3),
        }
