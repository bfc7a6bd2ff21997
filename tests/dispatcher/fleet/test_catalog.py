import time
from typing import Any

import pytest

from edgefleet.dispatcher.fleet.breaker import BreakerPolicy, CircuitBreaker
from edgefleet.dispatcher.fleet.catalog import Catalog
from edgefleet.dispatcher.fleet.replica import Replica
from edgefleet.shared.models import ReplicaRecord

TOOL = {
    "name": "keywords",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}, "top": {"type": "integer", "minimum": 1}},
        "required": ["text"],
    },
    "annotations": {"idempotentHint": True},
}


def replica(
    agent: str, version: str, tools: list[dict[str, Any]], *, warm: bool = True, registered_at: float = 0
) -> Replica:
    record = ReplicaRecord(
        replica_id=f"{agent}-{version}-{registered_at}",
        agent=agent,
        region="eu-west",
        url="http://x/mcp",
        version=version,
        tools=tools,
        registered_at=registered_at,
    )
    return Replica(
        record=record,
        client=None,
        breaker=CircuitBreaker(BreakerPolicy()),
        warm=warm,  # type: ignore[arg-type]
        tool_names=frozenset(t["name"] for t in tools),
    )


def test_only_warm_replicas_contribute() -> None:
    catalog = Catalog.build([replica("text", "1", [TOOL], warm=False)])
    assert catalog.entries == {}


def test_entry_keeps_schema_and_annotations_and_validates() -> None:
    entry = Catalog.build([replica("text", "1", [TOOL])]).get("text.keywords")
    assert entry is not None and entry.idempotent and entry.upstream_name == "keywords"
    assert entry.definition["annotations"] == {"idempotentHint": True}
    assert entry.validation_error({"text": "hi"}) is None
    assert "'top'" in (entry.validation_error({"text": "hi", "top": 0}) or "")
    assert "text" in (entry.validation_error({}) or "")


def test_newest_version_defines_the_tools_and_routes_only_to_replicas_that_have_them() -> None:
    new_tool = {"name": "summarize", "inputSchema": {"type": "object"}}
    old, new = replica("text", "1.0.0", [TOOL]), replica("text", "1.1.0", [TOOL, new_tool], registered_at=1)
    catalog = Catalog.build([old, new])
    assert set(catalog.entries) == {"text.keywords", "text.summarize"}
    assert catalog.entries["text.summarize"].replicas == [new]
    assert set(catalog.entries["text.keywords"].replicas) == {old, new}


def test_an_agent_with_a_schema_clients_cannot_read_is_left_out_of_the_catalog(caplog: Any) -> None:
    """Adversarial finding 5: one such tool in tools/list failed the official SDK's list_tools
    for the whole catalog. Admission refuses it (check_tool_limits); a list that reaches a
    catalog anyway (stored before the check) leaves its agent out, logged, like a conflict."""
    bad = {"name": "odd", "inputSchema": {"type": "nonsense"}}
    prepared: dict[tuple[str, str], Any] = {}
    odd = replica("x", "1", [bad, TOOL])
    odd.record.tools_hash = "h"
    catalog = Catalog.build([odd, replica("text", "1", [TOOL])], prepared=prepared)
    assert set(catalog.entries) == {"text.keywords"} and catalog.view("x") is None
    assert all(d["name"] != "x.odd" for d in catalog.definitions)
    assert "agent x left out of the catalog: Tool 'odd' of agent 'x' has an invalid inputSchema" in caplog.text
    assert prepared[("x", "h")].refused is not None  # checked once per list, not per rebuild


