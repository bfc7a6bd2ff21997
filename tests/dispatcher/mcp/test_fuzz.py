"""Thousands of malformed and hostile requests (hypothesis) against a real dispatcher with
client auth on: every answer is a clear 4xx (or a 2xx JSON-RPC error), never a 500, the
process never dies, and good requests are still served afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

KEY = new_key()
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
CAPS, TASKS = "io.modelcontextprotocol/clientCapabilities", "io.modelcontextprotocol/tasks"
FUZZ = settings(max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck))

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(
        ["tools/call", "tools/list", "initialize", "echo.echo", "2026-07-28", "2025-11-25", "\x00", "\ud7ff"]
    ),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25,
)
methods = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "initialize",
        "ping",
        "server/discover",
        "notifications/cancelled",
        "logging/setLevel",
        "resources/list",
        "",
        "tools/call\x00",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        "tasks/update",
    ]
)
envelope = st.fixed_dictionaries(
    {"jsonrpc": st.one_of(st.just("2.0"), json_value), "method": st.one_of(methods, json_value)},
    optional={
        "id": json_value,
        "params": st.one_of(
            json_value,
            st.fixed_dictionaries(
                {
                    "name": st.one_of(
                        st.sampled_from(["echo.echo", "echo.where", "nope", "edgefleet.fanout"]), json_value
                    )
                },
                optional={
                    "arguments": json_value,
                    "_meta": st.one_of(
                        st.just(META),
                        json_value,
                        st.just({**META, "traceparent": 5, "baggage": [1]}),
                        json_value.map(lambda v: {**META, CAPS: {"extensions": {TASKS: v}}}),
                    ),
                    "task": json_value,
                    "taskId": json_value,
                    "cursor": json_value,
                    "inputResponses": json_value,
                },
            ),
        ),
    },
)
# (values an HTTP client can send: h11 refuses leading/trailing whitespace)
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip),
    st.sampled_from(
        [
            "2026-07-28",
            "2025-11-25",
            "application/json",
            "tools/call",
            "echo.echo",
            "=?base64?ZWNoby5lY2hv?=",
            "=?base64?!!?=",
        ]
    ),
)
headers = st.dictionaries(
    st.sampled_from(
        [
            "mcp-protocol-version",
            "mcp-method",
            "mcp-name",
            "mcp-session-id",
            "content-type",
            "accept",
            "origin",
            "x-edge-region",
            "edgefleet-timeout-ms",
            "traceparent",
            "x-forwarded-for",
            "forwarded",
        ]
    ),
    header_values,
    max_size=6,
)


def _deep_call(tool: str, depth: int) -> bytes:
    """A tools/call (2026 era) with ``depth`` nested arrays in its arguments: directly, or in
    a fan-out sub-call's arguments."""
    deep = "[" * depth + "]" * depth
    arguments = f'{{"text":"x","deep":{deep}}}'
    if tool == "edgefleet.fanout":
        arguments = f'{{"calls":[{{"tool":"echo.echo","arguments":{arguments}}}]}}'
    meta = json.dumps(META)
    return (
        f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments},'
        f'"_meta":{meta}}}}}'
    ).encode()


DEEP_HEADERS = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}


bodies = st.one_of(
    envelope.map(lambda e: json.dumps(e).encode()),
    st.lists(envelope, max_size=3).map(lambda b: json.dumps(b).encode()),  # batches
    st.binary(max_size=200),  # bad UTF-8 and garbage
    st.integers(min_value=1, max_value=400).map(lambda d: b"[" * d + b"]" * d),  # deep nesting
    st.tuples(st.sampled_from(["echo.echo", "edgefleet.fanout"]), st.integers(min_value=1, max_value=1023)).map(
        lambda t: _deep_call(*t)  # deeply nested arguments in an otherwise good call
    ),
    st.just(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo.echo","arguments":{"text":'
        + b'"x' * 10
        + b'"}}}'
    ),
)


@pytest.fixture(scope="module")
def fuzz_fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    keys = tmp_path_factory.mktemp("fuzz") / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"identity": "fuzzer", "sha256": hash_key(KEY)}]}))
    fleet = Fleet(redis_url, "eftest-fuzz-" + str(int(time.time() * 1000)), region="eu-west")
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(api_keys_file=keys, max_body_bytes=65536, rate_limit="1000000/minute")
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def _check(resp: httpx.Response, what: Any) -> None:
    assert resp.status_code < 500, f"{resp.status_code} for {what!r}: {resp.text[:300]}"


