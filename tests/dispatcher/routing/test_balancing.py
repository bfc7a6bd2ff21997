from collections import Counter
from types import SimpleNamespace

from edgefleet.dispatcher.routing.balancing import PICKS, POLICIES


def rep(name: str, inflight: int = 0, ewma: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(id=name, inflight=inflight, latency_ewma_ms=ewma)


def test_least_outstanding_prefers_idle_and_spreads_ties() -> None:
    rank = POLICIES["least-outstanding"]
    busy, idle = rep("busy", inflight=3), rep("idle")
    assert rank([busy, idle])[0] is idle  # type: ignore[list-item]
    a, b = rep("a"), rep("b")
    firsts = Counter(rank([a, b])[0].id for _ in range(400))  # type: ignore[list-item]
    assert set(firsts) == {"a", "b"} and min(firsts.values()) > 100


def test_p2c_ewma_sends_most_calls_to_the_fast_replica_and_keeps_a_failover_order() -> None:
    rank = POLICIES["p2c-ewma"]
    fast, slow, slower = rep("fast", ewma=1.0), rep("slow", ewma=20.0), rep("slower", ewma=50.0)
    firsts = Counter()
    for _ in range(600):
        ranked = rank([fast, slow, slower])  # type: ignore[list-item]
        assert sorted(r.id for r in ranked) == ["fast", "slow", "slower"]
        firsts[ranked[0].id] += 1
    # The slowest can never win a pair; the fastest wins every pair it is drawn in (2/3).
    assert firsts["slower"] == 0 and firsts["fast"] > 300


def test_p2c_ewma_prices_unmeasured_replicas_at_the_median_not_at_zero() -> None:
    rank = POLICIES["p2c-ewma"]
    new_but_swamped = rep("new", inflight=20, ewma=0.0)
    measured = [rep("m1", ewma=2.0), rep("m2", ewma=3.0)]
    firsts = Counter(rank([new_but_swamped, *measured])[0].id for _ in range(300))  # type: ignore[list-item]
    assert firsts["new"] == 0


def test_p2c_ewma_weighs_latency_by_load() -> None:
    rank = POLICIES["p2c-ewma"]
    fast_but_busy, slow_but_idle = rep("busy", inflight=9, ewma=2.0), rep("idle", inflight=0, ewma=5.0)
    assert rank([fast_but_busy, slow_but_idle])[0].id == "idle"  # type: ignore[list-item]


def test_a_single_replica_is_returned_as_is() -> None:
    only = rep("only")
    for rank in POLICIES.values():
        assert rank([only]) == [only]  # type: ignore[list-item]
        assert rank([]) == []


def live(
    name: str, inflight: int = 0, ewma: float = 0.0, *, admitted: bool = True, seen: list[str] | None = None
) -> SimpleNamespace:
    def admits() -> bool:
        if seen is not None:
            seen.append(name)
        return admitted

    return SimpleNamespace(id=name, inflight=inflight, latency_ewma_ms=ewma, admits=admits)


def test_p2c_pick_looks_at_two_replicas_whatever_the_fleet_size() -> None:
    """Issue 19: the call path ranked every replica of the agent per call (+85 % of dispatcher
    CPU per call with 499 replicas against 9)."""
    seen: list[str] = []
    fleet = [live(f"r{i}", ewma=1.0 + i % 7, seen=seen) for i in range(500)]
    for _ in range(200):
        seen.clear()
        assert PICKS["p2c-ewma"](fleet) is not None  # type: ignore[arg-type]
        assert len(seen) == 2


def test_p2c_pick_prefers_the_cheaper_of_its_pair_and_skips_the_unadmitted() -> None:
    pick = PICKS["p2c-ewma"]
    fast, slow = live("fast", ewma=1.0), live("slow", ewma=50.0)
    assert all(pick([fast, slow]) is fast for _ in range(50))  # type: ignore[list-item]
    ejected = [live(f"x{i}", admitted=False) for i in range(40)]
    assert all(pick([*ejected, slow]) is slow for _ in range(50))  # type: ignore[list-item]
    assert pick(ejected) is None and pick([]) is None  # type: ignore[arg-type]
    busy_new, measured = live("new", inflight=20), live("m", ewma=2.0)
    assert all(pick([busy_new, measured]) is measured for _ in range(50))  # type: ignore[list-item]


def test_least_outstanding_pick_takes_the_idlest_admitted_replica() -> None:
    pick = PICKS["least-outstanding"]
    idle_but_ejected = live("e", admitted=False)
    busy, idle = live("busy", inflight=3), live("idle", inflight=1)
    assert pick([idle_but_ejected, busy, idle]) is idle  # type: ignore[list-item]
    a, b = live("a"), live("b")
    firsts = Counter(pick([a, b]).id for _ in range(400))  # type: ignore[union-attr, list-item]
    assert set(firsts) == {"a", "b"} and min(firsts.values()) > 100
