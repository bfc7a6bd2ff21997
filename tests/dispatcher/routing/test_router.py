"""Caller address, location and region order: the routing decision without any I/O."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _maxminddb_geolite2 import geolite2_database

from edgefleet.dispatcher.routing.caller import TrustedProxies, client_address
from edgefleet.dispatcher.routing.geolocate import Locator
from edgefleet.dispatcher.routing.regions import RegionSpec, RegionTable, great_circle_km
from edgefleet.dispatcher.routing.router import Router
from edgefleet.shared.errors import InvalidRequest
from edgefleet.shared.settings import DispatcherSettings

from tests.support.geo import write_private_db

THREE = frozenset({"eu-west", "us-east", "ap-southeast"})

# -- caller address ---------------------------------------------------------------------


def test_headers_are_ignored_without_trusted_proxies() -> None:
    assert client_address("203.0.113.9", {"x-forwarded-for": "8.8.8.8"}, TrustedProxies([])) == "203.0.113.9"


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    assert client_address("203.0.113.9", {"x-forwarded-for": "8.8.8.8"}, trusted) == "203.0.113.9"
    assert client_address("203.0.113.9", {"forwarded": "for=8.8.8.8"}, trusted) == "203.0.113.9"


def test_trusted_chain_is_walked_from_the_right_and_forged_hops_are_not_read() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    # client forged "1.1.1.1"; the real client is 81.2.69.142, seen by proxy 10.0.0.5
    headers = {"x-forwarded-for": "1.1.1.1, 81.2.69.142, 10.0.0.5"}
    assert client_address("10.0.0.7", headers, trusted) == "81.2.69.142"


def test_rfc7239_forwarded_with_ports_and_ipv6() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1/128"])
    fwd = "forwarded"
    assert client_address("::1", {"forwarded": 'for="[2001:db8::17]:4711";proto=https'}, trusted, fwd) == "2001:db8::17"
    assert client_address("10.1.1.1", {"forwarded": "for=192.0.2.60:8080, for=10.2.2.2"}, trusted, fwd) == "192.0.2.60"
    assert client_address("10.1.1.1", {"forwarded": "for=unknown"}, trusted, fwd) is None


def test_only_the_configured_header_is_read() -> None:
    # The proxy appends to X-Forwarded-For and passes the client's own Forwarded through.
    trusted = TrustedProxies(["10.0.0.0/8"])
    headers = {"forwarded": "for=13.250.0.1", "x-forwarded-for": "81.2.69.142"}
    assert client_address("10.0.0.5", headers, trusted) == "81.2.69.142"
    assert client_address("10.0.0.5", headers, trusted, "forwarded") == "13.250.0.1"


def test_ipv4_mapped_peers_match_ipv4_networks() -> None:
    assert TrustedProxies(["127.0.0.0/8"]).trusts("::ffff:127.0.0.1")


# -- region table -------------------------------------------------------------------------


def test_great_circle_distance_is_about_right() -> None:
    assert 5400 < great_circle_km((53.35, -6.26), (39.04, -77.49)) < 5700  # Dublin - Ashburn


def test_regions_order_by_distance_and_unplaced_regions_come_last() -> None:
    table = RegionTable()
    assert table.order_from_region("eu-west", THREE | {"moon"}) == ("eu-west", "us-east", "ap-southeast", "moon")
    assert table.order_from_region("ap-southeast", THREE) == ("ap-southeast", "eu-west", "us-east")
    assert table.order_from_point(51.5, -0.1, THREE)[0] == "eu-west"  # London


def test_measured_latency_beats_distance() -> None:
    # Pretend the eu-west -> ap-southeast link is faster than the one to us-east.
    table = RegionTable([RegionSpec("eu-west", 53.35, -6.26, {"ap-southeast": 40.0})])
    assert table.order_from_region("eu-west", THREE) == ("eu-west", "ap-southeast", "us-east")
    assert table.rtt_ms("ap-southeast", "eu-west") == 40.0


# -- location -------------------------------------------------------------------------------


def test_static_networks_most_specific_first() -> None:
    locator = Locator(networks=["10.0.0.0/8=us-east", "10.1.0.0/16=eu-west"])
    assert locator.locate("10.1.2.3").region == "eu-west"
    assert locator.locate("10.9.2.3").region == "us-east"
    assert locator.locate("192.0.2.1").source == "unknown"


def test_geolite2_city_gives_coordinates() -> None:
    locator = Locator(city_db=Path(geolite2_database()))
    where = locator.locate("13.250.0.1")
    assert where.source == "geoip" and where.point is not None and abs(where.point[0] - 1.29) < 0.5
    assert locator.locate("127.0.0.1").source == "unknown"
    assert locator.locate("not an address").source == "unknown"


def test_private_database_region_wins_over_geoip(tmp_path: Path) -> None:
    db = write_private_db(tmp_path / "regions.mmdb", {"13.250.0.0/16": {"region": "us-east"}})
    locator = Locator(private_db=db, city_db=Path(geolite2_database()))
    assert locator.locate("13.250.0.1").region == "us-east"
    assert locator.locate("3.120.0.1").source == "geoip"


# -- router --------------------------------------------------------------------------------


def router(**settings: Any) -> Router:
    return Router(DispatcherSettings(fleet_token="t", region="eu-west", **settings), [])


def test_geoip_callers_get_their_nearest_region_first() -> None:
    r = router(geoip_city_db=Path(geolite2_database()))
    assert r.order("13.250.0.1", {}, THREE).regions[0] == "ap-southeast"
    assert r.order("3.120.0.1", {}, THREE).regions == ("eu-west", "us-east", "ap-southeast")
    order = r.order("52.95.0.1", {}, THREE)
    assert order.regions[0] == "us-east" and order.caller_region == "us-east" and order.reason == "geoip"


def test_callers_in_a_region_without_coordinates_get_it_first_then_the_default_order() -> None:
    r = router(region_networks=["10.5.0.0/16=on-prem-paris"])
    order = r.order("10.5.1.1", {}, THREE | {"on-prem-paris"})
    assert order.regions == ("on-prem-paris", "eu-west", "us-east", "ap-southeast")


def test_unknown_callers_use_the_default_order() -> None:
    assert router().order("127.0.0.1", {}, THREE).regions == ("eu-west", "us-east", "ap-southeast")
    custom = router(region_order=["ap-southeast"]).order("127.0.0.1", {}, THREE)
    assert custom.regions[0] == "ap-southeast" and custom.reason == "default"


def test_spoofed_forwarded_for_does_not_move_an_untrusted_caller() -> None:
    r = router(geoip_city_db=Path(geolite2_database()), trusted_proxies=["10.0.0.0/8"])
    assert r.order("3.120.0.1", {"x-forwarded-for": "13.250.0.1"}, THREE).regions[0] == "eu-west"
    assert r.order("10.0.0.9", {"x-forwarded-for": "13.250.0.1"}, THREE).regions[0] == "ap-southeast"


def test_region_hint_orders_or_narrows_and_rejects_unknown_regions() -> None:
    r = router()
    assert r.order(None, {"x-edge-region": "ap-southeast"}, THREE).regions == ("ap-southeast", "eu-west", "us-east")
    assert r.order(None, {"x-edge-region": "us-east;only"}, THREE).regions == ("us-east",)
    with pytest.raises(InvalidRequest):
        r.order(None, {"x-edge-region": "atlantis"}, THREE)
    with pytest.raises(InvalidRequest):
        r.order(None, {"x-edge-region": "us-east;maybe"}, THREE)
    assert router(region_hint=False).order(None, {"x-edge-region": "us-east;only"}, THREE).regions[0] == "eu-west"


def _replica(name: str, region: str, *, admits: bool = True, inflight: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        id=name, record=SimpleNamespace(region=region), admits=lambda: admits, inflight=inflight, latency_ewma_ms=1.0
    )


def test_candidates_walk_regions_nearest_first_and_skip_ejected_replicas() -> None:
    r = router(replica_policy="least-outstanding")
    eu_busy, eu_idle = _replica("eu-1", "eu-west", inflight=5), _replica("eu-2", "eu-west")
    us, ap_dead = _replica("us-1", "us-east"), _replica("ap-1", "ap-southeast", admits=False)
    entry = SimpleNamespace(by_region={"eu-west": [eu_busy, eu_idle], "us-east": [us], "ap-southeast": [ap_dead]})
    order = r.order("127.0.0.1", {}, THREE)
    assert [c.id for c in r.candidates(entry, order)] == ["eu-2", "eu-1", "us-1"]  # type: ignore[arg-type]
    only_ap = r.order(None, {"x-edge-region": "ap-southeast;only"}, THREE)
    assert list(r.candidates(entry, only_ap)) == []  # type: ignore[arg-type]


def test_an_order_restricted_to_regions_never_yields_a_replica_elsewhere() -> None:
    """Issue 16, item 1: a single-region tool was served outside a region-bound key's
    regions because the one-region shortcut looked at the reason, not at ``only``."""
    r = router()
    us_only = SimpleNamespace(by_region={"us-east": [_replica("us-1", "us-east")]})
    # What the endpoint makes of an eu-west-bound key's call (the reason stays "default").
    bound = dataclasses.replace(r.order("127.0.0.1", {}, THREE), regions=("eu-west",), only=True)
    assert list(r.candidates(us_only, bound)) == []  # type: ignore[arg-type]
    # Unrestricted, the shortcut still serves the one region there is.
    assert [c.id for c in r.candidates(us_only, r.order("127.0.0.1", {}, THREE))] == ["us-1"]  # type: ignore[arg-type]


def test_a_restriction_keeps_the_nearest_first_order_and_never_widens_a_hint() -> None:
    r = router()
    order = r.order("127.0.0.1", {}, THREE)  # eu-west, us-east, ap-southeast
    bound = r.restricted(order, ("eu-west",))
    assert bound.only and bound.regions == ("eu-west",) and bound.reason == "default"
    assert r.restricted(order, ("ap-southeast", "us-east")).regions == ("us-east", "ap-southeast")
    assert r.restricted(order, ()) is order  # no restriction
    # A region the identity may use that the fleet does not serve yet stays allowed (last).
    assert r.restricted(order, ("sa-east", "eu-west")).regions == ("eu-west", "sa-east")
    # X-Edge-Region: us-east;only from an eu-west-bound caller: nowhere, not eu-west.
    hinted = r.order(None, {"x-edge-region": "us-east;only"}, THREE)
    assert r.restricted(hinted, ("eu-west",)).regions == ()
    assert r.restricted(r.order(None, {"x-edge-region": "us-east,eu-west;only"}, THREE), ("eu-west",)).regions == (
        "eu-west",
    )


def test_the_first_candidate_ranks_nothing_the_failover_order_follows() -> None:
    """Issue 19: a call that succeeds at once must not pay for ranking the agent's replicas."""
    r = router()
    ranked: list[int] = []
    real = r.rank
    r.rank = lambda replicas: ranked.append(len(replicas)) or real(replicas)  # type: ignore[method-assign]
    many = [_replica(f"eu-{i}", "eu-west") for i in range(300)]
    entry = SimpleNamespace(by_region={"eu-west": many, "us-east": [_replica("us-1", "us-east")]})
    order = r.order("127.0.0.1", {}, THREE)
    walk = r.candidates(entry, order)  # type: ignore[arg-type]
    first = next(walk)
    assert first.record.region == "eu-west" and ranked == []
    rest = list(walk)
    assert ranked == [299, 0] and len(rest) == 300 and rest[-1].id == "us-1" and first not in rest
    # A retry's affinity comes first, once.
    pinned = dataclasses.replace(order, affinity="eu-7")
    ids = [c.id for c in r.candidates(entry, pinned)]  # type: ignore[arg-type]
    assert ids[0] == "eu-7" and ids.count("eu-7") == 1 and len(ids) == 301
