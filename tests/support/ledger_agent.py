"""A test agent that writes down every execution of its tools, so a test can count them.

Each tool appends ``<EVENT> <tool> <key>`` lines to the file named by ``LEDGER_LOG`` (and
logs ``ledger <EVENT> ...`` for humans): ``START`` when a call begins running, ``DONE``
when it returned, ``CANCELLED`` when it was cancelled midway. The pipeline tests prove
"executed exactly once" from this file, not from what the dispatcher says.

    LEDGER_LOG=/tmp/ledger.log python -m tests.support.ledger_agent --region eu-west --port 0
"""

from __future__ import annotations

import asyncio
import logging
import os

from edgefleet.agents import Agent, ToolAnnotations, ToolError

log = logging.getLogger("edgefleet.agent.ledger")
agent = Agent("ledger", description="Records every execution of its tools (pipeline tests).", version="1.0.0")


def _write(event: str, tool: str, key: str) -> None:
    line = f"{event} {tool} {key}\n"
    path = os.environ.get("LEDGER_LOG")
    if path:
        with open(path, "a") as ledger:
            ledger.write(line)
            ledger.flush()
            os.fsync(ledger.fileno())
    log.info("ledger %s", line.strip())


async def _run(tool: str, key: str, seconds: float) -> str:
    _write("START", tool, key)
    try:
        await asyncio.sleep(min(max(seconds, 0.0), 120.0))
    except asyncio.CancelledError:
        _write("CANCELLED", tool, key)
        raise
    _write("DONE", tool, key)
    return f"{tool} {key}"


@agent.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=False))
async def apply(key: str, seconds: float = 0.0) -> str:
    """A change that must not happen twice (not idempotent): takes ``seconds``."""
    return await _run("apply", key, seconds)


@agent.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True))
async def upsert(key: str, seconds: float = 0.0) -> str:
    """A change that may safely be repeated (idempotent): takes ``seconds``."""
    return await _run("upsert", key, seconds)


@agent.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True))
async def undo(key: str) -> str:
    """Undo ``key`` (a compensation)."""
    return await _run("undo", key, 0.0)


@agent.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True))
async def fail(key: str) -> str:
    """Always fails (after writing it down)."""
    _write("FAIL", "fail", key)
    raise ToolError(f"{key} failed on purpose")


if __name__ == "__main__":
    agent.main()
