"""Durable MCP tasks for every tool: the store in Redis, the runner, both eras' methods."""
