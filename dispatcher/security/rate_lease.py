"""Leases on a shared rate budget: a busy key asks Redis once for the next ~100 ms of its
calls instead of once per call.

Asking Redis for every call put a Redis round trip (a write, a wake-up, a read) on every
call's critical path (issue 19). A ``Leases`` asks for several hits at once for a key that
is busy (the moving-window script takes an ``amount``, all or nothing) and hands them out
locally until they run out or the lease expires; a key that is not busy asks for one hit
per call, as before.

What this keeps and what it trades, per dispatcher and key:

- **Redis never counts more than the budget.** Every hit handed out was counted in Redis
  first, with every other dispatcher's. Calls themselves can run a little later than their
  hits were counted: across a window's edge, the calls admitted in one window can exceed
  the limit by the hits that were held then (at most one lease, 1 % of the limit, per
  dispatcher).
- **Sizes follow the key's own rate:** a lease asks for the hits the key used in the last
  lease period, at least 1, at most 1 % of the limit (``max(1, amount // 100)``). A limit
  under 200 per window is therefore counted call by call, exactly as without leases.
- **A leased hit counts from when it was leased,** up to one lease period (``lease_s``,
  default 0.1 s, counted from when the lease arrived) before the call it admits, so its slot
  frees up to that much earlier.
- **Hits leased and not used are spent** (at most one lease per key per period, when the
  key's calls stop): a caller near the limit can be refused up to 1 % of it early.
- A lease that Redis refuses is not the last word: the call asks for one hit on its own,
  so a key with a few hits left still gets them.
- At most one lease request per key is in flight; calls arriving meanwhile wait for it once,
  then ask on their own if it did not cover them, and fail with it if Redis failed it.

``lease_s`` 0 turns leases off (``EDGEFLEET_RATE_LIMIT_LEASE_MS=0``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable

# Asks the shared budget for ``amount`` hits at once: True if all were granted.
Ask = Callable[[int], Awaitable[bool]]

MAX_SHARE = 100  # a lease is at most 1/MAX_SHARE of the limit
MAX_KEYS = 10_000  # leases kept; past this the idle ones are dropped


class _Lease:
    __slots__ = ("tokens", "expires", "used", "period_start", "size", "asking")

    def __init__(self, now: float) -> None:
        self.tokens = 0  # hits counted in Redis and not handed out yet
        self.expires = 0.0
        self.used = 0  # hits handed out since period_start
        self.period_start = now
        self.size = 1  # hits the next lease asks for
        # A lease request in flight; its result is the exception it failed with, if any.
        self.asking: asyncio.Future[Exception | None] | None = None


class Leases:
    def __init__(self, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self.clock = clock
        self._leases: dict[Hashable, _Lease] = {}

    def take_local(self, key: Hashable, limit: int) -> bool:
        """A hit from a lease this dispatcher holds, without asking anyone: False when there
        is none (then ``take``)."""
        lease = self._leases.get(key)
        return lease is not None and limit >= 2 * MAX_SHARE and self._spend(lease, self.clock())

    async def take(self, key: Hashable, limit: int, ask: Ask) -> bool:
        """One hit of ``key``'s budget (``limit`` per window): True if granted. Redis errors
        propagate (the caller decides what a failure means)."""
        if self.lease_s <= 0 or limit < 2 * MAX_SHARE:
            return await ask(1)
        lease = self._leases.get(key)
        now = self.clock()
        if lease is None:
            if len(self._leases) >= MAX_KEYS:
                self._forget_idle(now)
            lease = self._leases[key] = _Lease(now)
        if self._spend(lease, now):
            return True
        if lease.asking is not None:
            # Another call of this key is asking for a lease: it may cover this call too.
            # Waited for once; then this call asks on its own, alongside the others (a
            # queue of calls each waiting for the one before would add their round trips).
            failure = await asyncio.shield(lease.asking)
            if failure is not None:
                raise failure  # Redis failed that request: fail with it, not one timeout later
            return self._spend(lease, self.clock()) or await self._one(lease, ask)
        if now - lease.period_start >= self.lease_s:
            # The next lease asks for what the last period used (this call included).
            lease.size = max(1, min(lease.used + 1, limit // MAX_SHARE))
            lease.used = 0
            lease.period_start = now
        if lease.size <= 1:
            return await self._one(lease, ask)  # not busy: one hit, no one waits for it
        return await self._renew(lease, ask)

    @staticmethod
    def _spend(lease: _Lease, now: float) -> bool:
        """One of the lease's hits, if it holds one still fresh."""
        if not lease.tokens or now >= lease.expires:
            return False
        lease.tokens -= 1
        lease.used += 1
        return True

    @staticmethod
    async def _one(lease: _Lease, ask: Ask) -> bool:
        granted = await ask(1)
        if granted:
            lease.used += 1
        return granted

    async def _renew(self, lease: _Lease, ask: Ask) -> bool:
        size = lease.size
        lease.asking = asyncio.get_running_loop().create_future()
        failure: Exception | None = None
        try:
            granted = await ask(size)
            if not granted:
                # The budget is nearly spent: from now on this key asks one hit at a time
                # (a refused call costs one request, as without leases).
                lease.size = 1
                size, granted = 1, await ask(1)
            if granted:
                lease.tokens = size - 1
                # From when the hits arrived: a slow answer must not leave them stale on arrival.
                lease.expires = self.clock() + self.lease_s
                lease.used += 1
            return granted
        except Exception as exc:
            failure = exc
            raise
        finally:
            asking, lease.asking = lease.asking, None
            asking.set_result(failure)  # a cancelled request wakes the waiters with None: they ask on their own

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, lease in self._leases.items() if lease.asking is None and now >= lease.expires]:
            del self._leases[key]


__all__ = ["Leases"]
