"""A client's notification stream and the listen filter, without processes: framing per era,
coalescing, the backlog bound, how a stream ends; list changes found by content."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from edgefleet.dispatcher.fleet.catalog import AgentView, Catalog, ToolEntry
from edgefleet.dispatcher.fleet.federation import Federation
from edgefleet.dispatcher.fleet.surface import Surface
from edgefleet.dispatcher.mcp.streams import ABRUPT, GRACEFUL, MAX_BACKLOG, ClientStream
from edgefleet.dispatcher.mcp.subscriptions import Subscriptions, wanted
from edgefleet.dispatcher.security.auth import Identity
from edgefleet.shared.errors import InvalidParams, TooManySubscriptions

ALICE = Identity("alice")
KEY = ("notes", "note://a", "listen", ())
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


def test_the_listen_filter() -> None:
    found = wanted({"notifications": {"toolsListChanged": True, "resourceSubscriptions": ["a+x://1", "a+x://1"]}}, 3, 5)
    assert found.lists == {"tools"} and found.uris == ["a+x://1"]
    with pytest.raises(InvalidParams) as missing:
        wanted({}, "l-1", 5)
    assert missing.value.data == {"id": "l-1"}
    with pytest.raises(InvalidParams):
        wanted({"notifications": {"resourceSubscriptions": "a+x://1"}}, 1, 5)
    with pytest.raises(TooManySubscriptions) as many:
        wanted({"notifications": {"resourceSubscriptions": [f"a+x://{i}" for i in range(6)]}}, 1, 5)
    assert many.value.data == {"id": 1, "limit": 5}


class Wire:
    """A fake ASGI exchange: what the stream sends, and a client that may leave."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    def messages(self) -> list[dict[str, Any]]:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return [orjson.loads(line[5:]) for line in body.splitlines() if line.startswith(b"data:")]

    def finished(self) -> bool:
        last = self.sent[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


async def test_a_listen_stream_tags_every_frame_and_ends_with_the_completion() -> None:
    stream = ClientStream("listen", ALICE, None, keepalive_s=30, request_id=7, lists=frozenset({"tools"}))
    stream.watched[KEY] = "notes+note://a"
    wire = Wire()
    running = asyncio.create_task(stream.run(wire.send, wire.receive, stream.frame({"method": "ack", "params": {}})))
    stream.list_changed("tools")
    stream.list_changed("tools")  # the same change still waiting: sent once
    stream.list_changed("prompts")  # not asked for
    stream.resource_updated(KEY, "note://a")
    stream.resource_updated(KEY, "note://a/part")  # under the watched one: its public form
    stream.finish(GRACEFUL)
    await asyncio.wait_for(running, 5)
    got = wire.messages()
    assert [m.get("method") for m in got] == [
        "ack",
        "notifications/tools/list_changed",
        "notifications/resources/updated",
        "notifications/resources/updated",
        None,
    ]
    assert all(m.get("params", m.get("result", {}))["_meta"][SUBSCRIPTION_ID] == 7 for m in got)
    assert [m["params"]["uri"] for m in got[2:4]] == ["notes+note://a", "notes+note://a/part"]
    assert got[-1] == {"jsonrpc": "2.0", "id": 7, "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: 7}}}
    assert wire.finished()


async def test_a_get_stream_has_no_subscription_id_and_no_completion() -> None:
    stream = ClientStream("get", ALICE, "notes", keepalive_s=30, lists=frozenset({"tools"}))
    stream.watched[KEY] = "note://a"
    wire = Wire()
    running = asyncio.create_task(stream.run(wire.send, wire.receive, b":\n\n"))
    stream.resource_updated(KEY, "note://a")
    stream.finish(GRACEFUL)
    await asyncio.wait_for(running, 5)
    assert wire.messages() == [
        {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "note://a"}}
    ]
    assert wire.finished()


async def test_a_client_that_stops_reading_loses_its_stream_and_one_that_leaves_gets_nothing_more() -> None:
    slow = ClientStream("listen", ALICE, None, keepalive_s=30, request_id=1)
    for i in range(MAX_BACKLOG + 1):
        slow.watched[("notes", f"note://{i}", "listen", ())] = f"notes+note://{i}"
        slow.resource_updated(("notes", f"note://{i}", "listen", ()), f"note://{i}")
    assert slow.end == ABRUPT
    gone = ClientStream("listen", ALICE, None, keepalive_s=30, request_id=2)
    wire = Wire()
    running = asyncio.create_task(gone.run(wire.send, wire.receive, b""))
    wire.leave.set()
    await asyncio.wait_for(running, 5)
    assert not wire.finished()  # nobody to send the end to


async def test_keepalive_comments_on_a_quiet_stream() -> None:
    stream = ClientStream("get", ALICE, None, keepalive_s=0.05)
    wire = Wire()
    ticks = asyncio.Event()
    count = 0

    async def tick() -> None:
        nonlocal count
        count += 1
        if count == 3:
            ticks.set()

    running = asyncio.create_task(stream.run(wire.send, wire.receive, b":\n\n", on_tick=tick))
    await asyncio.wait_for(ticks.wait(), 5)
    stream.finish(ABRUPT)
    await asyncio.wait_for(running, 5)
    assert sum(1 for m in wire.sent if m.get("body") == b":\n\n") >= 4  # the opening one and three keep-alives


def catalog(tools: list[str], prompts: list[str], *, agent_tools: list[str] | None = None) -> Catalog:
    entries = {
        t: ToolEntry(t, "notes", t.split(".", 1)[1], {"name": t}, idempotent=False, validator=None) for t in tools
    }
    surface = Surface(prompts=[{"name": p} for p in prompts])
    view = AgentView("notes", {}, [{"name": n} for n in (agent_tools or [])], [], surface)
    federation = Federation(prompts=[{"name": f"notes.{p}"} for p in prompts])
    return Catalog(entries, {"notes": view}, federation)


def test_list_changes_are_found_by_content_per_view() -> None:
    subs = Subscriptions.__new__(Subscriptions)  # only the list-change part: no I/O needed
    subs.digests, subs.streams = {}, set()
    on_mcp = ClientStream("listen", ALICE, None, keepalive_s=30, request_id=1, lists=frozenset({"tools", "prompts"}))
    on_mount = ClientStream("get", ALICE, "notes", keepalive_s=30, lists=frozenset({"tools", "prompts", "resources"}))
    subs.streams = {on_mcp, on_mount}
    subs.catalog_rebuilt(catalog(["notes.a"], ["p"], agent_tools=["a"]))
    subs.catalog_rebuilt(catalog(["notes.a"], ["p"], agent_tools=["a"]))  # rebuilt, same content: nothing
    assert on_mcp.pending == set() and on_mount.pending == set()
    subs.catalog_rebuilt(catalog(["notes.a", "notes.b"], ["p"], agent_tools=["a", "b"]))
    assert on_mcp.pending == {"list:tools"} and on_mount.pending == {"list:tools"}
    subs.catalog_rebuilt(catalog(["notes.a", "notes.b"], ["p", "q"], agent_tools=["a", "b"]))
    assert on_mcp.pending == {"list:tools", "list:prompts"} and on_mount.pending == {"list:tools", "list:prompts"}
