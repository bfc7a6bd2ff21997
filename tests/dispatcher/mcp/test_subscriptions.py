"""Subscriptions and list changes through the dispatcher, both eras (design D11), with real
processes: the dispatcher, Redis, and unmodified MCP servers of both eras whose resources
change on demand (tests/support/watched_server.py: ``notes`` speaks both eras, ``oldnotes``
only 2025-11-25), read by the official Python client and by raw HTTP."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated, ToolsListChanged
from mcp_types import ResourceUpdatedNotification

from tests.support.fleet import Fleet, plain_server
from tests.support.streams import legacy_request, listen_request, open_session, open_stream, touch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


@pytest.fixture
def notes(fleet: Fleet) -> Iterator[Fleet]:
    """``notes``: an MCP server of both eras; ``oldnotes``: a 2025-only one. Both announce
    ``note://a`` / ``note://b`` changes when their ``touch`` tool is called."""
    both, both_url = plain_server(script="watched_server.py")
    legacy, legacy_url = plain_server("--legacy-only", script="watched_server.py")
    try:
        fleet.add_server("notes", both_url)
        fleet.add_server("oldnotes", legacy_url)
        yield fleet
    finally:
        both.kill()
        legacy.kill()


def metric(fleet: Fleet, kind: str, dispatcher: str | None = None) -> float:
    text = httpx.get((dispatcher or fleet.url) + "/metrics", timeout=5).text
    line = next(line for line in text.splitlines() if line.startswith(f'edgefleet_mcp_streams{{kind="{kind}"}}'))
    return float(line.split()[-1])


async def test_a_2026_client_on_mcp_gets_updates_of_what_it_listens_to_and_nothing_else(notes: Fleet) -> None:
    async with Client(notes.mcp_url) as client:
        discovered = await client.session.discover()
        resources = discovered.capabilities.resources
        assert resources is not None and resources.subscribe and resources.list_changed
        wanted = ["notes+note://a", "oldnotes+note://a", "nobody+note://a"]
        async with client.listen(resource_subscriptions=wanted) as sub:
            # An agent that is not in the fleet cannot be honoured; both eras of upstream are.
            assert sub.honored.resource_subscriptions == wanted[:2] and not sub.honored.tools_list_changed
            for agent in ("notes", "oldnotes"):
                touch(notes.mcp_url, f"{agent}.touch", "note://b")  # not subscribed: never delivered
                touch(notes.mcp_url, f"{agent}.touch", "note://a")
                event = await asyncio.wait_for(sub.__anext__(), 10)
                assert event == ResourceUpdated(uri=f"{agent}+note://a")
            # One upstream subscription each, while the stream is open...
            assert metric(notes, "watched_uris") == 2
        # ...and none once it closed: the 2025 agent was told (unsubscribe), the listen cut.
        await asyncio.to_thread(
            notes.wait_for, lambda: metric(notes, "watched_uris") == 0 and metric(notes, "upstream") == 0, "teardown"
        )
        await asyncio.to_thread(
            notes.wait_for,
            lambda: touch(notes.mcp_url, "oldnotes.touch", "note://a")["legacy_sessions_told"] == 0,
            "unsubscribed",
        )


async def test_a_2025_client_on_mcp_subscribes_and_gets_updates_on_its_get_stream(notes: Fleet) -> None:
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if not isinstance(message, Exception) and hasattr(message, "method"):
            received.put_nowait(message)  # notifications (requests would be responders)

    async with Client(notes.mcp_url, mode="legacy", message_handler=on_message) as client:
        init = client.session.initialize_result
        assert init is not None and init.capabilities.resources is not None and init.capabilities.resources.subscribe
        for agent in ("notes", "oldnotes"):
            await client.subscribe_resource(f"{agent}+note://a")
        await asyncio.to_thread(notes.wait_for, lambda: metric(notes, "watched_uris") == 2, "both watched")
        for agent in ("notes", "oldnotes"):
            touch(notes.mcp_url, f"{agent}.touch", "note://b")
            told = touch(notes.mcp_url, f"{agent}.touch", "note://a")
            notification = await asyncio.wait_for(received.get(), 10)
            assert isinstance(notification, ResourceUpdatedNotification)
            assert notification.params.uri == f"{agent}+note://a"
        # The dispatcher speaks the client's era to the agent of both eras (era affinity).
        assert told["legacy_sessions_told"] == 1
        await client.unsubscribe_resource("notes+note://a")
        await asyncio.to_thread(notes.wait_for, lambda: metric(notes, "watched_uris") == 1, "one left")
        assert received.empty()


