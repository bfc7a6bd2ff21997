"""Least outstanding requests: the replica with the fewest calls in flight from this
dispatcher; ties broken at random so equal replicas share the load."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.replica import Replica


def rank(replicas: Sequence[Replica]) -> list[Replica]:
    if len(replicas) <= 1:
        return list(replicas)
    return sorted(replicas, key=lambda r: (r.inflight, random.random()))


def pick(replicas: Sequence[Replica]) -> Replica | None:
    """The admitted replica with the fewest calls in flight (ties at random), in one pass."""
    best: Replica | None = None
    best_key = (0, 0.0)
    for replica in replicas:
        if replica.admits():
            key = (replica.inflight, random.random())
            if best is None or key < best_key:
                best, best_key = replica, key
    return best
