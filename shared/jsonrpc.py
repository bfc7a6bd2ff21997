"""Just enough JSON-RPC 2.0 for an MCP edge: parse, validate the envelope, build replies.

Parsing uses orjson only; nothing is turned into SDK objects (docs/architecture.md: pydantic
round trips per call cost the peers milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from edgefleet.shared import sse
from edgefleet.shared.errors import EdgefleetError, InvalidRequest, NestingTooDeep, ParseError

MAX_ID_LENGTH = 256
# Objects and arrays nested in one message, the message itself being level 1. orjson reads
# up to 1024 levels but writes only 254, and the dispatcher writes what it read again
# (a call to an agent, a fan-out's sub-calls, a task's stored request): deeper messages
# are refused at parse, before anything walks or re-encodes them (principle 8).
MAX_DEPTH = 64
# An agent's answer is relayed as bytes on the direct path, whatever its depth; where the
# dispatcher writes it again (a fan-out's sub-results, a pipeline's trace, a task's stored
# result) it wraps it in a few levels of its own, so it may nest at most this deep there.
MAX_RESULT_DEPTH = 128


@dataclass(slots=True)
class Message:
    """One parsed client message: a request (has ``id``), a notification, or a response."""

    raw: dict[str, Any]
    method: str | None
    id: Any
    params: dict[str, Any]
    kind: str  # "request" | "notification" | "response"


def parse(body: bytes) -> Message:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # deeper than even orjson reads (1024): same answer, no id to give back
            raise _too_deep(None) from None
        raise ParseError(f"The body is not valid JSON: {exc}") from None
    if isinstance(data, list):
        raise InvalidRequest("JSON-RPC batches are not supported by MCP since 2025-06-18; send one message per POST.")
    if not isinstance(data, dict):
        raise InvalidRequest("A JSON-RPC message must be a JSON object.")
    # Cheap first: a message with fewer brackets than the limit cannot be nested deeper.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and nested_deeper(data, MAX_DEPTH):
        raise _too_deep(_safe_id(data.get("id")))
    if data.get("jsonrpc") != "2.0":
        raise InvalidRequest('The "jsonrpc" member must be exactly "2.0".', data={"id": _safe_id(data.get("id"))})
    if "method" not in data:
        if "id" in data and ("result" in data or "error" in data):
            return Message(data, None, data.get("id"), {}, "response")
        raise InvalidRequest('A JSON-RPC request needs a "method".', data={"id": _safe_id(data.get("id"))})
    method = data["method"]
    if not isinstance(method, str) or not method:
        raise InvalidRequest('"method" must be a non-empty string.', data={"id": _safe_id(data.get("id"))})
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest('"params" must be an object in MCP.', data={"id": _safe_id(data.get("id"))})
    if "id" not in data:
        return Message(data, method, None, params, "notification")
    request_id = data["id"]
    if not _valid_id(request_id):
        raise InvalidRequest('"id" must be a string or an integer (and not null).')
    return Message(data, method, request_id, params, "request")


def _too_deep(request_id: Any) -> NestingTooDeep:
    return NestingTooDeep(
        f"The message nests objects and arrays more than {MAX_DEPTH} levels deep; flatten the arguments.",
        data={"id": request_id, "max_depth": MAX_DEPTH},
    )


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest more than ``limit`` levels (``value``
    itself is level 1). Iterative, so no depth can make it recurse."""
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def _safe_id(value: Any) -> Any:
    return value if _valid_id(value) else None


def result_body(request_id: Any, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_body(request_id: Any, error: EdgefleetError) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "error": error.to_jsonrpc()}
    if request_id is None:
        # The spec allows an id-less error when the id could not be read.
        body.pop("id")
    return orjson.dumps(body)


def relayed_error_body(request_id: Any, error: dict[str, Any]) -> bytes:
    """An error answered by someone else (an agent), passed on as it came, under our caller's id."""
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})


def is_response(message: Any) -> bool:
    """A JSON-RPC response (has an id, is not a request or notification)."""
    return isinstance(message, dict) and "id" in message and "method" not in message


_NO_ID = object()
ANY_ID = object()  # response_problem's request_id when any id will do (a stored task's answer)


def response_problem(message: Any, request_id: Any) -> str | None:
    """Why ``message`` is not a JSON-RPC 2.0 response to the request ``request_id`` (None:
    it is one; a null ``error`` beside a result, or null ``result`` beside an error, is
    removed from it). What an agent answers is relayed to a client that matches it by its id
    and reads ``result`` or ``error``: a wrong id left an official SDK client waiting forever."""
    if not isinstance(message, dict):
        return "not a JSON object"
    if message.get("jsonrpc") != "2.0":
        return 'no "jsonrpc": "2.0"'
    if "method" in message:
        return "a request or notification, not a response"
    ident = message.get("id", _NO_ID)
    if ident is _NO_ID or (request_id is not ANY_ID and (ident != request_id or type(ident) is not type(request_id))):
        return "no id" if ident is _NO_ID else f"the id {str(ident)[:64]!r}, not the call's"
    # Some servers write the member they do not use as null: it counts as absent (and goes).
    if "result" in message and "error" in message:
        if message["error"] is None:
            del message["error"]
        elif message["result"] is None:
            del message["result"]
    if ("result" in message) == ("error" in message):
        return "both a result and an error" if "result" in message else "neither a result nor an error"
    if "result" in message:
        return None if isinstance(message["result"], dict) else "a result that is not an object"
    error = message["error"]
    code = error.get("code") if isinstance(error, dict) else None
    if type(code) is not int or not isinstance(error.get("message"), str):
        return "an error that is not {code: integer, message: string}"
    return None


def checked_response(body: bytes, request_id: Any) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(the JSON-RPC response to ``request_id`` in a JSON body, None, whole) or (None, what is
    wrong, whole); ``whole``: the body is that one message.

    A body of newline-separated messages whose last one is the response (notifications
    before it) passes too, not whole: the conformance suite's reference server streams its
    progress that way under ``application/json``."""
    whole = True
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        message, whole = _last_of_lines(body), False
        if message is None:
            return None, "not JSON", whole
    problem = response_problem(message, request_id)
    return (message, None, whole) if problem is None else (None, problem, whole)


def _last_of_lines(body: bytes) -> Any:
    """The last of a body's newline-separated JSON messages, if every line is one and all
    before the last are notifications; else None."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) < 2:
        return None
    try:
        messages = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError:
        return None
    notifications = all(isinstance(m, dict) and "method" in m and "id" not in m for m in messages[:-1])
    return messages[-1] if notifications else None


def last_response(body: bytes, *, stream: bool) -> dict[str, Any] | None:
    """The JSON-RPC response in an answer body: the last response among its SSE events
    (``stream``), or the JSON body itself (None when there is none, or it is not JSON)."""
    if stream:
        found = None
        for message in sse.messages(body):
            if is_response(message):
                found = message
        return found
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None
