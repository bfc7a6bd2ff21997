"""Bad input gets the error the MCP spec prescribes (status + JSON-RPC code), never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.fleet import Fleet

MODERN = {
    "mcp-protocol-version": "2026-07-28",
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def modern_call(name: str, arguments: Any, **extra_headers: str) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": name, **extra_headers}
    return headers, {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": META},
    }


@pytest.fixture
def text_fleet(fleet: Fleet) -> Fleet:
    fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    return fleet


def post(fleet: Fleet, body: Any, headers: dict[str, str], raw: bytes | None = None) -> httpx.Response:
    return httpx.post(fleet.mcp_url, json=None if raw is not None else body, content=raw, headers=headers, timeout=10)


def test_malformed_json_is_a_parse_error(text_fleet: Fleet) -> None:
    resp = post(text_fleet, None, MODERN, raw=b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32700


def test_invalid_utf8_is_a_parse_error(text_fleet: Fleet) -> None:
    resp = post(text_fleet, None, MODERN, raw=b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32700


@pytest.mark.parametrize(
    "body",
    [
        [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}],
        42,
        {"jsonrpc": "1.0", "id": 1, "method": "x"},
        {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]},
    ],
)
def test_invalid_jsonrpc_envelopes(text_fleet: Fleet, body: Any) -> None:
    resp = post(text_fleet, body, {**MODERN, "mcp-method": "tools/list"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32600


def test_unknown_tool_is_a_protocol_error(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.nope", {})
    resp = post(text_fleet, body, headers)
    assert resp.status_code == 200
    assert resp.json()["error"]["code"] == -32602 and "Unknown tool: text.nope" in resp.json()["error"]["message"]


def test_wrong_arguments_are_a_tool_error_naming_the_field(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.keywords", {"text": 12})
    resp = post(text_fleet, body, headers)
    result = resp.json()["result"]
    assert resp.status_code == 200 and result["isError"] is True
    assert "'text'" in result["content"][0]["text"]


def test_missing_required_argument(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.keywords", {})
    result = post(text_fleet, body, headers).json()["result"]
    assert result["isError"] is True and "text" in result["content"][0]["text"]


def test_unknown_protocol_version_lists_the_supported_ones(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.stats", {"text": "x"}, **{"mcp-protocol-version": "1999-01-01"})
    resp = post(text_fleet, body, headers)
    error = resp.json()["error"]
    assert resp.status_code == 400 and error["code"] == -32022
    assert "2026-07-28" in error["data"]["supported"] and "2025-11-25" in error["data"]["supported"]
    assert error["data"]["requested"] == "1999-01-01"


def test_header_body_mismatch(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.stats", {"text": "x"}, **{"mcp-name": "text.keywords"})
    resp = post(text_fleet, body, headers)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020


def test_missing_meta_on_modern_request(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.stats", {"text": "x"})
    del body["params"]["_meta"]
    resp = post(text_fleet, body, headers)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32602


def test_unknown_method_is_404_method_not_found(text_fleet: Fleet) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "resources/teleport", "params": {"_meta": META}}
    resp = post(text_fleet, body, {**MODERN, "mcp-method": "resources/teleport"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601


def test_legacy_request_without_session_is_400(text_fleet: Fleet) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    resp = post(text_fleet, body, {**MODERN, "mcp-protocol-version": "2025-11-25"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32600


def test_unknown_session_is_404(text_fleet: Fleet) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    resp = post(text_fleet, body, {**MODERN, "mcp-protocol-version": "2025-11-25", "mcp-session-id": "no-such-session"})
    assert resp.status_code == 404


def test_legacy_session_lifecycle_and_delete(text_fleet: Fleet) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    resp = post(text_fleet, init, {k: v for k, v in MODERN.items() if k != "mcp-protocol-version"})
    assert resp.status_code == 200 and resp.json()["result"]["protocolVersion"] == "2025-11-25"
    session = resp.headers["mcp-session-id"]
    legacy = {**MODERN, "mcp-protocol-version": "2025-11-25", "mcp-session-id": session}
    assert post(text_fleet, {"jsonrpc": "2.0", "method": "notifications/initialized"}, legacy).status_code == 202
    assert "result" in post(text_fleet, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, legacy).json()
    unknown = post(text_fleet, {"jsonrpc": "2.0", "id": 3, "method": "sampling/teleport"}, legacy)
    assert unknown.status_code == 200 and unknown.json()["error"]["code"] == -32601
    # GET opens the session's notification stream; DELETE ends the session and the stream.
    with httpx.stream("GET", text_fleet.mcp_url, headers=legacy, timeout=10) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"] == "text/event-stream"
        assert httpx.delete(text_fleet.mcp_url, headers=legacy).status_code == 200
        assert b"".join(stream.iter_bytes()) == b":\n\n"  # the opening comment, then the end
    assert post(text_fleet, {"jsonrpc": "2.0", "id": 4, "method": "ping"}, legacy).status_code == 404


def test_oversized_body_is_413(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.stats", {"text": "x" * (5 * 1024 * 1024)})
    assert post(text_fleet, body, headers).status_code == 413


def test_wrong_content_type_is_415(text_fleet: Fleet) -> None:
    assert post(text_fleet, None, {**MODERN, "content-type": "text/plain"}, raw=b"hello").status_code == 415


def test_foreign_origin_is_403(text_fleet: Fleet) -> None:
    headers, body = modern_call("text.stats", {"text": "x"}, origin="http://evil.example")
    assert post(text_fleet, body, headers).status_code == 403
    headers, body = modern_call("text.stats", {"text": "x"}, origin="http://localhost:5173")
    assert post(text_fleet, body, headers).status_code == 200


def test_notification_is_202(text_fleet: Fleet) -> None:
    body = {"jsonrpc": "2.0", "method": "notifications/whatever", "params": {"_meta": META}}
    assert post(text_fleet, body, {**MODERN, "mcp-method": "notifications/whatever"}).status_code == 202


def test_dispatcher_still_serves_after_the_bad_requests(text_fleet: Fleet) -> None:
    for raw in (b"", b"[]", b"{", b"null", b'{"jsonrpc":"2.0"}', b"\x00" * 100):
        assert post(text_fleet, None, MODERN, raw=raw).status_code < 500
    headers, body = modern_call("text.stats", {"text": "alive and well"})
    assert post(text_fleet, body, headers).json()["result"]["isError"] is False


def test_hostile_legacy_input_is_answered_not_crashed(text_fleet: Fleet) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
    }
    session = post(text_fleet, init, {k: v for k, v in MODERN.items() if k != "mcp-protocol-version"}).headers[
        "mcp-session-id"
    ]
    legacy = {**MODERN, "mcp-protocol-version": "2025-11-25", "mcp-session-id": session}
    odd_meta = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "text.stats", "arguments": {"text": "a b"}, "_meta": [1]},
    }
    assert post(text_fleet, odd_meta, legacy).status_code < 500
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"not": "hashable"}}}
    assert post(text_fleet, cancel, legacy).status_code == 202
