"""Agent URLs and addresses that registration and the upstream pools refuse (SSRF guard):
every spelling of a forbidden address, judged as the host it reaches by every rule."""

from __future__ import annotations

import pytest

from edgefleet.dispatcher.security.agent_urls import AgentAddressRules, check_agent_url, embedded_ipv4
from edgefleet.shared.errors import AgentUnreachable, AgentUrlForbidden

METADATA_SPELLINGS = [
    pytest.param("http://169.254.169.254/latest/meta-data/", id="ipv4"),
    pytest.param("http://[::ffff:169.254.169.254]/latest/meta-data/", id="ipv4-mapped-dotted"),
    pytest.param("http://[::ffff:a9fe:a9fe]/latest/meta-data/", id="ipv4-mapped-hex"),
    pytest.param("http://[::169.254.169.254]/", id="ipv4-compatible"),
    pytest.param("http://[::ffff:0:a9fe:a9fe]/", id="ipv4-translated"),
    pytest.param("http://[64:ff9b::a9fe:a9fe]/", id="nat64-well-known"),
    pytest.param("http://[64:ff9b::169.254.169.254]/", id="nat64-well-known-dotted"),
    pytest.param("http://[64:ff9b:1::a9fe:a9fe]/", id="nat64-local-96"),
    pytest.param("http://[64:ff9b:1:a9fe:a9:fe00::]/", id="nat64-local-48"),
    pytest.param("http://[64:ff9b:1:a9:fe:a9fe::]/", id="nat64-local-56"),
    pytest.param("http://[2002:a9fe:a9fe::1]/", id="6to4"),
    pytest.param("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", id="teredo-client"),
    pytest.param("http://[fd00:ec2::254]/latest/meta-data/", id="aws-imds-ipv6"),
    pytest.param("http://[fd00:ec2::23]/", id="aws-eks-pod-identity-ipv6"),
    pytest.param("http://[fd20:ce::254]/computeMetadata/v1/", id="gcp-ipv6"),
    pytest.param("http://[fd00:42::42]/", id="scaleway-ipv6"),
    pytest.param("http://169.254.170.2/v2/credentials", id="aws-ecs-task-credentials"),
    pytest.param("http://100.100.100.200/latest/meta-data/", id="alibaba"),
    pytest.param("http://[::ffff:100.100.100.200]/", id="alibaba-mapped"),
    pytest.param("http://168.63.129.16/machine", id="azure-wireserver"),
    pytest.param("http://192.0.0.192/latest/", id="oracle-classic"),
    pytest.param("http://[fe80::1%25eth0]:80/mcp", id="ipv6-link-local-with-zone"),
    pytest.param("http://[fe80::1]:80/mcp", id="ipv6-link-local"),
    pytest.param("http://0.0.0.0:9000/mcp", id="this-host"),
    pytest.param("http://0.1.2.3:9000/mcp", id="this-network"),
    pytest.param("http://[::]:9000/mcp", id="ipv6-unspecified"),
    pytest.param("http://[::ffff:0.0.0.0]:9000/mcp", id="mapped-unspecified"),
    pytest.param("http://224.0.0.1/mcp", id="multicast"),
    pytest.param("http://[ff02::1]/mcp", id="ipv6-multicast"),
    pytest.param("http://255.255.255.255/mcp", id="broadcast"),
    pytest.param("http://240.0.0.1/mcp", id="reserved"),
    # Spellings the system resolver turns into addresses (inet_aton): judged as resolved.
    pytest.param("http://2852039166/", id="decimal"),
    pytest.param("http://0xa9fea9fe/", id="hex"),
    pytest.param("http://0251.0376.0251.0376/", id="octal"),
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
async def test_every_spelling_of_a_forbidden_address_is_refused(url: str) -> None:
    with pytest.raises(AgentUrlForbidden, match="agents may not use"):
        await check_agent_url(url, [])
    with pytest.raises(AgentUrlForbidden):  # allowing everything does not allow these
        await check_agent_url(url, ["0.0.0.0/0", "::/0"])


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_",
        "ftp://127.0.0.1/",
        "http:///mcp",
        "http://127.0.0.1:99999/mcp",
        "http://user:secret@127.0.0.1:9000/mcp",
        "http://user@127.0.0.1:9000/mcp",
    ],
)
async def test_odd_urls_are_refused_by_their_form(url: str) -> None:
    with pytest.raises(AgentUrlForbidden):
        await check_agent_url(url, [])


