"""Replica choice inside one region: one small policy per module, chosen in settings.

A policy picks the replica a call goes to among a region's replicas (``pick``: skipping the
ones not admitted, without ranking the rest when it can) and ranks admitted replicas best
first (``rank``): the failover order, computed only when a first attempt failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edgefleet.dispatcher.routing.balancing import least_outstanding, p2c_ewma

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.replica import Replica

Policy = Callable[[Sequence["Replica"]], list["Replica"]]
Pick = Callable[[Sequence["Replica"]], "Replica | None"]

POLICIES: dict[str, Policy] = {
    "least-outstanding": least_outstanding.rank,
    "p2c-ewma": p2c_ewma.rank,
}
PICKS: dict[str, Pick] = {
    "least-outstanding": least_outstanding.pick,
    "p2c-ewma": p2c_ewma.pick,
}
