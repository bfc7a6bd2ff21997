"""The one SSE framing and parser."""

from __future__ import annotations

import orjson

from edgefleet.shared import sse

MESSAGE = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}


def test_frame_and_parse_round_trip() -> None:
    assert list(sse.messages(sse.frame(orjson.dumps(MESSAGE)))) == [MESSAGE]


def test_crlf_multiline_data_comments_and_non_json_events() -> None:
    events = b': keep-alive\r\n\r\nevent: message\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: not json\n\ndata:{"b":2}\n\n'
    assert list(sse.messages(events)) == [{"a": 1}, {"b": 2}]


def test_splitter_yields_only_complete_events_wherever_a_chunk_ends() -> None:
    stream = sse.frame(b'{"n":1}') + b'event: message\r\ndata: {"n":2}\r\n\r\n' + sse.frame(b'{"n":3}')
    for size in (1, 2, 3, 7, 64):
        splitter = sse.Splitter()
        seen = []
        for i in range(0, len(stream), size):
            complete = splitter.feed(stream[i : i + size])
            assert complete == b"" or sse.boundary(complete) == len(complete)
            seen.extend(sse.messages(complete))
        assert seen == [{"n": 1}, {"n": 2}, {"n": 3}] and splitter.rest() == b""


def test_a_last_event_without_its_blank_line_is_completed_at_the_end() -> None:
    splitter = sse.Splitter()
    assert splitter.feed(b'data: {"n":1}') == b""
    assert list(sse.messages(splitter.rest())) == [{"n": 1}]
