"""Routing: nearest healthy region for the caller, then the best replica in it, then the
failover order (next replica, then next-nearest region).

``order`` runs once per call and is a few cache hits: the caller's address (trusted
proxies only), its location (network table / private mmdb / GeoIP City, cached per
address) and the region order for that location (cached per region or ~10 km cell).
``candidates`` then walks the tool's replicas region by region, asking each replica's
circuit breaker whether it admits a call and the configured policy how to rank them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.dispatcher.routing.balancing import PICKS, POLICIES
from edgefleet.dispatcher.routing.caller import TrustedProxies, client_address
from edgefleet.dispatcher.routing.geolocate import Location, Locator
from edgefleet.dispatcher.routing.regions import RegionSpec, RegionTable
from edgefleet.shared.constants import HEADER_REGION_HINT, REGION_NAME_RE
from edgefleet.shared.errors import InvalidRequest

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.fleet.replica import Replica
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.router")


@dataclass(frozen=True, slots=True)
class RouteOrder:
    regions: tuple[str, ...]  # nearest first
    caller_region: str | None  # where the caller is (or is nearest to); None = unknown
    reason: str  # network | private-db | geoip | hint | default
    address: str | None
    # Served in these regions and nowhere else: the caller asked (X-Edge-Region: ...;only), or
    # its identity is bound to regions (``Router.restricted``). Every path honours it.
    only: bool = False
    # A replica asked for by id, tried first while it is admitted: the one that minted the
    # requestState an input_required retry carries (servers may only accept their own).
    affinity: str | None = None


class Router:
    def __init__(self, settings: DispatcherSettings, regions: list[RegionSpec]) -> None:
        self.own_region = settings.region
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.forwarded_header = settings.forwarded_header
        self.locator = Locator(
            networks=settings.region_networks, private_db=settings.geoip_private_db, city_db=settings.geoip_city_db
        )
        self.table = RegionTable(regions)
        self.rank = POLICIES[settings.replica_policy]
        self.pick = PICKS[settings.replica_policy]
        self.default_order = tuple(settings.region_order)
        self.allow_hint = settings.region_hint

    def close(self) -> None:
        self.locator.close()

    def order(
        self, peer: str | None, headers: dict[str, str], fleet_regions: frozenset[str], allowed: tuple[str, ...] = ()
    ) -> RouteOrder:
        """The regions a caller's request tries, nearest first; ``allowed`` (a caller bound to
        regions) keeps only those, whatever the caller's location says; a hint may narrow them further,
        never widen them (``restricted``)."""
        address = client_address(peer, headers, self.trusted, self.forwarded_header)
        location = self.locator.locate(address)
        order = self._geo_order(location, fleet_regions)
        hint = headers.get(HEADER_REGION_HINT) if self.allow_hint else None
        if hint:
            order = self._hinted(hint, order, fleet_regions)
        return self.restricted(order, allowed)

    def _geo_order(self, location: Location, fleet_regions: frozenset[str]) -> RouteOrder:
        if location.region is not None:
            if self.table.knows(location.region):
                regions = self.table.order_from_region(location.region, fleet_regions | {location.region})
            else:
                # A region the table cannot place (no coordinates in the config file): its own
                # replicas first, then the default order rather than an alphabetical one.
                rest = self._default_regions(fleet_regions - {location.region})
                regions = (location.region, *rest)
            return RouteOrder(regions, location.region, location.source, location.address)
        if location.point is not None:
            regions = self.table.order_from_point(*location.point, fleet_regions)
            return RouteOrder(regions, regions[0] if regions else None, location.source, location.address)
        return RouteOrder(self._default_regions(fleet_regions), None, "default", location.address)

    def _default_regions(self, fleet_regions: frozenset[str]) -> tuple[str, ...]:
        if self.default_order:
            rest = self.table.order_from_region(self.default_order[0], fleet_regions - set(self.default_order))
            return (*self.default_order, *rest)
        return self.table.order_from_region(self.own_region, fleet_regions)

    def _hinted(self, hint: str, order: RouteOrder, fleet_regions: frozenset[str]) -> RouteOrder:
        """``X-Edge-Region: a,b`` puts a then b first; ``a,b;only`` routes to those alone."""
        value, _, flag = hint.partition(";")
        wanted = [r.strip() for r in value.split(",") if r.strip()]
        only = flag.strip().lower() == "only"
        for region in wanted:
            if not REGION_NAME_RE.match(region) or not (region in fleet_regions or self.table.knows(region)):
                raise InvalidRequest(
                    f"{HEADER_REGION_HINT}: unknown region {region!r}",
                    data={"known_regions": sorted(fleet_regions)},
                )
        if flag.strip() and not only:
            raise InvalidRequest(f"{HEADER_REGION_HINT}: unknown flag {flag.strip()!r} (only ';only' is defined)")
        regions = tuple(dict.fromkeys(wanted)) if only else tuple(dict.fromkeys((*wanted, *order.regions)))
        return RouteOrder(regions, order.caller_region, "hint", order.address, only=only)

    @staticmethod
    def restricted(order: RouteOrder, regions: Collection[str]) -> RouteOrder:
        """``order`` narrowed to ``regions`` (an identity bound to regions is served only
        there), nearest first; regions the order did not list (not in the fleet yet) stay
        allowed, after the others. An order already limited by the caller (``;only``) is
        never widened: its intersection may be empty, and then no replica qualifies."""
        if not regions:
            return order
        allowed = tuple(r for r in order.regions if r in regions)
        if not order.only:
            allowed += tuple(r for r in dict.fromkeys(regions) if r not in allowed)
        return dataclasses.replace(order, regions=allowed, only=True)

    def candidates(self, entry: ToolEntry, order: RouteOrder) -> Iterator[Replica]:
        """Admitted replicas of ``entry``, lazily: nearest region first, the policy's pick in
        each region, then the rest of the region ranked; for an order that is ``only`` some
        regions, replicas in those regions alone. A call that succeeds at once draws one
        replica and ranks nothing: the cost does not grow with the agent's replicas."""
        by_region = entry.by_region
        if len(by_region) == 1 and not order.only:
            groups = list(by_region.values())  # one region (a small fleet), no restriction
        else:
            groups = [group for group in (by_region.get(region) for region in order.regions) if group]
        preferred: Replica | None = None
        if order.affinity is not None:
            preferred = next((r for g in groups for r in g if r.id == order.affinity and r.admits()), None)
            if preferred is not None:
                yield preferred
        for group in groups:
            first = self.pick(group)
            if first is None:
                continue  # nobody admitted here
            if first is not preferred:
                yield first
            # Only reached when the first attempt failed: the failover order.
            yield from self.rank([r for r in group if r is not first and r is not preferred and r.admits()])
