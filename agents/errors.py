"""Turning a tool's input problems into messages the caller (and its model) can read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mcp.server.mcpserver.exceptions import ToolError


@contextmanager
def input_errors() -> Iterator[None]:
    """Report ``ValueError`` as a tool error with its message.

    The SDK reports any exception other than ``ToolError`` as a bare "Error executing tool X"
    and keeps the text server-side; a ``ValueError`` is the caller's input problem, so its
    message must reach the caller for the model to correct itself.
    """
    try:
        yield
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
