import pytest

from edgefleet.shared import jsonrpc
from edgefleet.shared.errors import InvalidRequest, ParseError, UnsupportedProtocolVersion


def test_request_notification_response() -> None:
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}').kind == "request"
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","method":"notifications/x"}').kind == "notification"
    assert jsonrpc.parse(b'{"jsonrpc":"2.0","id":1,"result":{}}').kind == "response"


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b'{"a":1,}'])
def test_parse_errors(raw: bytes) -> None:
    with pytest.raises(ParseError):
        jsonrpc.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"1",
        b'{"id":1,"method":"x"}',
        b'{"jsonrpc":"2.0","id":true,"method":"x"}',
        b'{"jsonrpc":"2.0","id":1.5,"method":"x"}',
        b'{"jsonrpc":"2.0","id":1,"method":""}',
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":"p"}',
        b'{"jsonrpc":"2.0","id":' + b"9" * 30 + b',"method":"x"}',
    ],
)
def test_invalid_requests(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        jsonrpc.parse(raw)


def test_unsupported_version_error_has_the_spec_shape() -> None:
    error = UnsupportedProtocolVersion(
        "Unsupported protocol version", data={"supported": ["2026-07-28"], "requested": "x"}
    )
    assert error.to_jsonrpc() == {
        "code": -32022,
        "message": "Unsupported protocol version",
        "data": {"supported": ["2026-07-28"], "requested": "x"},
    }


def test_error_body_without_id_omits_it() -> None:
    assert b'"id"' not in jsonrpc.error_body(None, ParseError())


def _nested(depth: int) -> bytes:
    """A tools/call whose arguments hold ``depth`` nested arrays under "deep"."""
    return (
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo.echo","arguments":{"text":"x","deep":'
        + b"[" * depth
        + b"]" * depth
        + b"}}}"
    )


def test_messages_nested_deeper_than_the_limit_are_refused_before_anything_walks_them() -> None:
    """Issue 16, item 8: 1,000 levels parsed (orjson reads up to 1024) and then broke
    re-encoding (orjson writes up to 254): an HTTP 500. The message now stops at parse."""
    from edgefleet.shared.errors import InvalidParams, NestingTooDeep

    outer = 4  # message, params, arguments, "deep"'s array is the 4th container
    fits = jsonrpc.parse(_nested(jsonrpc.MAX_DEPTH - outer + 1))
    assert fits.params["arguments"]["text"] == "x"
    for depth in (jsonrpc.MAX_DEPTH - outer + 2, 300, 1000):
        with pytest.raises(NestingTooDeep) as refused:
            jsonrpc.parse(_nested(depth))
        error = refused.value
        assert isinstance(error, InvalidParams) and error.jsonrpc_code == -32602 and error.http_status == 400
        assert error.code == "nesting_too_deep" and error.data == {"id": 7, "max_depth": jsonrpc.MAX_DEPTH}
    with pytest.raises(NestingTooDeep) as beyond:  # deeper than orjson reads at all: no id to give back
        jsonrpc.parse(_nested(2000))
    assert beyond.value.data == {"id": None, "max_depth": jsonrpc.MAX_DEPTH}
    # Many shallow containers are fine: only depth counts.
    wide = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":[' + b",".join([b"[{}]"] * 5000) + b"]}}"
    assert len(jsonrpc.parse(wide).params["a"]) == 5000
    # Brackets inside strings are not nesting.
    text = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"t":"' + b"[" * 2000 + b'"}}'
    assert jsonrpc.parse(text).params["t"] == "[" * 2000
