"""Leases on the shared rate budget (issue 19): a busy key asks Redis for its next lease
period of hits at once, never more than the budget holds, at most 1 % of the limit; a
quiet key or a small limit is counted call by call. Unit tests on a counted budget, then
two dispatchers' limiters on one real Redis."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet.dispatcher.security.rate_lease import Leases
from edgefleet.dispatcher.security.rate_limits import RateLimits
from edgefleet.shared.errors import RateLimited
from edgefleet.shared.settings import DispatcherSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Budget:
    """The shared count: all-or-nothing grants, as the moving-window script does."""

    def __init__(self, left: int, delay_s: float = 0.0) -> None:
        self.left = left
        self.granted = 0
        self.asks: list[int] = []
        self.delay_s = delay_s

    async def ask(self, amount: int) -> bool:
        self.asks.append(amount)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if amount > self.left:
            return False
        self.left -= amount
        self.granted += amount
        return True


async def _calls(leases: Leases, budget: Budget, n: int, limit: int, clock: Clock, every_s: float) -> int:
    admitted = 0
    for _ in range(n):
        admitted += await leases.take("k", limit, budget.ask)
        clock.now += every_s
    return admitted


async def test_a_small_limit_is_counted_call_by_call() -> None:
    clock, budget = Clock(), Budget(150)
    leases = Leases(0.1, clock)
    assert await _calls(leases, budget, 200, 150, clock, 0.001) == 150
    assert set(budget.asks) == {1} and len(budget.asks) == 200


async def test_leases_off_ask_for_every_call() -> None:
    clock, budget = Clock(), Budget(10_000)
    leases = Leases(0.0, clock)
    assert await _calls(leases, budget, 500, 10_000, clock, 0.001) == 500
    assert len(budget.asks) == 500


async def test_a_busy_key_asks_once_per_lease_and_never_beyond_one_percent() -> None:
    clock, budget = Clock(), Budget(1_000_000)
    leases = Leases(0.1, clock)
    assert await _calls(leases, budget, 3000, 50_000, clock, 0.001) == 3000  # 1000 calls/s for 3 s
    assert max(budget.asks) <= 50_000 // 100
    assert len(budget.asks) < 200  # first period call by call (100), then ~one ask per 100 ms
    assert budget.granted - 3000 <= 500  # what is leased and unused: at most one lease


async def test_the_lease_follows_the_keys_rate() -> None:
    clock, budget = Clock(), Budget(1_000_000)
    leases = Leases(0.1, clock)
    await _calls(leases, budget, 300, 1_000_000, clock, 0.001)  # 1000/s: leases of ~100
    fast = budget.asks[-1]
    await _calls(leases, budget, 30, 1_000_000, clock, 0.01)  # 100/s: leases of ~10
    slow = budget.asks[-1]
    assert 80 <= fast <= 120 and 5 <= slow <= 20


async def test_an_expired_lease_hands_out_nothing() -> None:
    clock, budget = Clock(), Budget(1_000_000)
    leases = Leases(0.1, clock)
    await _calls(leases, budget, 300, 1_000_000, clock, 0.001)
    asks = len(budget.asks)
    clock.now += 0.2  # the lease's hits are stale now
    assert await leases.take("k", 1_000_000, budget.ask)
    assert len(budget.asks) == asks + 1


async def test_a_refused_lease_still_gets_the_last_hits_one_by_one() -> None:
    clock, budget = Clock(), Budget(10_000)
    leases = Leases(0.1, clock)
    assert await _calls(leases, budget, 12_000, 20_000, clock, 0.0001) == 10_000
    assert budget.left == 0 and budget.granted == 10_000


async def test_concurrent_calls_share_one_request_in_flight() -> None:
    clock, budget = Clock(), Budget(1_000_000, delay_s=0.01)
    leases = Leases(0.1, clock)
    await _calls(leases, budget, 200, 1_000_000, clock, 0.001)  # the key is busy: leases of ~100
    clock.now += 0.2
    asks = len(budget.asks)
    results = await asyncio.gather(*(leases.take("k", 1_000_000, budget.ask) for _ in range(50)))
    assert all(results)
    assert len(budget.asks) - asks <= 2, "every waiting call asked Redis on its own"


async def _busy(leases: Leases, clock: Clock) -> None:
    """Make key "k" busy (leases of ~100 from now on) and let its lease lapse."""
    budget = Budget(1_000_000)
    await _calls(leases, budget, 200, 1_000_000, clock, 0.001)
    clock.now += 0.2


async def test_calls_waiting_on_a_failed_lease_request_fail_with_it() -> None:
    """Redis down: the calls that waited for the one lease request fail with it at once
    (the limiter lets them through), not one timeout after another."""
    clock = Clock()
    leases = Leases(0.1, clock)
    await _busy(leases, clock)
    asks = 0

    async def down(amount: int) -> bool:
        nonlocal asks
        asks += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("Redis down")

    results = await asyncio.gather(*(leases.take("k", 1_000_000, down) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert asks == 1


async def test_a_lease_slower_than_its_period_still_serves_the_calls_that_waited() -> None:
    clock = Clock()
    leases = Leases(0.1, clock)
    await _busy(leases, clock)
    budget = Budget(1_000_000)

    async def slow(amount: int) -> bool:
        clock.now += 0.15  # the answer takes longer than a lease period
        return await budget.ask(amount)

    results = await asyncio.gather(*(leases.take("k", 1_000_000, slow) for _ in range(20)))
    assert all(results)
    assert len(budget.asks) == 1 and budget.granted - 20 < budget.asks[0]


async def test_a_burst_on_a_quiet_key_asks_all_at_once_not_one_after_another() -> None:
    clock, budget = Clock(), Budget(1_000_000, delay_s=0.01)
    leases = Leases(0.1, clock)
    in_flight = peak = 0

    async def counted(amount: int) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await budget.ask(amount)
        finally:
            in_flight -= 1

    assert all(await asyncio.gather(*(leases.take("k", 1_000_000, counted) for _ in range(50))))
    assert peak == 50


async def test_an_error_reaches_the_caller_and_the_next_call_asks_again() -> None:
    clock = Clock()
    leases = Leases(0.1, clock)
    calls = 0

    async def broken(amount: int) -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionError("Redis down")

    with pytest.raises(ConnectionError):
        await leases.take("k", 1_000_000, broken)
    with pytest.raises(ConnectionError):
        await leases.take("k", 1_000_000, broken)
    assert calls == 2


@pytest.mark.integration
async def test_two_dispatchers_on_one_redis_never_exceed_the_budget(redis_url: str, redis_prefix: str) -> None:
    """Two limiters (two dispatchers) spend one 2,000/minute budget at full speed with
    leases (10 ms, so that they grow within the test): the budget holds, little of it is
    left unused, and Redis was asked far fewer times than calls were admitted."""
    settings = DispatcherSettings(
        redis_url=redis_url, redis_prefix=redis_prefix, rate_limit="2000/minute", rate_limit_lease_ms=10
    )
    first, second = RateLimits(settings), RateLimits(settings)
    asked: list[int] = []
    for limits in (first, second):
        assert limits.script is not None
        call = limits.script.call

        async def counted(keys: object, args: object, call: object = call) -> object:
            asked.append(1)
            return await call(keys, args)  # type: ignore[operator]

        limits.script.call = counted  # type: ignore[method-assign]

    async def spend(limits: RateLimits) -> int:
        admitted = 0
        for _ in range(1200):
            try:
                await limits.admit("alice", "echo.echo")
                admitted += 1
            except RateLimited:
                pass
        return admitted

    try:
        admitted = sum(await asyncio.gather(spend(first), spend(second)))
        assert admitted <= 2000
        # Leased and not used: one lease (1 % of the limit) per dispatcher when the calls
        # stop, and any that expired while this machine stalled.
        assert admitted >= 1800
        # Call by call in the first 10 ms, then leases of up to 20; the 400 refused calls
        # ask one hit each.
        assert len(asked) < admitted / 2
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_held_lease_answers_without_asking() -> None:
    clock, budget = Clock(), Budget(1_000_000)
    leases = Leases(0.1, clock)
    assert not leases.take_local("k", 1_000_000)  # nothing leased yet
    await _calls(leases, budget, 150, 1_000_000, clock, 0.001)  # busy: now leases of ~100
    assert await leases.take("k", 1_000_000, budget.ask)
    asks = len(budget.asks)
    assert leases.take_local("k", 1_000_000)
    assert len(budget.asks) == asks
    assert not leases.take_local("k", 150)  # a small limit is never served from a lease
    clock.now += 0.2
    assert not leases.take_local("k", 1_000_000)  # expired
