"""The benchmark target: the cheapest possible tool, so a benchmark measures the path
(client -> dispatcher -> agent), not the work. ``edgefleet bench`` starts it."""

from agents.sdk import Agent, ToolAnnotations

agent = Agent("echo", description="Returns its input; used by `edgefleet bench`.", version="1.0.0")


@agent.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


if __name__ == "__main__":
    agent.main()
