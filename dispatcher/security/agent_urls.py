"""Which addresses the dispatcher may contact as agents: it connects to whatever URL an agent
registers, so registration must not become a way to make it call cloud metadata endpoints
or other internal services (server-side request forgery).

Two places apply the same rules (``AgentAddressRules``):

- ``check_agent_url`` at registration: the URL's form, then every address its host name
  resolves to (a name that does not resolve is refused, not let through);
- ``AgentAddressRules.check_peer`` on every connection the dispatcher opens to an agent
  (call and control pools), with the address actually connected to, before a byte is
  written: a name that resolves elsewhere later (DNS rebinding) is caught there.
  Redirects are never followed (``http1``), so an allowed agent cannot send us elsewhere.

Always refused: link-local addresses (169.254.0.0/16 holds the metadata services of AWS,
GCP, Azure, Oracle, DigitalOcean, OpenStack, ...; fe80::/10), the cloud services that live
elsewhere (Alibaba 100.100.100.200, Azure's WireServer 168.63.129.16, Oracle Classic
192.0.0.192, AWS fd00:ec2::/32, GCP fd20:ce::254, Scaleway fd00:42::42), "this network"
0.0.0.0/8 (0.0.0.0 reaches the local host), ::, multicast and the reserved 240.0.0.0/4.
With ``EDGEFLEET_AGENT_NETWORKS`` set, every address must also lie in one of those networks
(e.g. the cluster's pod CIDR).

An IPv6 address that carries an IPv4 address reaches that IPv4 host, so it is judged as that
host by every rule: IPv4-mapped ``::ffff:a.b.c.d`` (how a dual-stack socket reaches IPv4),
IPv4-translated ``::ffff:0:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``
and the local-use ``64:ff9b:1::/48`` (RFC 6052: every position its prefix length allows),
6to4 ``2002::/16`` and Teredo ``2001::/32``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from edgefleet.dispatcher.http1 import Resolver, system_resolver
from edgefleet.shared.errors import AgentUnreachable, AgentUrlForbidden

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


ALWAYS_REFUSED: tuple[tuple[Network, str], ...] = (
    (_net("169.254.0.0/16"), "link-local: the cloud metadata services (169.254.169.254)"),
    (_net("fe80::/10"), "link-local"),
    (_net("0.0.0.0/8"), "'this network' (0.0.0.0 reaches the local host)"),
    (_net("::/128"), "unspecified"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("ff00::/8"), "multicast"),
    (_net("240.0.0.0/4"), "reserved or broadcast"),
    (_net("100.100.100.200/32"), "Alibaba Cloud metadata service"),
    (_net("168.63.129.16/32"), "Azure WireServer (platform agent and DNS)"),
    (_net("192.0.0.192/32"), "Oracle Cloud Classic metadata service"),
    (_net("fd00:ec2::/32"), "AWS instance services over IPv6 (metadata fd00:ec2::254, EKS pod identity, DNS)"),
    (_net("fd20:ce::254/128"), "GCP metadata service over IPv6"),
    (_net("fd00:42::42/128"), "Scaleway metadata service over IPv6"),
)
_TRANSLATED = _net("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_COMPATIBLE = _net("::/96")  # IPv4-compatible (deprecated, still routed by some stacks)
_NAT64 = _net("64:ff9b::/96")  # the well-known NAT64 prefix (RFC 6052)
_NAT64_LOCAL = _net("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215); its prefix length is the operator's
# RFC 6052 2.2: where the 32 bits of IPv4 sit for each prefix length (bits 64-71 are zero).
_NAT64_BYTE_POSITIONS = ((6, 7, 9, 10), (7, 9, 10, 11), (9, 10, 11, 12), (12, 13, 14, 15))


def embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 hosts an IPv6 address reaches, if it carries any (one for the unambiguous
    forms; every candidate for local-use NAT64, whose layout depends on its prefix)."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    packed = address.packed
    low = ipaddress.IPv4Address(packed[12:])
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _TRANSLATED or address in _NAT64:
        return [low]
    if address in _COMPATIBLE:
        return [low] if int(address) > 1 else []  # :: and ::1 are themselves
    if address in _NAT64_LOCAL:
        return [ipaddress.IPv4Address(bytes(packed[i] for i in where)) for where in _NAT64_BYTE_POSITIONS]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def _network(text: str) -> Network:
    """An allowed network; an IPv4-mapped IPv6 one is the IPv4 network it denotes."""
    network = _net(text)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class AgentAddressRules:
    """The address rules for agents; ``allowed`` is ``EDGEFLEET_AGENT_NETWORKS`` (empty: any
    address that is not always refused)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = tuple(_network(text) for text in allowed)

    def problem(self, address: Address | str) -> str | None:
        """Why an agent may not use ``address`` (None: it may)."""
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return f"{address!r} is not an IP address"
        hosts: list[Address] = [*embedded_ipv4(address)] or [address]  # what the address reaches
        for candidate in dict.fromkeys([address, *hosts]):
            for network, why in ALWAYS_REFUSED:
                if candidate.version == network.version and candidate in network:
                    shown = f"{address} ({candidate})" if candidate != address else str(address)
                    return f"{shown} is {why}, which agents may not use"
        if self.allowed:
            for host in hosts:
                if not any(host.version == net.version and host in net for net in self.allowed):
                    shown = f"{address} ({host})" if host != address else str(address)
                    return f"{shown} is outside EDGEFLEET_AGENT_NETWORKS"
        return None

    def check_peer(self, ip: str) -> None:
        """For the upstream pools: refuse a connection that reached a forbidden address."""
        why = self.problem(ip)
        if why is not None:
            raise AgentUrlForbidden(
                f"The connection to the agent reached {ip}, and {why}; nothing was sent "
                "(did its host name start resolving elsewhere?).",
                data={"address": ip},
            )


async def check_agent_url(
    url: str, rules: AgentAddressRules | Sequence[str], *, resolver: Resolver = system_resolver
) -> None:
    """Refuse an agent URL by its form or by any address its host resolves to."""
    if not isinstance(rules, AgentAddressRules):
        rules = AgentAddressRules(rules)
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise AgentUrlForbidden(f"Agent URL {url!r} must be http(s)://host[:port]/path.", data={"url": url})
    if parts.username is not None or parts.password is not None:
        raise AgentUrlForbidden(
            f"Agent URL {url!r} carries credentials (user@host); agents authenticate the other way round.",
            data={"url": url},
        )
    host = parts.hostname
    addresses = await _resolve(url, host, port, resolver)
    for address in addresses:
        why = rules.problem(address)
        if why is not None:
            raise AgentUrlForbidden(f"Agent URL {url!r} resolves to {why}.", data={"url": url, "address": address})


async def _resolve(url: str, host: str, port: int, resolver: Resolver) -> Sequence[str]:
    try:
        return [str(ipaddress.ip_address(host))]  # a literal: nothing to resolve
    except ValueError:
        pass
    try:
        addresses = await resolver(host, port)
    except OSError as exc:
        raise AgentUnreachable(
            f"Agent URL {url!r}: the host name {host!r} does not resolve ({exc}).", data={"url": url}
        ) from None
    if not addresses:
        raise AgentUnreachable(f"Agent URL {url!r}: the host name {host!r} resolves to no address.", data={"url": url})
    return addresses