def test_hostile_mcp_requests_never_get_a_500(fuzz_fleet: Fleet, http: httpx.Client) -> None:
    @FUZZ
    @given(body=bodies, extra=headers, authorized=st.booleans())
    def one(body: bytes, extra: dict[str, str], authorized: bool) -> None:
        sent = {"content-type": "application/json", "accept": "application/json, text/event-stream", **extra}
        if authorized:
            sent["authorization"] = f"Bearer {KEY}"
        _check(http.post(fuzz_fleet.mcp_url, content=body, headers=sent), (body[:200], extra))

    one()


def test_hostile_rest_requests_never_get_a_500(fuzz_fleet: Fleet, http: httpx.Client) -> None:
    paths = st.sampled_from(
        [
            "/v1/agents",
            "/v1/agents/replicas/x/heartbeat",
            "/v1/agents/ghost",
            "/readyz",
            "/metrics",
            "/v1/tasks",
            "/v1/tasks?cursor=%ff%fe&limit=-5",
            "/v1/tasks?limit=99999999999999999999",
            "/v1/tasks/x",
            "/v1/tasks/" + "a" * 300,
            "/v1/tasks/x/cancel",
            "/v1/tasks/x/events",
            "/v1/tasks?owner=%00",
            "/.well-known/oauth-protected-resource",
            "/v1/agents/replicas/%00/heartbeat",
            "/mcp/../v1/agents",
            "/v1/audit",
            "/v1/audit?after=%ff&wait=1e9",
            "/v1/audit?last=-1",
            "/v1/audit?after=0&limit=0",
            "/v1/audit?after=99999999999999999999999-1",
            "/v1/audit?after=1-1&wait=0.01&limit=1000",
        ]
    )

    @FUZZ
    @given(
        path=paths,
        method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
        body=st.one_of(json_value.map(lambda v: json.dumps(v).encode()), st.binary(max_size=100)),
        token=st.sampled_from([None, "nope", "efa_" + "x" * 43, fuzz_fleet.token]),
    )
    def one(path: str, method: str, body: bytes, token: str | None) -> None:
        sent = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
        _check(http.request(method, fuzz_fleet.url + path, content=body, headers=sent), (method, path, body[:100]))

    one()


def test_deeply_nested_arguments_are_refused_clearly_on_every_path(fuzz_fleet: Fleet, http: httpx.Client) -> None:
    """Issue 16, item 8: 1,000 levels of arguments were an HTTP 500 ("This is a bug in
    edgefleet") on the direct path and in a fan-out: orjson could read them but not write
    them again. Every depth gets an answer below 500; too deep is -32602 nesting_too_deep."""

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(tool=st.sampled_from(["echo.echo", "edgefleet.fanout"]), depth=st.integers(min_value=1, max_value=1023))
    def one(tool: str, depth: int) -> None:
        sent = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {KEY}",
            "mcp-name": tool,
            **DEEP_HEADERS,
        }
        resp = http.post(fuzz_fleet.mcp_url, content=_deep_call(tool, depth), headers=sent)
        _check(resp, (tool, depth))
        if depth > 200:
            error = resp.json()["error"]
            assert resp.status_code == 400 and error["code"] == -32602, resp.text[:300]
            # Past orjson's own 1024 levels the id cannot be read: the answer has none.
            assert error["data"]["code"] == "nesting_too_deep" and resp.json().get("id", 1) == 1

    one()


async def test_the_fleet_still_serves_after_the_fuzzing(fuzz_fleet: Fleet, http: httpx.Client) -> None:
    for _, proc in fuzz_fleet.dispatchers:
        assert proc.popen.poll() is None, proc.output()[-2000:]
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo.echo", "arguments": {"text": "still here"}, "_meta": META},
    }
    resp = http.post(
        fuzz_fleet.mcp_url,
        json=body,
        headers={
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": "echo.echo",
            "authorization": f"Bearer {KEY}",
        },
    )
    assert resp.status_code == 200 and "still here" in resp.text
    assert "Traceback" not in fuzz_fleet.dispatchers[0][1].output()
