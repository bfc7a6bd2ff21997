from typing import Any

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


def test_invalid_schema_does_not_break_the_catalog() -> None:
    bad = {"name": "odd", "inputSchema": {"type": "nonsense"}}
    entry = Catalog.build([replica("x", "1", [bad])]).get("x.odd")
    assert entry is not None and entry.validator is None and entry.validation_error({"a": 1}) is None


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
    invalid = weather_entry({"name": "odd", "outputSchema": {"type": "nonsense"}})
    assert invalid.output_validator is None and invalid.result_problem({"content": []}) is None
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
    import time

    hostile = {"type": "object", "properties": {"v": {"type": "string", "pattern": "(a+)+$"}}}
    entry = weather_entry({"name": "redos", "inputSchema": hostile, "outputSchema": hostile})
    started = time.perf_counter()
    problem = entry.validation_error({"v": "a" * 24 + "!"}) or ""
    result = entry.result_problem({"content": [], "structuredContent": {"v": "a" * 24 + "!"}}) or ""
    assert time.perf_counter() - started < 0.25
    assert problem.startswith("Invalid arguments for tool w.redos: at 'v': ") and "does not match" in problem
    assert result.startswith("Invalid result from tool w.redos: at 'structuredContent/v': ")
    assert entry.validation_error({"v": "a" * 24}) is None
