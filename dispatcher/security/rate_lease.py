"""Leases on a shared rate budget: a busy key asks Redis once for the next ~100 ms of its
calls instead of once per call.

Asking Redis for every call put a Redis round trip (a write, a wake-up, a read) on every
call's critical path (issue 19). A ``Leases`` asks for several hits at once for a key that
is busy (the moving-window script takes an ``amount``, all or nothing) and hands them out
locally until they run out or the lease expires; a key that is not busy asks for one hit
per call, as before.

What this keeps and what it trades, per dispatcher and key:

- **The budget is never exceeded.** Every hit handed out was counted in Redis first, with
  every other dispatcher's, in the same window.
- **Sizes follow the key's own rate:** a lease asks for the hits the key used in the last
  lease period, at least 1, at most 1 % of the limit (``max(1, amount // 100)``). A limit
  under 200 per window is therefore counted call by call, exactly as without leases.
- **A leased hit counts from when it was leased,** up to one lease period (``lease_s``,
  default 0.1 s) before the call it admits, so its slot frees up to that much earlier.
- **Hits leased and not used are spent** (at most one lease per key per period, when the
  key's calls stop): a caller near the limit can be refused up to 1 % of it early.
- A lease that Redis refuses is not the last word: the call asks for one hit on its own,
  so a key with a few hits left still gets them.

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
        self.asking: asyncio.Future[None] | None = None  # a lease request in flight


class Leases:
    def __init__(self, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self.clock = clock
        self._leases: dict[Hashable, _Lease] = {}

    def take_local(self, key: Hashable, limit: int) -> bool:
        """A hit from a lease this dispatcher holds, without asking anyone: False when there
        is none (then ``take``)."""
        lease = self._leases.get(key)
        if lease is None or not lease.tokens or limit < 2 * MAX_SHARE or self.clock() >= lease.expires:
            return False
        lease.tokens -= 1
        lease.used += 1
        return True

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
        while True:
            if lease.tokens and now < lease.expires:
                lease.tokens -= 1
                lease.used += 1
                return True
            if lease.asking is None:
                return await self._renew(lease, limit, now, ask)
            # Another call of this key is asking already: its lease may cover this call too.
            await asyncio.shield(lease.asking)
            now = self.clock()

    async def _renew(self, lease: _Lease, limit: int, now: float, ask: Ask) -> bool:
        if now - lease.period_start >= self.lease_s:
            # The next lease asks for what the last period used (this call included).
            lease.size = max(1, min(lease.used + 1, limit // MAX_SHARE))
            lease.used = 0
            lease.period_start = now
        size = lease.size
        lease.asking = asyncio.get_running_loop().create_future()
        try:
            granted = await ask(size)
            if not granted and size > 1:
                # The budget is nearly spent: from now on this key asks one hit at a time
                # (a refused call costs one request, as without leases).
                lease.size = 1
                size, granted = 1, await ask(1)
            if granted:
                lease.tokens = size - 1
                lease.expires = now + self.lease_s
                lease.used += 1
            return granted
        finally:
            asking, lease.asking = lease.asking, None
            asking.set_result(None)

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, lease in self._leases.items() if lease.asking is None and now >= lease.expires]:
            del self._leases[key]


__all__ = ["Leases"]
