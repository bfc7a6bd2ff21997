"""Agent SDK and the example agents.

Writing an agent::

    from agents.sdk import Agent, Context

    agent = Agent("text", description="Text analysis")

    @agent.tool()
    async def keywords(text: str, top: int = 5) -> list[str]:
        ...

    if __name__ == "__main__":
        agent.main()

Run it with ``python -m agents.text --region eu-west`` (or ``edgefleet agent text``).
"""
