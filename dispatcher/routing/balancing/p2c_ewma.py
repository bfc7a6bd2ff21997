"""Power of two choices over a latency EWMA (Finagle/Linkerd "peak EWMA" cost).

Cost of a replica = EWMA of its response latency x (calls in flight + 1). Two replicas
drawn at random, the cheaper one wins: O(1) per call, no herd on one "best" replica
(as a global argmin would cause between dispatchers), and slow replicas shed load on
their own. A replica not measured yet is priced at the median of its measured peers
(so it gets tried, without attracting every call while its first answers are pending).

``pick`` is the call path's choice: two admitted replicas drawn at random, without looking
at the others (O(1) whatever the fleet's size; an unmeasured one is priced like the other of
the pair). ``rank`` orders them all, for failover, and runs only when a first attempt failed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.replica import Replica


def rank(replicas: Sequence[Replica]) -> list[Replica]:
    n = len(replicas)
    if n <= 1:
        return list(replicas)
    measured = sorted(r.latency_ewma_ms for r in replicas if r.latency_ewma_ms > 0)
    prior = measured[len(measured) // 2] if measured else 1.0

    def cost(replica: Replica) -> float:
        return (replica.latency_ewma_ms or prior) * (replica.inflight + 1)

    a, b = random.sample(range(n), 2)
    first = replicas[a] if cost(replicas[a]) <= cost(replicas[b]) else replicas[b]
    rest = sorted((r for r in replicas if r is not first), key=cost)
    return [first, *rest]


# Draws before ``pick`` gives up on sampling and filters the whole list (most replicas ejected).
PICK_DRAWS = 4


def pick(replicas: Sequence[Replica]) -> Replica | None:
    """The better of two admitted replicas drawn at random; None if none is admitted."""
    n = len(replicas)
    if n <= 2:
        admitted = [r for r in replicas if r.admits()]
        return _better(*admitted) if len(admitted) == 2 else (admitted[0] if admitted else None)
    for _ in range(PICK_DRAWS):
        a = random.randrange(n)
        b = random.randrange(n - 1)
        if b >= a:
            b += 1  # two distinct indices
        first, second = replicas[a], replicas[b]
        if first.admits():
            return _better(first, second) if second.admits() else first
        if second.admits():
            return second
    admitted = [r for r in replicas if r.admits()]
    return rank(admitted)[0] if admitted else None


def _better(a: Replica, b: Replica) -> Replica:
    prior = a.latency_ewma_ms or b.latency_ewma_ms or 1.0
    cost_a = (a.latency_ewma_ms or prior) * (a.inflight + 1)
    cost_b = (b.latency_ewma_ms or prior) * (b.inflight + 1)
    return a if cost_a <= cost_b else b
