"""The edgefleet dispatcher: one MCP URL in front of a regional fleet of agents."""

__version__ = "0.1.0"
