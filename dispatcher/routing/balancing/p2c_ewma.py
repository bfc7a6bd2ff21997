"""Power of two choices over a latency EWMA (Finagle/Linkerd "peak EWMA" cost).

Cost of a replica = EWMA of its response latency x (calls in flight + 1). Two replicas
drawn at random, the cheaper one wins: O(1) per call, no herd on one "best" replica
(as a global argmin would cause between dispatchers), and slow replicas shed load on
their own. A replica not measured yet is priced at the median of its measured peers
(so it gets tried, without attracting every call while its first answers are pending).
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
