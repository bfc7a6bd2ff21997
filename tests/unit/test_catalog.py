from typing import Any

from dispatcher.breaker import BreakerPolicy, CircuitBreaker
from dispatcher.catalog import Catalog
from dispatcher.fleet import Replica
from shared.models import ReplicaRecord

TOOL = {"name": "keywords", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}, "top": {"type": "integer", "minimum": 1}}, "required": ["text"]},
        "annotations": {"idempotentHint": True}}


def replica(agent: str, version: str, tools: list[dict[str, Any]], *, warm: bool = True, registered_at: float = 0) -> Replica:
    record = ReplicaRecord(replica_id=f"{agent}-{version}-{registered_at}", agent=agent, region="eu-west", url="http://x/mcp",
                           version=version, tools=tools, registered_at=registered_at)
    return Replica(record=record, client=None, breaker=CircuitBreaker(BreakerPolicy()), warm=warm,  # type: ignore[arg-type]
                   tool_names=frozenset(t["name"] for t in tools))


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
