"""The agent SDK: define tools, serve MCP over HTTP, register with one dispatcher."""

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from agents.sdk.agent import Agent
from agents.sdk.errors import input_errors

__all__ = ["Agent", "Context", "ToolAnnotations", "ToolError", "input_errors"]