async def test_subscribing_again_at_once_to_a_2025_only_agent_still_gets_updates(notes: Fleet) -> None:
    """The SDKs' servers allow one GET stream per session (409 for a second): the stream of
    the link that ended with the last unsubscribe is not gone on the agent's side yet when the
    next subscribe opens one (seen with the conformance suite's subscribe/unsubscribe
    scenarios back to back: the client got the agent's 409 'Conflict' as its error)."""
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            received.put_nowait(message)

    async with Client(notes.mcp_url, mode="legacy", message_handler=on_message) as client:
        for _ in range(3):
            await client.subscribe_resource("oldnotes+note://a")
            await client.unsubscribe_resource("oldnotes+note://a")
        await client.subscribe_resource("oldnotes+note://a")
        await asyncio.to_thread(notes.wait_for, lambda: metric(notes, "watched_uris") == 1, "watched")
        touch(notes.mcp_url, "oldnotes.touch", "note://a")
        notification = await asyncio.wait_for(received.get(), 15)
        assert notification.params.uri == "oldnotes+note://a"


async def test_list_changes_on_mcp_when_agents_join_and_leave_only_for_who_asked(notes: Fleet) -> None:
    tools = listen_request("tools", toolsListChanged=True)
    resources = listen_request("resources", resourceSubscriptions=["notes+note://a"])
    both = listen_request("both", toolsListChanged=True, resourceSubscriptions=["notes+note://a"])
    async with (
        open_stream("POST", notes.mcp_url, *tools) as tools_only,
        open_stream("POST", notes.mcp_url, *resources) as resources_only,
        open_stream("POST", notes.mcp_url, *both) as everything,
    ):
        for stream in (tools_only, resources_only, everything):
            assert (await stream.next())["method"] == "notifications/subscriptions/acknowledged"
        echo = notes.start_agent("edgefleet.agents.examples.echo", "eu-west")
        for stream in (tools_only, everything):
            assert (await stream.next())["method"] == "notifications/tools/list_changed"
        # The stream that asked for resource updates only: the next thing it gets is one
        # (the catalog changed before the agent was routable, so before this update).
        touch(notes.mcp_url, "notes.touch", "note://a")
        for stream in (resources_only, everything):
            assert (await stream.next())["method"] == "notifications/resources/updated"
        # A second replica of an agent already there changes no list: nothing is sent.
        second = notes.start_agent("edgefleet.agents.examples.echo", "eu-west")
        touch(notes.mcp_url, "notes.touch", "note://a")
        for stream in (resources_only, everything):
            assert (await stream.next())["method"] == "notifications/resources/updated"
        # The agent leaving (both replicas drain and deregister) is a change again.
        for proc in (echo, second):
            proc.popen.send_signal(signal.SIGTERM)
        assert (await tools_only.next(timeout=30))["method"] == "notifications/tools/list_changed"
        assert resources_only.messages.empty()


