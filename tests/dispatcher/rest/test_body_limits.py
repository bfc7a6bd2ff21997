"""REST bodies are bounded and, on authenticated routes, read only after the credentials
were accepted (adversarial finding 2: four unauthenticated chunked 250 MB bodies to
/v1/agents took the dispatcher from 249 MB to 2.4 GB before it answered 401)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from edgefleet.dispatcher.app import Dispatcher

from tests.dispatcher.rest.conftest import FLEET_TOKEN, MAX_BODY_BYTES

CHUNK = 16 * 1024
BODY_ROUTES = ["/v1/agents", "/v1/agents/replicas/r1/heartbeat", "/v1/tasks/t1/cancel"]


class EndlessBody:
    """A client sending a chunked body four times the bound (endless as far as the bound
    goes, finite for an app without it); counts the bytes the app pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        self.pulled += CHUNK
        return {"type": "http.request", "body": b"a" * CHUNK, "more_body": self.pulled < 4 * MAX_BODY_BYTES}


async def post(
    app: Dispatcher, path: str, *, authorization: str | None = None, length: int | str | None = None
) -> tuple[int, dict[str, Any], EndlessBody]:
    """POST ``path`` at the ASGI level: chunked, or with a declared ``length``."""
    headers = [(b"host", b"edge"), (b"content-type", b"application/json")]
    headers.append(
        (b"content-length", str(length).encode()) if length is not None else (b"transfer-encoding", b"chunked")
    )
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("edge", 80),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    body = EndlessBody()
    await app(scope, body, send)
    status = sent[0]["status"]
    answer = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    return status, answer, body


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"])
async def test_a_body_without_valid_credentials_is_refused_before_a_byte_is_read(
    dispatcher: Dispatcher, path: str, authorization: str | None
) -> None:
    status, answer, body = await post(dispatcher, path, authorization=authorization)
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert body.pulled == 0


async def test_the_refusal_is_audited_like_the_routes_own(dispatcher: Dispatcher) -> None:
    await post(dispatcher, "/v1/agents", authorization="Bearer wrong-token")
    events = [orjson.loads(e) for e in dispatcher.audit._buffer]
    assert [(e["event"], e["path"]) for e in events] == [("auth.failure", "/v1/agents")]


async def test_a_declared_length_over_the_bound_is_413_at_once(dispatcher: Dispatcher) -> None:
    status, answer, body = await post(
        dispatcher, "/v1/agents", authorization=f"Bearer {FLEET_TOKEN}", length=MAX_BODY_BYTES + 1
    )
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    assert "EDGEFLEET_MAX_BODY_BYTES" in answer["error"]["message"]
    assert body.pulled == 0


async def test_an_absurd_declared_length_is_413_too(dispatcher: Dispatcher) -> None:
    status, answer, _ = await post(dispatcher, "/v1/agents", authorization=f"Bearer {FLEET_TOKEN}", length="9" * 5000)
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("path", BODY_ROUTES[:2])
async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_bound(dispatcher: Dispatcher, path: str) -> None:
    status, answer, body = await post(dispatcher, path, authorization=f"Bearer {FLEET_TOKEN}")
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    assert MAX_BODY_BYTES < body.pulled <= MAX_BODY_BYTES + CHUNK


async def test_bodies_under_the_bound_still_reach_the_routes(dispatcher: Dispatcher) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dispatcher), base_url="http://edge") as http:
        fleet = {"authorization": f"Bearer {FLEET_TOKEN}"}
        invalid = await http.post(
            "/v1/agents", json={"name": "Bad Name", "region": "eu-west", "url": "x"}, headers=fleet
        )
        assert invalid.status_code == 422, invalid.text
        assert {p["field"] for p in invalid.json()["error"]["details"]["problems"]} == {"name", "url"}
        beat = await http.post("/v1/agents/replicas/r1/heartbeat", json={"inflight": -1}, headers=fleet)
        assert beat.status_code == 422 and beat.json()["error"]["details"]["problems"][0]["field"] == "inflight"
        assert (await http.get("/healthz")).json() == {"status": "ok"}