def test_schema_with_a_dangling_ref_passes_arguments_through() -> None:
    dangling = {"name": "refs", "inputSchema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}
    entry = Catalog.build([replica("x", "1", [dangling])]).get("x.refs")
    assert entry is not None and entry.validation_error({"a": 1}) is None


def test_cache_ttl_only_for_read_only_tools() -> None:
    cached = {"name": "lookup", "annotations": {"readOnlyHint": True}, "_meta": {"dev.edgefleet/cacheTtlS": 30}}
    writes = {"name": "store", "annotations": {"readOnlyHint": False}, "_meta": {"dev.edgefleet/cacheTtlS": 30}}
    catalog = Catalog.build([replica("kv", "1", [cached, writes])])
    assert catalog.entries["kv.lookup"].cache_ttl_s == 30
    assert catalog.entries["kv.store"].cache_ttl_s == 0


def test_replicas_are_grouped_by_region() -> None:
    a, b = replica("text", "1", [TOOL]), replica("text", "1", [TOOL], registered_at=1)
    b.record.region = "us-east"
    entry = Catalog.build([a, b]).entries["text.keywords"]
    assert entry.by_region == {"eu-west": [a], "us-east": [b]}


WEATHER = {
    "name": "weather",
    "inputSchema": {"type": "object"},
    "outputSchema": {
        "type": "object",
        "properties": {
            "celsius": {"type": "number"},
            "days": {"type": "array", "items": {"type": "object", "required": ["day"]}},
        },
        "required": ["celsius"],
    },
}


def weather_entry(tool: dict[str, Any] = WEATHER):  # type: ignore[no-untyped-def]
    entry = Catalog.build([replica("w", "1", [tool])]).get(f"w.{tool['name']}")
    assert entry is not None
    return entry


def test_a_conforming_structured_result_has_no_problem() -> None:
    entry = weather_entry()
    assert entry.output_validator is not None
    assert entry.result_problem({"content": [], "structuredContent": {"celsius": 21.5, "days": [{"day": 1}]}}) is None


def test_a_non_conforming_result_names_the_failing_field() -> None:
    entry = weather_entry()
    problem = entry.result_problem({"content": [], "structuredContent": {"celsius": "hot"}}) or ""
    assert (
        "w.weather" in problem
        and "'structuredContent/celsius'" in problem
        and "'hot' is not of type 'number'" in problem
    )
    nested = entry.result_problem({"content": [], "structuredContent": {"celsius": 1, "days": [{"day": 1}, {}]}}) or ""
    assert "'structuredContent/days/1'" in nested and "'day' is a required property" in nested


def test_missing_structured_content_is_a_problem_when_a_schema_is_declared() -> None:
    problem = weather_entry().result_problem({"content": [{"type": "text", "text": "21.5"}]}) or ""
    assert "no structuredContent" in problem
    # Present but null is checked like any other value (the 2026 spec allows any JSON value).
    assert "None is not of type 'object'" in (
        weather_entry().result_problem({"content": [], "structuredContent": None}) or ""
    )


def test_tool_errors_and_non_final_results_are_not_checked() -> None:
    entry = weather_entry()
    assert entry.result_problem({"content": [{"type": "text", "text": "boom"}], "isError": True}) is None
    assert entry.result_problem({"resultType": "input_required", "inputRequests": {}}) is None
    assert entry.result_problem({"resultType": "complete", "content": []}) is not None


def test_tools_without_an_output_schema_are_never_checked() -> None:
    entry = Catalog.build([replica("text", "1", [TOOL])]).get("text.keywords")
    assert entry is not None and entry.output_validator is None
    assert entry.result_problem({"content": [], "structuredContent": "anything"}) is None
    assert entry.result_problem({"content": []}) is None


def test_an_unusable_output_schema_passes_results_unchecked() -> None:
    dangling = weather_entry(
        {"name": "refs", "outputSchema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}
    )
    assert dangling.result_problem({"content": [], "structuredContent": {"a": 1}}) is None


def test_a_tool_list_is_compiled_once_across_rebuilds_and_dropped_when_unused(monkeypatch: Any) -> None:
    """Every rebuild (any replica warming or leaving) compiled every schema of every agent
    again: ~1 ms a schema on the event loop, 0.8 s for an agent of 1,000 tools."""
    import asyncio

    from edgefleet.dispatcher.fleet import catalog as catalog_module
    from edgefleet.dispatcher.fleet.catalog import Prepared, check_tool_limits
    from edgefleet.dispatcher.fleet.registry import tools_hash
    from edgefleet.shared.errors import ToolTooLarge, TooManyTools

    compiled: list[str] = []
    real = catalog_module.compile_schema
    monkeypatch.setattr(
        catalog_module,
        "compile_schema",
        lambda schema, tool, which="inputSchema": compiled.append(tool) or real(schema, tool, which),
    )
    tools = [{**TOOL, "name": f"t{i}"} for i in range(50)] + [{"name": "other", "inputSchema": {"type": "object"}}]
    one = replica("wide", "1", tools)
    one.record.tools_hash = tools_hash(tools)
    prepared: dict[tuple[str, str], Prepared] = {}
    first = Catalog.build([one], prepared=prepared)
    assert len(first.entries) == 51 and len(compiled) == 3  # each distinct schema once (two inputs, no output)
    compiled.clear()
    second = Catalog.build([one, replica("text", "1", [TOOL], warm=False)], prepared=prepared)
    assert compiled == [] and second.get("wide.t7") is not first.get("wide.t7")  # new entries, same work
    assert second.entries["wide.t7"].validation_error({"text": 1}) is not None
    Catalog.build([], prepared=prepared)
    assert prepared == {}
    # Prepared ahead of the catalog, giving the loop a turn: the same result.
    ahead = asyncio.run(Prepared.prepare("wide", tools, ()))
    assert ahead.mapping == Prepared.of("wide", tools, ()).mapping
    check_tool_limits("wide", tools, max_tools=51, max_tool_bytes=1024)
    for limits, error in (
        ({"max_tools": 50, "max_tool_bytes": 1024}, TooManyTools),
        ({"max_tools": 51, "max_tool_bytes": 100}, ToolTooLarge),
    ):
        try:
            check_tool_limits("wide", tools, **limits)
        except error as refused:
            assert refused.http_status == 422 and refused.data["agent"] == "wide"
        else:
            raise AssertionError(f"{limits} let the list through")


def test_a_catastrophic_pattern_cannot_stall_argument_or_result_checks() -> None:
    """Adversarial finding 1: Python's re on the event loop took 20 s for one agent's
    pattern "(a+)+$" and 27 characters; regexes now run in linear time (fleet/schemas.py)."""
    hostile = {"type": "object", "properties": {"v": {"type": "string", "pattern": "(a+)+$"}}}
    entry = weather_entry({"name": "redos", "inputSchema": hostile, "outputSchema": hostile})
    started = time.perf_counter()
    problem = entry.validation_error({"v": "a" * 24 + "!"}) or ""
    result = entry.result_problem({"content": [], "structuredContent": {"v": "a" * 24 + "!"}}) or ""
    assert time.perf_counter() - started < 0.25
    assert problem.startswith("Invalid arguments for tool w.redos: at 'v': ") and "does not match" in problem
    assert result.startswith("Invalid result from tool w.redos: at 'structuredContent/v': ")
    assert entry.validation_error({"v": "a" * 24}) is None


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"inputSchema": {"type": "nonsense"}}, "inputSchema", '"type" is "nonsense", not "object"'),
    ({"inputSchema": [1, 2]}, "inputSchema", "it is an array, not a JSON Schema object"),
    ({"inputSchema": None}, "inputSchema", "it is null"),
    ({"inputSchema": {"properties": {}}}, "inputSchema", '"type" is null, not "object"'),
    ({"inputSchema": {"type": "string"}}, "inputSchema", 'not "object"'),
    ({"outputSchema": [1]}, "outputSchema", "it is an array"),
    ({"outputSchema": {"type": "nonsense"}}, "outputSchema", '"type" is "nonsense", not a JSON Schema type'),
    ({"outputSchema": {"type": []}}, "outputSchema", "not a JSON Schema type"),
]


