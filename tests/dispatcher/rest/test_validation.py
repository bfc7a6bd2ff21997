"""Input the REST surface refuses as the client's error, with a code that says what was
wrong (adversarial finding 9): control characters in an agent's URL, audit cursors Redis
cannot take, and query parameters of the wrong type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from edgefleet.dispatcher.app import Dispatcher

from tests.dispatcher.rest.conftest import FLEET_TOKEN

FLEET = {"authorization": f"Bearer {FLEET_TOKEN}"}


@pytest.fixture
async def http(dispatcher: Dispatcher) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dispatcher), base_url="http://edge") as client:
        yield client


def error(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    return body


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9301/mcp\r\nx: y",
        "http://127.0.0.1:9301/mcp\n",
        "http://127.0.0.1:9301/m cp",
        "http://127.0.0.1:9301/mcp\t",
        "http://127.0.0.1:9301/\x1b[31mcp",
        "http://127.0.0.1:9301/mcp\u2028",
        "http://127.0.0.1:9301/\u202emcp",
        "http://127.0.0.1:9301/mcp\x85",
    ],
)
async def test_a_url_with_whitespace_or_control_characters_is_refused(http: httpx.AsyncClient, url: str) -> None:
    resp = await http.post("/v1/agents", json={"name": "probe", "region": "eu-west", "url": url}, headers=FLEET)
    assert resp.status_code == 422 and error(resp)["code"] == "invalid_registration"
    assert [p["field"] for p in error(resp)["details"]["problems"]] == ["url"]


async def test_a_version_with_a_line_break_is_refused(http: httpx.AsyncClient) -> None:
    body = {"name": "probe", "region": "eu-west", "url": "http://127.0.0.1:9301/mcp", "version": "1.0\r\nforged"}
    resp = await http.post("/v1/agents", json=body, headers=FLEET)
    assert resp.status_code == 422 and error(resp)["details"]["problems"][0]["field"] == "version"


@pytest.mark.parametrize(
    "after", ["18446744073709551616-0", "1-18446744073709551616", "99999999999999999999-0", "99999999999999999999"]
)
async def test_an_audit_cursor_past_64_bits_is_the_clients_error(http: httpx.AsyncClient, after: str) -> None:
    resp = await http.get("/v1/audit", params={"after": after}, headers=FLEET)
    assert resp.status_code == 400 and error(resp)["code"] == "invalid_params", resp.text
    assert "2^64" in error(resp)["message"]


@pytest.mark.parametrize("after", ["18446744073709551615-18446744073709551615", "18446744073709551615", "0", "1-0"])
async def test_audit_cursors_up_to_64_bits_are_read(http: httpx.AsyncClient, after: str) -> None:
    resp = await http.get("/v1/audit", params={"after": after}, headers=FLEET)
    assert resp.status_code == 200, resp.text
    assert resp.json()["next"] == after or after == "0"


@pytest.mark.parametrize(
    ("query", "field"), [("limit=1e3", "limit"), ("wait=soon", "wait"), ("last=x&limit=y", "last")]
)
async def test_a_query_parameter_of_the_wrong_type_is_invalid_params_naming_it(
    http: httpx.AsyncClient, query: str, field: str
) -> None:
    resp = await http.get(f"/v1/audit?{query}", headers=FLEET)
    assert resp.status_code == 400 and error(resp)["code"] == "invalid_params", resp.text
    assert f"query parameter {field!r}" in error(resp)["message"]
    assert "body" not in error(resp)["message"]
    assert {p["in"] for p in error(resp)["details"]["problems"]} == {"query"}


async def test_a_registry_body_keeps_its_code(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/agents/replicas/r1/heartbeat", content=b"[[[", headers=FLEET)
    assert resp.status_code == 422 and error(resp)["code"] == "invalid_registration"
    assert error(resp)["message"] == "The request body is invalid."
