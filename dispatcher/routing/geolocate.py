"""Where a caller is: a region (from a network table) or coordinates (from GeoIP).

Sources, first match wins:
1. the static CIDR -> region table in settings (``EDGEFLEET_REGION_NETWORKS``), most
   specific network first;
2. an optional custom ``.mmdb`` for private networks whose records carry ``region``
   (and/or ``location.latitude/longitude``), e.g. built with ``mmdb-writer``;
3. a GeoIP2/GeoLite2 City database: the caller's coordinates.

Readers are opened at start-up (no cold lookup on the first call) and answers are cached
per address, so a lookup on the hot path is a dict hit.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from edgefleet.shared.errors import ConfigError

log = logging.getLogger("edgefleet.geo")


@dataclass(frozen=True, slots=True)
class Location:
    address: str | None
    region: str | None = None
    point: tuple[float, float] | None = None
    source: str = "unknown"  # network | private-db | geoip | unknown


UNKNOWN = Location(None)


def parse_networks(entries: Iterable[str]) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    """``["10.1.0.0/16=eu-west", ...]`` -> [(network, region)], most specific first."""
    table = []
    for entry in entries:
        cidr, sep, region = entry.partition("=")
        if not sep or not region.strip():
            raise ConfigError(f"region network {entry!r} must look like CIDR=region (10.1.0.0/16=eu-west)")
        try:
            table.append((ipaddress.ip_network(cidr.strip(), strict=False), region.strip()))
        except ValueError as exc:
            raise ConfigError(f"region network {entry!r}: {exc}") from None
    table.sort(key=lambda item: item[0].prefixlen, reverse=True)
    return table


class Locator:
    def __init__(
        self, *, networks: Iterable[str] = (), private_db: Path | None = None, city_db: Path | None = None
    ) -> None:
        self.networks = parse_networks(networks)
        self.private = self._open(private_db, maxminddb.open_database) if private_db else None
        self.city = self._open(city_db, geoip2.database.Reader) if city_db else None
        self.locate = functools.lru_cache(maxsize=65536)(self._locate)

    @staticmethod
    def _open(path: Path, opener: Any) -> Any:
        try:
            return opener(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(f"cannot open GeoIP database {path}: {exc}") from None

    def close(self) -> None:
        for reader in (self.private, self.city):
            if reader is not None:
                reader.close()

    def _locate(self, address: str | None) -> Location:
        if address is None:
            return UNKNOWN
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return Location(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, region in self.networks:
            if ip.version == network.version and ip in network:
                return Location(address, region=region, source="network")
        if self.private is not None:
            found = self._from_private(address, ip)
            if found is not None:
                return found
        if self.city is not None:
            try:
                city = self.city.city(ip)
            except (geoip2.errors.AddressNotFoundError, ValueError):
                return Location(address)
            lat, lon = city.location.latitude, city.location.longitude
            if lat is not None and lon is not None:
                return Location(address, point=(lat, lon), source="geoip")
        return Location(address)

    def _from_private(self, address: str, ip: Any) -> Location | None:
        if self.private is None:
            return None
        try:
            record = self.private.get(ip)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        region = record.get("region")
        location = record.get("location")
        where = location if isinstance(location, dict) else {}
        lat, lon = where.get("latitude"), where.get("longitude")
        point = (float(lat), float(lon)) if isinstance(lat, (int, float)) and isinstance(lon, (int, float)) else None
        if isinstance(region, str) or point is not None:
            return Location(
                address, region=region if isinstance(region, str) else None, point=point, source="private-db"
            )
        return None
