"""The edgefleet agent SDK: define tools, serve MCP over HTTP, register with one dispatcher.

Writing an agent::

    from edgefleet.agents import Agent, Context

    agent = Agent("text", description="Text analysis")

    @agent.tool()
    async def keywords(text: str, top: int = 5) -> list[str]:
        ...

    if __name__ == "__main__":
        agent.main()

The example agents live in ``edgefleet.agents.examples`` (``python -m
edgefleet.agents.examples.text --region eu-west``, or ``edgefleet agent text``).
"""

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from edgefleet.agents.agent import Agent
from edgefleet.agents.errors import input_errors

__all__ = ["Agent", "Context", "ToolAnnotations", "ToolError", "input_errors"]
