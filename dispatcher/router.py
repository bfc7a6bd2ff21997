"""Replica choice for one call: own region first, then least outstanding requests.

A small policy on purpose; nearest-region routing by caller location and health-aware
failover ordering build on the same ``candidates`` contract (ordered, best first).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.catalog import ToolEntry
    from dispatcher.fleet import Replica


def candidates(entry: ToolEntry, region: str) -> list[Replica]:
    """Routable replicas for ``entry``, best first."""
    live = [r for r in entry.replicas if r.routable]
    if len(live) <= 1:
        return live
    # random() breaks ties so equal replicas share load instead of the first taking all.
    return sorted(live, key=lambda r: (r.record.region != region, r.inflight, random.random()))
