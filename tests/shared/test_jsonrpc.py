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
