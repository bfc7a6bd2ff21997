"""Reading an agent's long-lived stream message by message (fleet.streams.MessageReader):
SSE or NDJSON, cut anywhere by the network, bounded per message."""

from __future__ import annotations

import orjson
import pytest

from edgefleet.dispatcher.fleet.streams import MessageReader

ACK = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": {"notifications": {}}}
UPDATE = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "note://a"}}


def sse(*messages: dict[str, object], crlf: bool = False) -> bytes:
    body = b"".join(b"event: message\ndata: " + orjson.dumps(m) + b"\n\n" for m in messages)
    return body.replace(b"\n", b"\r\n") if crlf else body


def ndjson(*messages: dict[str, object]) -> bytes:
    return b"".join(orjson.dumps(m) + b"\n" for m in messages)


def read(reader: MessageReader, body: bytes, cut: int) -> list[dict[str, object]]:
    return [*reader.feed(body[:cut]), *reader.feed(body[cut:]), *reader.rest()]


@pytest.mark.parametrize("crlf", [False, True])
def test_sse_cut_anywhere_gives_every_message_once_in_order(crlf: bool) -> None:
    body = b": priming comment\n\n" + sse(ACK, UPDATE, crlf=crlf)
    for cut in range(len(body) + 1):
        assert read(MessageReader("text/event-stream", 4096, "r"), body, cut) == [ACK, UPDATE], cut


def test_ndjson_as_the_reference_server_sends_it() -> None:
    # Chunked application/json, one message per line, the last one maybe without its newline.
    body = ndjson(ACK, UPDATE)[:-1]
    for cut in range(len(body) + 1):
        assert read(MessageReader("application/json", 4096, "r"), body, cut) == [ACK, UPDATE], cut


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json"])
def test_a_message_over_the_bound_is_skipped_whole_and_the_next_one_kept(content_type: str) -> None:
    big = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "x" * 5000}}
    frame = sse if content_type == "text/event-stream" else ndjson
    body = frame(ACK) + frame(big) + frame(UPDATE)
    for cut in range(0, len(body) + 1, 97):
        reader = MessageReader(content_type, 1024, "r")
        assert read(reader, body, cut) == [ACK, UPDATE], cut
        assert reader.oversized == 1
    # Arriving in small pieces, the big one is dropped as soon as it is known to be too big.
    reader = MessageReader(content_type, 1024, "r")
    kept: list[dict[str, object]] = []
    for i in range(0, len(body), 50):
        kept.extend(reader.feed(body[i : i + 50]))
        assert len(reader.buffer) <= 1024 + 50
    assert [*kept, *reader.rest()] == [ACK, UPDATE] and reader.oversized == 1


def test_what_is_not_a_json_object_message_is_skipped() -> None:
    body = b"event: ping\ndata: {}\n\ndata: not json\n\ndata: [1]\n\n" + sse(UPDATE)
    assert MessageReader("text/event-stream", 4096, "r").feed(body) == [UPDATE]
    assert MessageReader("application/json", 4096, "r").feed(b"nope\n[2]\n\n" + ndjson(UPDATE)) == [UPDATE]
