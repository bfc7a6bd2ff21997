"""The Python SDK's ``mcp.Client`` driving the scripted scenario of ``surface.py``, the twin of
``client_v2.mjs``: ``python -m tests.support.peers.python_client PLAN_JSON_FILE``.

Run as its own process (like the TypeScript client) so the SDK's deprecation warnings and
event loop stay out of pytest's, and so a hung call can never block the test process. Each
feature gets a fresh ``Client`` (one failure cannot poison the next), all run concurrently,
each bounded by the plan's timeout; one JSON object on stdout:
``{"features": {feature: {ok, seconds, era, value | error}}}``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import anyio
from mcp import Client, MCPError, types
from mcp.client import ClientRequestContext
from mcp.shared.subscriptions import ResourceUpdated

# How long the upstream may take to see a cancellation (directly: ~10 ms).
CANCEL_SEEN_S = 3.0


class Hang(Exception):
    """The feature did not finish within the plan's timeout."""


class Observed:
    """What the client's callbacks saw during one feature."""

    def __init__(self) -> None:
        self.levels: list[str] = []
        self.updated: list[str] = []
        self.sampling: types.CreateMessageRequestParams | None = None
        self.elicitation: types.ElicitRequestParams | None = None
        self.roots = False


def describe(error: BaseException) -> dict[str, Any]:
    # The SDK raises from inside task groups: report the first real error, not the group.
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, Hang):
        return {"type": "hang", "message": str(error)}
    out: dict[str, Any] = {"type": type(error).__name__, "message": str(error)[:2000]}
    if isinstance(error, MCPError):
        out["code"] = error.error.code
        if error.error.data is not None:
            out["data"] = error.error.data
    return out


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


def contents(result: types.ReadResourceResult) -> list[dict[str, Any]]:
    return [c.model_dump(by_alias=True, exclude_none=True, exclude={"meta"}) for c in result.contents]


