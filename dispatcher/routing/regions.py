"""The region table: where each region is, and which regions are nearest to a caller.

Distance is turned into an estimated round-trip time so that it ranks on the same scale
as measured inter-region latency: light in fibre covers about 200 km per millisecond
one way, and real routes are roughly 1.5x the great circle, so RTT ~ 0.015 ms per km.
A measured latency (config file) always wins over the estimate for that pair.

Regions that replicas register with but that the table does not place (no coordinates)
rank after every placed region, by name, so routing stays deterministic (and callers
located IN such a region get the default order after it: see router.py).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("edgefleet.regions")

EARTH_RADIUS_KM = 6371.0
RTT_MS_PER_KM = 0.015

# Well-known region names (cloud-style) so a fleet using them needs no configuration.
BUILTIN_REGIONS: dict[str, tuple[float, float]] = {
    "eu-west": (53.35, -6.26),  # Dublin
    "eu-central": (50.11, 8.68),  # Frankfurt
    "eu-north": (59.33, 18.07),  # Stockholm
    "eu-south": (45.46, 9.19),  # Milan
    "us-east": (39.04, -77.49),  # Ashburn
    "us-central": (41.26, -95.86),  # Council Bluffs
    "us-west": (45.84, -119.70),  # Oregon
    "ca-central": (45.50, -73.57),  # Montreal
    "sa-east": (-23.55, -46.63),  # Sao Paulo
    "ap-southeast": (1.35, 103.82),  # Singapore
    "ap-northeast": (35.68, 139.69),  # Tokyo
    "ap-east": (22.32, 114.17),  # Hong Kong
    "ap-south": (19.08, 72.88),  # Mumbai
    "au-southeast": (-33.87, 151.21),  # Sydney
    "me-central": (25.20, 55.27),  # Dubai
    "af-south": (-33.92, 18.42),  # Cape Town
}


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class RegionSpec:
    name: str
    lat: float
    lon: float
    # Measured RTT in ms from this region to others (one direction is enough).
    latency_ms: Mapping[str, float] = field(default_factory=dict)


class RegionTable:
    """Orders regions by estimated or measured RTT; orders are cached (a handful of keys)."""

    def __init__(self, specs: Iterable[RegionSpec] = (), *, builtin: bool = True) -> None:
        self.coords: dict[str, tuple[float, float]] = dict(BUILTIN_REGIONS) if builtin else {}
        self.latency: dict[tuple[str, str], float] = {}
        for spec in specs:
            self.coords[spec.name] = (spec.lat, spec.lon)
            for other, ms in spec.latency_ms.items():
                self.latency[(spec.name, other)] = float(ms)
                self.latency.setdefault((other, spec.name), float(ms))
        self._from_region = functools.lru_cache(maxsize=1024)(self._order_from_region)
        self._from_point = functools.lru_cache(maxsize=4096)(self._order_from_point)

    def knows(self, region: str) -> bool:
        return region in self.coords

    def rtt_ms(self, a: str, b: str) -> float | None:
        if a == b:
            return 0.0
        measured = self.latency.get((a, b))
        if measured is not None:
            return measured
        if a in self.coords and b in self.coords:
            return great_circle_km(self.coords[a], self.coords[b]) * RTT_MS_PER_KM
        return None

    def order_from_region(self, origin: str, regions: frozenset[str]) -> tuple[str, ...]:
        """``regions`` nearest to ``origin`` first; ``origin`` itself first when present."""
        return self._from_region(origin, regions)

    def order_from_point(self, lat: float, lon: float, regions: frozenset[str]) -> tuple[str, ...]:
        """``regions`` nearest to a caller's coordinates first (rounded to ~10 km for caching)."""
        return self._from_point(round(lat, 1), round(lon, 1), regions)

    def _order_from_region(self, origin: str, regions: frozenset[str]) -> tuple[str, ...]:
        def key(region: str) -> tuple[int, float, str]:
            rtt = self.rtt_ms(origin, region)
            return (0, rtt, region) if rtt is not None else (1, 0.0, region)

        return tuple(sorted(regions, key=key))

    def _order_from_point(self, lat: float, lon: float, regions: frozenset[str]) -> tuple[str, ...]:
        def key(region: str) -> tuple[int, float, str]:
            where = self.coords.get(region)
            return (0, great_circle_km((lat, lon), where), region) if where else (1, 0.0, region)

        return tuple(sorted(regions, key=key))