@pytest.mark.parametrize(("fields", "which", "reason"), REFUSED)
def test_registration_refuses_a_schema_mcp_clients_cannot_read(fields: dict[str, Any], which: str, reason: str) -> None:
    from edgefleet.dispatcher.fleet.catalog import check_tool_limits
    from edgefleet.shared.errors import InvalidToolSchema

    tools = [TOOL, {"name": "odd", **fields}]
    with pytest.raises(InvalidToolSchema) as refused:
        check_tool_limits("x", tools, max_tools=10, max_tool_bytes=65536)  # registration and static agents
    error = refused.value
    assert error.http_status == 422 and error.code == "invalid_tool_schema" and error.jsonrpc_code == -31421
    assert error.data["agent"] == "x" and error.data["tool"] == "odd" and error.data["schema"] == which
    assert error.message.startswith(f"Tool 'odd' of agent 'x' has an invalid {which}: ") and reason in error.message


def test_schemas_clients_can_read_are_accepted_without_fetching_anything() -> None:
    from edgefleet.dispatcher.fleet.catalog import check_tool_limits

    tools = [
        {"name": "bare"},  # the dispatcher lists it with {"type": "object"}
        {"name": "list", "inputSchema": {"type": "object"}, "outputSchema": {"type": "array"}},  # 2026-07-28
        {"name": "none", "inputSchema": {"type": "object"}, "outputSchema": None},
        {"name": "d7", "inputSchema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}},
        {"name": "d4", "inputSchema": {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"}},
        # An unknown dialect is not judged at registration, and never fetched (no route to it).
        {"name": "custom", "inputSchema": {"$schema": "http://10.255.255.1/schema", "type": "object"}},
        {"name": "ref", "inputSchema": {"type": "object", "properties": {"a": {"$ref": "http://10.255.255.1/a"}}}},
        # Deeper mistakes that clients accept: listed, left unchecked by the dispatcher (logged).
        {"name": "deep", "inputSchema": {"type": "object", "properties": {"a": {"type": "x"}}}},
        {
            "name": "req",
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": ["object", "null"], "required": "v"},
        },
    ]
    started = time.perf_counter()
    check_tool_limits("x", tools, max_tools=10, max_tool_bytes=65536)
    assert time.perf_counter() - started < 0.5
    assert set(Catalog.build([replica("x", "1", tools)]).entries) == {f"x.{t['name']}" for t in tools}
