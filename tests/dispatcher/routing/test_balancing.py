from collections import Counter
from types import SimpleNamespace

from edgefleet.dispatcher.routing.balancing import POLICIES


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
