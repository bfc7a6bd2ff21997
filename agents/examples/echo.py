"""The benchmark and test target: the cheapest possible tool, so a benchmark measures the
path (client -> dispatcher -> agent), not the work. ``edgefleet bench`` starts it.

``where`` tells a caller which replica served it (routing demos and tests); ``wait`` is a
slow, deliberately NOT idempotent tool (a replica dying mid-call must give the caller an
"outcome unknown" error, never a silent second run); ``fail`` always reports a tool error
(pipelines and their compensations are tested with it).
"""

import asyncio
import logging
import time

from edgefleet.agents import Agent, ToolAnnotations, ToolError

log = logging.getLogger("edgefleet.agent.echo")
agent = Agent(
    "echo", description="Returns its input; used by `edgefleet bench` and the routing tests.", version="1.0.0"
)


@agent.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


@agent.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def where() -> dict[str, str]:
    """The region and URL of the replica that served this call."""
    return {"region": agent.region or "", "url": agent.url or ""}


@agent.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=False))
async def wait(seconds: float) -> dict[str, str]:
    """Sleep ``seconds`` (at most 600), then say where it ran."""
    started = time.monotonic()
    log.info("wait started (%.1f s)", seconds)  # the task tests wait for this before they kill or cancel
    try:
        await asyncio.sleep(min(max(seconds, 0.0), 600.0))
    except asyncio.CancelledError:
        # Says that cancellation reached the handler (the task tests look for this line).
        log.info("wait cancelled after %.2f s", time.monotonic() - started)
        raise
    return {"region": agent.region or "", "url": agent.url or ""}


@agent.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def fail(message: str = "failed on purpose") -> str:
    """Always fail with ``message`` (a tool error the caller can read)."""
    raise ToolError(message)


if __name__ == "__main__":
    agent.main()