async def test_the_2026_listen_frames_carry_the_id_as_sent_and_end_gracefully_on_shutdown(notes: Fleet) -> None:
    headers, body = listen_request(7, toolsListChanged=True, resourceSubscriptions=["notes+note://a"])
    async with open_stream("POST", notes.mcp_url, headers, body) as stream:
        ack = await stream.next()
        assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"][SUBSCRIPTION_ID] == 7  # a number stays a number
        assert ack["params"]["notifications"] == {"toolsListChanged": True, "resourceSubscriptions": ["notes+note://a"]}
        touch(notes.mcp_url, "notes.touch", "note://a")
        event = await stream.next()
        assert event["params"] == {"uri": "notes+note://a", "_meta": {SUBSCRIPTION_ID: 7}}
        dispatcher = notes.dispatchers[0][1]
        started = time.monotonic()
        dispatcher.popen.send_signal(signal.SIGTERM)
        last = await stream.next()
        await stream.wait_ended()
        assert last == {"jsonrpc": "2.0", "id": 7, "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: 7}}}
        await asyncio.to_thread(dispatcher.popen.wait, 30)
        # The open stream did not hold the shutdown for uvicorn's 30 s grace.
        assert time.monotonic() - started < 10, dispatcher.output()[-2000:]


async def test_the_mount_relays_the_agents_own_listen_stream_and_closes_it_with_the_client(notes: Fleet) -> None:
    mount = f"{notes.url}/mcp/agents/notes"
    headers, body = listen_request("l-1", resourceSubscriptions=["note://a"], toolsListChanged=True)
    async with open_stream("POST", mount, headers, body) as stream:
        ack = await stream.next()
        # The agent's own acknowledgment (it honours what it honours), under the client's id.
        assert ack["params"]["notifications"]["resourceSubscriptions"] == ["note://a"]
        assert ack["params"]["_meta"][SUBSCRIPTION_ID] == "l-1"
        touch(mount, "touch", "note://a")
        event = await stream.next()
        assert event["method"] == "notifications/resources/updated" and event["params"]["uri"] == "note://a"
        assert event["params"]["_meta"][SUBSCRIPTION_ID] == "l-1"
        assert metric(notes, "relay") == 1 and metric(notes, "upstream") == 1
    # The client went away: so does the agent's stream.
    await asyncio.to_thread(
        notes.wait_for, lambda: metric(notes, "relay") == 0 and metric(notes, "upstream") == 0, "relay closed"
    )


async def test_a_2026_client_on_the_mount_of_a_2025_only_agent_is_served_by_the_dispatcher(notes: Fleet) -> None:
    async with (
        Client(f"{notes.url}/mcp/agents/oldnotes") as client,
        client.listen(resource_subscriptions=["note://a"], tools_list_changed=True) as sub,
    ):
        assert sub.honored.resource_subscriptions == ["note://a"] and sub.honored.tools_list_changed
        assert touch(notes.mcp_url, "oldnotes.touch", "note://a")["legacy_sessions_told"] == 1
        assert await asyncio.wait_for(sub.__anext__(), 10) == ResourceUpdated(uri="note://a")


async def test_a_2025_client_on_the_mount_subscribes_through_its_capability_sets_session(notes: Fleet) -> None:
    for agent in ("notes", "oldnotes"):
        mount = f"{notes.url}/mcp/agents/{agent}"
        session = open_session(mount, capabilities={"sampling": {}})
        get = {k: v for k, v in session.items() if k != "accept"} | {"accept": "text/event-stream"}
        async with open_stream("GET", mount, get) as stream:
            assert stream.status == 200
            assert legacy_request(mount, session, "resources/subscribe", {"uri": "note://a"})["result"] == {}
            # The agent itself holds the subscription (a 2025 session of ours with it).
            assert touch(mount, "subscriber_count", "note://a") == {"result": 1}
            touch(mount, "touch", "note://a")
            event = await stream.next()
            assert event == {
                "jsonrpc": "2.0",
                "method": "notifications/resources/updated",
                "params": {"uri": "note://a"},
            }
            assert legacy_request(mount, session, "resources/unsubscribe", {"uri": "note://a"})["result"] == {}
            await asyncio.to_thread(
                notes.wait_for,
                lambda m=mount: touch(m, "subscriber_count", "note://a") == {"result": 0},
                "unsubscribed",
            )
            # DELETE ends the session, and its GET stream with it.
            assert httpx.delete(mount, headers=session, timeout=10).status_code == 200
            await stream.wait_ended()


async def test_events_reach_a_2025_client_whose_stream_is_on_another_dispatcher(notes: Fleet) -> None:
    other = notes.start_dispatcher()
    session = open_session(notes.mcp_url)
    get = {k: v for k, v in session.items() if k != "accept"} | {"accept": "text/event-stream"}
    async with open_stream("GET", other + "/mcp", get) as stream:
        # The subscribe reaches the first dispatcher; the stream is held by the other one.
        answer = legacy_request(notes.mcp_url, session, "resources/subscribe", {"uri": "oldnotes+note://a"})
        assert answer["result"] == {}
        await asyncio.to_thread(
            notes.wait_for, lambda: metric(notes, "watched_uris", other) == 1, "watched where the stream is"
        )
        touch(notes.mcp_url, "oldnotes.touch", "note://a")
        assert (await stream.next())["params"] == {"uri": "oldnotes+note://a"}
        # A newer GET stream of the session, on the first dispatcher: it takes over.
        async with open_stream("GET", notes.mcp_url, get) as newer:
            await stream.wait_ended()
            await asyncio.to_thread(
                notes.wait_for, lambda: metric(notes, "watched_uris") == 1, "watched where the newer stream is"
            )
            touch(other + "/mcp", "oldnotes.touch", "note://a")
            assert (await newer.next())["params"] == {"uri": "oldnotes+note://a"}


async def test_a_2026_listen_on_another_dispatcher_hears_list_changes_too(notes: Fleet) -> None:
    other = notes.start_dispatcher()
    async with Client(other + "/mcp") as client, client.listen(tools_list_changed=True) as sub:
        notes.start_agent("edgefleet.agents.examples.echo", "eu-west", dispatcher=notes.url)
        assert await asyncio.wait_for(sub.__anext__(), 10) == ToolsListChanged()


def test_get_streams_are_for_2025_sessions_only(notes: Fleet) -> None:
    no_session = httpx.get(notes.mcp_url, headers={"accept": "text/event-stream"}, timeout=10)
    assert no_session.status_code == 400 and no_session.json()["error"]["data"]["code"] == "session_required"
    modern = httpx.get(notes.mcp_url, headers={"mcp-protocol-version": "2026-07-28"}, timeout=10)
    assert modern.status_code == 405
    session = open_session(notes.mcp_url)
    elsewhere = httpx.get(notes.url + "/mcp/agents/notes", headers=session, timeout=10)
    assert elsewhere.status_code == 404


async def test_keepalives_on_quiet_streams(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher(stream_keepalive_s=0.2)
        session = open_session(fleet.mcp_url)
        headers, body = listen_request(1, toolsListChanged=True)
        get = {k: v for k, v in session.items() if k != "accept"} | {"accept": "text/event-stream"}
        async with (
            open_stream("POST", fleet.mcp_url, headers, body) as listen,
            open_stream("GET", fleet.mcp_url, get) as stream,
        ):
            await listen.next()
            deadline = time.monotonic() + 10
            while (listen.comments < 3 or stream.comments < 3) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # polling what the background readers counted
            assert listen.comments >= 3 and stream.comments >= 3
            assert b"id:" not in listen.body + stream.body  # no resumption offered
    finally:
        fleet.stop()


async def test_bounds_streams_per_identity_and_subscriptions(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, redis_prefix)
    both, both_url = plain_server(script="watched_server.py")
    try:
        fleet.start_dispatcher(max_streams_per_identity=2, max_resource_subscriptions=2, max_upstream_subscriptions=1)
        fleet.add_server("notes", both_url)
        headers, body = listen_request(1, toolsListChanged=True)
        async with (
            open_stream("POST", fleet.mcp_url, headers, body) as first,
            open_stream("POST", fleet.mcp_url, headers, body) as second,
        ):
            await first.next()
            await second.next()
            third = httpx.post(fleet.mcp_url, json=body, headers=headers, timeout=10)
            assert third.status_code == 429 and third.json()["error"]["code"] == -31432
            assert third.json()["error"]["data"] == {"code": "too_many_streams", "scope": "identity", "limit": 2}
            assert third.json()["id"] == 1
        # One upstream subscription per dispatcher at most here: the second URI is not honoured.
        headers, body = listen_request(3, resourceSubscriptions=["notes+note://a", "notes+note://b"])
        async with open_stream("POST", fleet.mcp_url, headers, body) as capped:
            ack = await capped.next()
            assert ack["params"]["notifications"] == {"resourceSubscriptions": ["notes+note://a"]}
        uris = ["notes+note://a", "notes+note://b", "notes+note://c"]
        headers, body = listen_request(2, resourceSubscriptions=uris)
        many = httpx.post(fleet.mcp_url, json=body, headers=headers, timeout=10)
        assert many.status_code == 400 and many.json()["error"]["data"]["code"] == "too_many_subscriptions"
        session = open_session(fleet.mcp_url)
        for uri in uris[:2]:
            assert legacy_request(fleet.mcp_url, session, "resources/subscribe", {"uri": uri})["result"] == {}
        refused = legacy_request(fleet.mcp_url, session, "resources/subscribe", {"uri": uris[2]})
        assert refused["error"]["code"] == -32602 and refused["error"]["data"]["code"] == "too_many_subscriptions"
        unknown = legacy_request(fleet.mcp_url, session, "resources/subscribe", {"uri": "nobody+note://a"})
        assert unknown["error"]["code"] == -32602 and unknown["error"]["data"]["uri"] == "nobody+note://a"
    finally:
        both.kill()
        fleet.stop()


def legacy_touch(url: str, tool: str, uri: str) -> dict[str, Any]:
    """``tool`` of a 2025-only server called directly in a session of its own."""
    answer = legacy_request(url, open_session(url), "tools/call", {"name": tool, "arguments": {"uri": uri}})
    structured: dict[str, Any] = answer["result"]["structuredContent"]
    return structured


async def test_streams_move_to_another_replica_when_theirs_dies(fleet: Fleet) -> None:
    servers = [plain_server(script="watched_server.py") for _ in range(2)]
    servers += [plain_server("--legacy-only", script="watched_server.py") for _ in range(2)]
    try:
        for (_, url), agent in zip(servers, ("notes", "notes", "oldnotes", "oldnotes"), strict=True):
            fleet.add_server(agent, url)
        fleet.wait_for(
            lambda: sum(r["routable"] for a in fleet.agents_view() for r in a["replicas"]) == 4, "4 replicas"
        )
        relayed = listen_request("relayed", resourceSubscriptions=["note://a"])
        watched = listen_request("watched", resourceSubscriptions=["notes+note://a"])
        session = open_session(fleet.mcp_url)
        get = {k: v for k, v in session.items() if k != "accept"} | {"accept": "text/event-stream"}
        async with (
            open_stream("POST", fleet.url + "/mcp/agents/notes", *relayed) as relay,
            open_stream("POST", fleet.mcp_url, *watched) as listen,
            open_stream("GET", fleet.mcp_url, get) as legacy,
        ):
            for stream in (relay, listen):
                await stream.next()
            assert legacy_request(fleet.mcp_url, session, "resources/subscribe", {"uri": "oldnotes+note://a"})
            # The replica of each agent that holds the streams dies (kill -9): they move to the other.
            notes_by_load = sorted(servers[:2], key=lambda s: touch(s[1], "listeners", "")["result"])
            old_by_load = sorted(
                servers[2:], key=lambda s: legacy_touch(s[1], "subscriber_count", "note://a")["result"]
            )
            (_, survivor_url), (holder, _) = notes_by_load
            (_, old_url), (old_holder, old_holder_url) = old_by_load
            assert legacy_touch(old_holder_url, "subscriber_count", "note://a")["result"] == 1
            holder.kill()
            old_holder.kill()
            await asyncio.to_thread(
                fleet.wait_for, lambda: touch(survivor_url, "listeners", "")["result"] == 2, "both listens moved"
            )
            await asyncio.to_thread(
                fleet.wait_for,
                lambda: legacy_touch(old_url, "subscriber_count", "note://a")["result"] == 1,
                "the 2025 subscription moved",
            )
            touch(survivor_url, "touch", "note://a")
            assert (await relay.next())["params"]["uri"] == "note://a"
            assert (await listen.next())["params"]["uri"] == "notes+note://a"
            legacy_touch(old_url, "touch", "note://a")
            assert (await legacy.next())["params"]["uri"] == "oldnotes+note://a"
            assert not relay.ended.is_set() and not listen.ended.is_set()
    finally:
        for proc, _ in servers:
            proc.kill()