@pytest.mark.parametrize(
    ("url", "networks", "allowed"),
    [
        ("http://127.0.0.1:9000/mcp", [], True),
        ("http://localhost:9000/mcp", [], True),
        ("http://10.1.2.3:9000/mcp", [], True),
        ("http://[::1]:9000/mcp", [], True),
        ("http://127.0.0.1:9000/mcp", ["127.0.0.0/8"], True),
        ("http://localhost:9000/mcp", ["127.0.0.0/8", "::1/128"], True),
        ("http://127.0.0.1:9000/mcp", ["10.0.0.0/8"], False),
        # A mapped address reaches the IPv4 host, and is judged as it by the network rule too.
        ("http://[::ffff:127.0.0.1]:9000/mcp", ["10.0.0.0/8"], False),
        ("http://[::ffff:7f00:1]:9000/mcp", ["10.0.0.0/8"], False),
        ("http://[::ffff:127.0.0.1]:9000/mcp", ["127.0.0.1/32"], True),
        ("http://[::ffff:127.0.0.1]:9000/mcp", ["::ffff:10.0.0.0/104"], False),  # a mapped network is 10.0.0.0/8
        ("http://127.0.0.1:9000/mcp", ["::ffff:127.0.0.1/128"], True),  # a mapped network is its IPv4 network
        ("http://[::127.0.0.1]:9000/mcp", ["10.0.0.0/8"], False),
        ("http://[64:ff9b::7f00:1]:9000/mcp", ["10.0.0.0/8"], False),
        ("http://[64:ff9b::a00:5]:9000/mcp", ["10.0.0.0/8"], True),  # NAT64 to 10.0.0.5
        ("http://[2002:7f00:1::1]:9000/mcp", ["10.0.0.0/8"], False),
        ("http://[fd12::1]:9000/mcp", ["fd12::/16"], True),
        ("http://[fd12::1]:9000/mcp", ["10.0.0.0/8"], False),
    ],
)
async def test_agent_networks_judge_the_host_an_address_reaches(url: str, networks: list[str], allowed: bool) -> None:
    if allowed:
        await check_agent_url(url, networks)
    else:
        with pytest.raises(AgentUrlForbidden, match="outside EDGEFLEET_AGENT_NETWORKS"):
            await check_agent_url(url, networks)


async def test_a_fully_qualified_address_spelling_is_refused_whether_or_not_it_resolves() -> None:
    with pytest.raises((AgentUrlForbidden, AgentUnreachable)):
        await check_agent_url("http://169.254.169.254./latest/meta-data/", [])


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(AgentUnreachable, match="does not resolve"):
        await check_agent_url("http://agent.invalid:9000/mcp", [])

    async def nothing(host: str, port: int) -> list[str]:
        return []

    with pytest.raises(AgentUnreachable, match="resolves to no address"):
        await check_agent_url("http://agent.test:9000/mcp", [], resolver=nothing)


async def test_every_address_a_name_resolves_to_is_judged() -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["10.0.0.5", "::ffff:169.254.169.254"]

    with pytest.raises(AgentUrlForbidden, match="169.254.169.254"):
        await check_agent_url("http://agent.test/mcp", [], resolver=resolver)
    assert asked == [("agent.test", 80)]
    await check_agent_url("https://10.0.0.5/mcp", ["10.0.0.0/8"], resolver=resolver)  # literals: not resolved
    assert len(asked) == 1


@pytest.mark.parametrize(
    ("peer", "refused"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.5", False),
        ("169.254.169.254", True),
        ("::ffff:169.254.169.254", True),
        ("64:ff9b::a9fe:a9fe", True),
        ("fd00:ec2::254", True),
        ("fe80::1%eth0", True),
        ("", True),  # no IP address at all (not a TCP peer)
    ],
)
def test_the_address_connected_to_is_checked_by_the_same_rules(peer: str, refused: bool) -> None:
    rules = AgentAddressRules()
    if refused:
        with pytest.raises(AgentUrlForbidden, match="nothing was sent"):
            rules.check_peer(peer)
    else:
        rules.check_peer(peer)
    with pytest.raises(AgentUrlForbidden, match="outside EDGEFLEET_AGENT_NETWORKS"):
        AgentAddressRules(["10.0.0.0/8"]).check_peer("::ffff:127.0.0.1")


def test_embedded_ipv4() -> None:
    import ipaddress

    def of(text: str) -> list[str]:
        return [str(a) for a in embedded_ipv4(ipaddress.ip_address(text))]

    assert of("::ffff:10.0.0.1") == of("::ffff:0:a00:1") == of("::10.0.0.1") == of("64:ff9b::a00:1") == ["10.0.0.1"]
    assert of("::1") == of("::") == of("2001:db8::1") == of("10.0.0.1") == []
    assert "169.254.169.254" in of("64:ff9b:1:a9fe:a9:fe00::")  # one of the RFC 6052 candidates