class Runner:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.names: dict[str, str] = plan["names"]
        self.uris: dict[str, str] = plan["uris"]
        self.answers: dict[str, str] = plan["answers"]

    def client(self, observed: Observed) -> Client:
        async def sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult:
            observed.sampling = params
            content = types.TextContent(type="text", text=self.answers["sampling"])
            return types.CreateMessageResult(role="assistant", content=content, model=self.answers["model"])

        async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
            observed.elicitation = params
            return types.ElicitResult(action="accept", content={"name": self.answers["name"]})

        async def roots(context: ClientRequestContext) -> types.ListRootsResult:
            observed.roots = True
            return types.ListRootsResult(roots=[types.Root(uri=self.answers["root"], name="peer test root")])

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            observed.levels.append(params.level)

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                observed.updated.append(message.params.uri)

        return Client(
            self.plan["url"],
            mode=self.plan["mode"],
            sampling_callback=sampling,
            elicitation_callback=elicitation,
            list_roots_callback=roots,
            logging_callback=on_log,
            message_handler=on_message,
            # 2026 lists carry cache hints; every feature must reach the server.
            cache=None,
        )

    def upstream_saw(self, event: str, tag: str) -> bool:
        try:
            log = Path(self.plan["upstream_log"]).read_text(errors="replace")
        except OSError:
            return False
        return f'"event":"{event}","tag":"{tag}"' in log

    # -- features: each returns the observation the test asserts on -----------------------
    async def tools(self, c: Client, o: Observed) -> Any:
        return sorted(t.name for t in (await c.list_tools()).tools)

    async def call(self, c: Client, o: Observed) -> Any:
        return texts(await c.call_tool(self.names["echo"], {"text": "hello"}))

    async def progress(self, c: Client, o: Observed) -> Any:
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        result = await c.call_tool(self.names["count"], {"n": 3}, progress_callback=on_progress)
        return {"text": texts(result), "progress": seen}

    async def logging(self, c: Client, o: Observed) -> Any:
        if c.protocol_version == "2025-11-25":
            await c.set_logging_level("warning")
            result = await c.call_tool(self.names["chatter"], {})
        else:  # 2026: a per-request opt-in in _meta (SEP-2575)
            meta = cast(types.RequestParamsMeta, {types.LOG_LEVEL_META_KEY: "warning"})
            result = await c.call_tool(self.names["chatter"], {}, meta=meta)
        return {"text": texts(result), "levels": o.levels}

    async def sampling(self, c: Client, o: Observed) -> Any:
        result = await c.call_tool(self.names["ask_sampling"], {"question": self.answers["question"]})
        asked = o.sampling.messages[0].content if o.sampling else None
        return {"text": texts(result), "asked": asked.text if isinstance(asked, types.TextContent) else None}

    async def elicitation(self, c: Client, o: Observed) -> Any:
        result = await c.call_tool(self.names["ask_elicitation"], {})
        return {"text": texts(result), "asked": o.elicitation.message if o.elicitation else None}

    async def roots(self, c: Client, o: Observed) -> Any:
        result = await c.call_tool(self.names["ask_roots"], {})
        return {"text": texts(result), "asked": o.roots}

    async def gated(self, c: Client, o: Observed) -> Any:
        listed = any(t.name == self.names["gated"] for t in (await c.list_tools()).tools)
        return {"listed": listed, "text": texts(await c.call_tool(self.names["gated"], {}))}

    async def cancel(self, c: Client, o: Observed) -> Any:
        # Cancel once the upstream reports the call running (its own log line): 2025 sends
        # notifications/cancelled, 2026 closes the request's stream (the SDK decides).
        tag = self.plan["tag"]
        ended: dict[str, Any] = {}

        async def call() -> None:
            try:
                ended["result"] = texts(await c.call_tool(self.names["slow"], {"tag": tag, "seconds": 30}))
            except Exception as exc:  # noqa: BLE001 - reported, the test decides
                ended["error"] = describe(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            while not self.upstream_saw("started", tag) and not ended:
                await anyio.sleep(0.02)
            started = not ended
            tg.cancel_scope.cancel()
        if not started:
            return {"started": False, **ended}
        # The client is closed after the feature: give the upstream CANCEL_SEEN_S to see the
        # cancellation first (a close racing the cancel must not hide it).
        seen = False
        with anyio.move_on_after(CANCEL_SEEN_S):
            while not (seen := self.upstream_saw("cancelled", tag)):
                await anyio.sleep(0.02)
        return {"started": True, "upstream_cancelled": seen, **ended}

    async def resources(self, c: Client, o: Observed) -> Any:
        return sorted(r.uri for r in (await c.list_resources()).resources)

    async def read_text(self, c: Client, o: Observed) -> Any:
        return contents(await c.read_resource(self.uris["text"]))

    async def read_binary(self, c: Client, o: Observed) -> Any:
        return contents(await c.read_resource(self.uris["binary"]))

    async def templates(self, c: Client, o: Observed) -> Any:
        return sorted(t.uri_template for t in (await c.list_resource_templates()).resource_templates)

    async def read_template(self, c: Client, o: Observed) -> Any:
        return contents(await c.read_resource(self.uris["item"]))

    async def prompts(self, c: Client, o: Observed) -> Any:
        listed = (await c.list_prompts()).prompts
        return [{"name": p.name, "arguments": sorted(a.name for a in p.arguments or [])} for p in listed]

    async def prompt_get(self, c: Client, o: Observed) -> Any:
        result = await c.get_prompt(self.names["greet"], {"name": "bob", "style": "formal"})
        return [m.content.text if isinstance(m.content, types.TextContent) else None for m in result.messages]

    async def complete_prompt(self, c: Client, o: Observed) -> Any:
        ref = types.PromptReference(type="ref/prompt", name=self.names["greet"])
        return (await c.complete(ref, {"name": "name", "value": "al"})).completion.values

    async def complete_template(self, c: Client, o: Observed) -> Any:
        ref = types.ResourceTemplateReference(type="ref/resource", uri=self.uris["template"])
        return (await c.complete(ref, {"name": "id", "value": "4"})).completion.values

    async def unknown_resource(self, c: Client, o: Observed) -> Any:
        try:
            return {"answered": contents(await c.read_resource(self.uris["missing"]))}
        except MCPError as exc:
            return {"error": describe(exc)}

    async def subscribe(self, c: Client, o: Observed) -> Any:
        uri = self.uris["watched"]
        if c.protocol_version == "2025-11-25":
            await c.subscribe_resource(uri)
            # Touch until an update arrives: it travels on the session's GET stream, which
            # the client opens in the background and may not have open yet.
            while not o.updated:
                await c.call_tool(self.names["touch"], {})
                with anyio.move_on_after(0.3):
                    while not o.updated:
                        await anyio.sleep(0.02)
            return o.updated
        async with c.listen(resource_subscriptions=[uri]) as sub:
            await c.call_tool(self.names["touch"], {})
            async for event in sub:
                if isinstance(event, ResourceUpdated):
                    return [event.uri]
        return []

    # -- running ------------------------------------------------------------------------
    async def run_feature(self, name: str) -> dict[str, Any]:
        feature: Callable[[Client, Observed], Awaitable[Any]] = getattr(self, name)
        observed = Observed()
        started = time.monotonic()
        client = self.client(observed)
        outcome: dict[str, Any] = {}
        timeout = float(self.plan["timeout_s"])
        with anyio.move_on_after(timeout) as scope:
            try:
                async with client:
                    outcome["era"] = client.protocol_version
                    outcome["value"] = await feature(client, observed)
                    outcome["ok"] = True
            except Exception as exc:  # noqa: BLE001 - every failure is an observation
                outcome.update(ok=False, error=describe(exc))
        if scope.cancelled_caught:
            outcome.update(ok=False, error=describe(Hang(f"no answer within {timeout:g} s")))
            outcome.pop("value", None)
        outcome.setdefault("era", None)
        outcome["seconds"] = time.monotonic() - started
        return outcome

    async def run(self) -> dict[str, Any]:
        results: dict[str, dict[str, Any]] = {}

        async def one(name: str) -> None:
            results[name] = await self.run_feature(name)

        async with anyio.create_task_group() as tg:
            for name in self.plan["features"]:
                tg.start_soon(one, name)
        return {"client": "python", "features": {name: results[name] for name in self.plan["features"]}}


def main() -> None:
    # The 2026 SDK marks logging/subscribe as deprecated; using them is the point here.
    warnings.simplefilter("ignore")
    plan = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(anyio.run(Runner(plan).run)))


if __name__ == "__main__":
    main()
