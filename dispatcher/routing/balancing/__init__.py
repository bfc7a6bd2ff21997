"""Replica choice inside one region: one small policy per module, chosen in settings.

A policy ranks the admitted replicas of a region best first; the router tries them in
that order (the rest are the failover order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edgefleet.dispatcher.routing.balancing import least_outstanding, p2c_ewma

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.replica import Replica

Policy = Callable[[Sequence["Replica"]], list["Replica"]]

POLICIES: dict[str, Policy] = {
    "least-outstanding": least_outstanding.rank,
    "p2c-ewma": p2c_ewma.rank,
}
