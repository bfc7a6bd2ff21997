"""The caller's address: the TCP peer, or what trusted proxies say the client was.

``X-Forwarded-For`` / ``Forwarded`` are believed only when the immediate peer is in the
configured trusted-proxy networks, and then only hop by hop from the right: the first
address (walking back from the peer) that is not itself a trusted proxy is the client.
Anything to the left of it was written by the client and can be forged, so it is never
read. With no trusted proxies configured the headers are ignored entirely.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)
        self.trusts = functools.lru_cache(maxsize=4096)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


def _strip_port(value: str) -> str | None:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80`` or ``2001:db8::1`` -> the address."""
    value = value.strip().strip('"')
    if value.startswith("["):
        end = value.find("]")
        value = value[1:end] if end > 0 else ""
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None  # "unknown", an obfuscated identifier, or garbage


def forwarded_hops(headers: dict[str, str], header: str = "x-forwarded-for") -> list[str | None]:
    """Client-to-proxy hops from the ONE header the trusted proxies write: ``Forwarded``
    (RFC 7239) or ``X-Forwarded-For``. The other is ignored, because a proxy that appends
    to one usually passes a client's forged copy of the other through untouched."""
    if header == "forwarded":
        forwarded = headers.get("forwarded")
        if not forwarded:
            return []
        hops: list[str | None] = []
        for element in forwarded.split(","):
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    hops.append(_strip_port(value))
                    break
            else:
                hops.append(None)
        return hops
    xff = headers.get("x-forwarded-for")
    if xff:
        return [_strip_port(part) for part in xff.split(",")]
    return []


def client_address(
    peer: str | None, headers: dict[str, str], trusted: TrustedProxies, header: str = "x-forwarded-for"
) -> str | None:
    """The address routing should locate; None when a trusted proxy says it is unknown."""
    if not trusted or peer is None or not trusted.trusts(peer):
        return peer
    current: str | None = peer
    for hop in reversed(forwarded_hops(headers, header)):
        if current is None or not trusted.trusts(current):
            break
        current = hop
    return current
