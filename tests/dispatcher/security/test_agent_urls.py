"""Agent URLs that registration refuses (SSRF guard)."""

from __future__ import annotations

import pytest

from edgefleet.dispatcher.security.agent_urls import check_agent_url
from edgefleet.shared.errors import AgentUrlForbidden


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]:80/mcp",
        "http://0.0.0.0:9000/mcp",
        "http://224.0.0.1/mcp",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_",
        "http:///mcp",
    ],
)
async def test_metadata_link_local_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(AgentUrlForbidden):
        await check_agent_url(url, [])


async def test_agent_networks_restrict_where_agents_may_live() -> None:
    await check_agent_url("http://127.0.0.1:9000/mcp", [])
    await check_agent_url("http://127.0.0.1:9000/mcp", ["127.0.0.0/8"])
    await check_agent_url("http://localhost:9000/mcp", ["127.0.0.0/8", "::1/128"])
    with pytest.raises(AgentUrlForbidden, match="outside EDGEFLEET_AGENT_NETWORKS"):
        await check_agent_url("http://127.0.0.1:9000/mcp", ["10.0.0.0/8"])
