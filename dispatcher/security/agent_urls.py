"""Which URLs an agent may register: the dispatcher connects to whatever URL it is given,
so registration must not become a way to make it call cloud metadata endpoints or other
internal services (server-side request forgery).

Always refused: link-local addresses (169.254.0.0/16 holds the cloud metadata service,
fe80::/10), unspecified and multicast addresses, and schemes other than http(s). With
``EDGEFLEET_AGENT_NETWORKS`` set, every address the host name resolves to must also lie
in one of those networks (e.g. the cluster's pod CIDR).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from edgefleet.shared.errors import AgentUrlForbidden

ALWAYS_REFUSED = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("0.0.0.0/32"),
    ipaddress.ip_network("::/128"),
)


async def check_agent_url(url: str, allowed: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentUrlForbidden(f"Agent URL {url!r} must be http(s)://host[:port]/path.", data={"url": url})
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except OSError:
        return  # unresolvable: the connection attempt that follows reports it (agent_unreachable)
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed]
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_multicast or any(address in net for net in ALWAYS_REFUSED if net.version == address.version):
            raise AgentUrlForbidden(
                f"Agent URL {url!r} resolves to {address}, which agents may not use (link-local, metadata, "
                "unspecified or multicast).",
                data={"url": url, "address": str(address)},
            )
        if networks and not any(address in net for net in networks if net.version == address.version):
            raise AgentUrlForbidden(
                f"Agent URL {url!r} resolves to {address}, outside EDGEFLEET_AGENT_NETWORKS.",
                data={"url": url, "address": str(address)},
            )
