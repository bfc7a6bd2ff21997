"""Compiled schemas: jsonschema-rs gives the verdict where it implements the schema exactly
as jsonschema does, jsonschema explains every refusal (and decides wherever they could differ);
a schema with regexes is judged by jsonschema-rs alone, in linear time (Python's re backtracks)."""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import pytest

from edgefleet.dispatcher.fleet.schemas import compile_schema

D2020 = "https://json-schema.org/draft/2020-12/schema"
# (schema, instances): each instance's verdict must be jsonschema's own.
CASES: list[tuple[dict[str, Any], list[Any]]] = [
    (
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        [{"text": "hi"}, {}, {"text": 3}, {"text": "hi", "extra": 1}, [], None],
    ),
    (
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}}},
        [{"n": 1}, {"n": 0}, {"n": 1.0}, {"n": 1.5}, {"n": True}, {"n": 2**70}, {"n": "1"}],
    ),
    (  # 2020-12 vocabulary
        {
            "$schema": D2020,
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "number"}],
            "items": False,
        },
        [["a", 1], ["a"], ["a", "b"], ["a", 1, 2], []],
    ),
    (
        {
            "$schema": D2020,
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "dependentRequired": {"a": ["b"]},
            "unevaluatedProperties": False,
            "patternless": True,
        },
        [{"a": "x", "b": 1}, {"a": "x"}, {}, {"c": 1}],
    ),
    (
        {"$defs": {"pos": {"type": "number", "exclusiveMinimum": 0}}, "properties": {"p": {"$ref": "#/$defs/pos"}}},
        [{"p": 1}, {"p": 0}, {"p": -1}, {}],
    ),
    (
        {"oneOf": [{"type": "string"}, {"type": "integer"}], "not": {"const": "no"}},
        ["x", 3, "no", 1.5, None],
    ),
    (
        {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}], "additionalItems": False},
        [["a"], ["a", "b"], [1]],
    ),
    (  # enums, nested objects, arrays of objects (what pydantic-generated tool schemas look like)
        {
            "type": "object",
            "properties": {
                "mode": {"enum": ["fast", "slow"]},
                "rows": {"type": "array", "items": {"type": "object", "required": ["id"]}, "maxItems": 2},
            },
            "additionalProperties": False,
        },
        [
            {"mode": "fast"},
            {"mode": "other"},
            {"rows": [{"id": 1}]},
            {"rows": [{}]},
            {"rows": [{"id": 1}] * 3},
            {"x": 1},
        ],
    ),
]


@pytest.mark.parametrize(("schema", "instances"), CASES)
def test_the_verdict_is_jsonschema_s_and_the_fast_path_serves_plain_schemas(
    schema: dict[str, Any], instances: list[Any]
) -> None:
    compiled = compile_schema(schema, "t.t")
    assert compiled is not None and compiled.fast is not None
    reference = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    for instance in instances:
        expected = jsonschema.exceptions.best_match(reference.iter_errors(instance))
        assert compiled.is_valid(instance) == (expected is None), instance
        error = compiled.best_error(instance)
        assert (error is None) == (expected is None), instance
        if error is not None and expected is not None:
            assert (error.message, list(error.absolute_path)) == (expected.message, list(expected.absolute_path))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}},
        {"$schema": "http://json-schema.org/draft-03/schema#", "properties": {"a": {"type": "string"}}},
    ],
)
def test_formats_and_old_drafts_stay_with_jsonschema(schema: dict[str, Any]) -> None:
    compiled = compile_schema(schema, "t.t")
    assert compiled is not None and compiled.fast is None and compiled.judge is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"}}},
        {"type": "object", "patternProperties": {"^x-": {"type": "string"}}},
        {"properties": {"day": {"format": "date"}, "id": {"pattern": "^[a-z]+$"}}},  # a format too
    ],
)
def test_regexes_are_judged_by_jsonschema_rs_alone(schema: dict[str, Any]) -> None:
    compiled = compile_schema(schema, "t.t")
    assert compiled is not None and compiled.judge is not None and compiled.python is None


# A catastrophic-backtracking pattern and a string that fails it only at its very end: with
# Python's re each extra "a" doubled the time (27 of them held the event loop for 20 s).
HOSTILE = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(a+)+$"}}}


@pytest.mark.parametrize("length", [24, 10_000, 1_000_000])
def test_a_catastrophic_pattern_is_decided_and_explained_in_linear_time(length: int) -> None:
    compiled = compile_schema(HOSTILE, "t.t")
    assert compiled is not None
    started = time.perf_counter()
    assert compiled.is_valid({"x": "a" * length + "!"}) is False
    error = compiled.best_error({"x": "a" * length + "!"})
    assert time.perf_counter() - started < 0.25
    assert error is not None and list(error.absolute_path) == ["x"]
    assert error.message.endswith("does not match '(a+)+$'")  # worded as jsonschema words it
    assert compiled.best_error({"x": "a" * length}) is None


def test_patterns_keep_ecma_262_semantics_and_the_messages_of_jsonschema() -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": r"^\d{3}-\w+$"}, "n": {"type": "integer"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    }
    compiled = compile_schema(schema, "t.t")
    assert compiled is not None
    reference = jsonschema.Draft202012Validator(schema)
    for valid in ({"code": "123-abc_9"}, {"x-trace": "t"}, {"code": "123-a", "n": 2, "x-a": ""}):
        assert compiled.best_error(valid) is None and reference.is_valid(valid), valid
    for invalid in ({"code": "12-abc"}, {"code": "123-"}, {"code": "x123-abc"}):
        error, expected = compiled.best_error(invalid), jsonschema.exceptions.best_match(reference.iter_errors(invalid))
        assert error is not None and expected is not None
        assert (error.message, list(error.absolute_path)) == (expected.message, list(expected.absolute_path))
    # ECMA 262, as JSON Schema specifies: \d and \w are ASCII (Python's re took any Unicode digit/letter).
    assert compiled.best_error({"code": "\u0661\u0662\u0663-abc"}) is not None
    assert compiled.best_error({"code": "123-caf\u00e9"}) is not None
    # Every refusal names its field.
    extra = compiled.best_error({"other": 1})
    assert extra is not None and "'other' was unexpected" in extra.message
    typed = compiled.best_error({"x-a": 1})
    assert typed is not None and list(typed.absolute_path) == ["x-a"] and "not of type" in typed.message
    # Formats in a schema with regexes are still asserted (by jsonschema-rs).
    dated = compile_schema({"properties": {"day": {"format": "date"}, "id": {"pattern": "^[a-z]+$"}}}, "t.t")
    assert dated is not None and dated.best_error({"day": "not a date", "id": "ab"}) is not None


@pytest.mark.parametrize(
    "pattern",
    [
        "^(?=.*[0-9]).{8,}$",  # lookahead
        "^(a)\\1$",  # backreference
    ],
)
def test_a_pattern_only_a_backtracking_engine_runs_is_left_to_the_agent(
    pattern: str, caplog: pytest.LogCaptureFixture
) -> None:
    schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": pattern}}}
    assert compile_schema(schema, "t.t") is None
    assert "cannot be checked with linear-time regexes" in caplog.text and "passed unvalidated" in caplog.text
    draft3 = {"$schema": "http://json-schema.org/draft-03/schema#", "properties": {"p": {"pattern": "(a+)+$"}}}
    assert compile_schema(draft3, "t.t") is None


def test_formats_are_asserted_as_before() -> None:
    compiled = compile_schema({"properties": {"day": {"type": "string", "format": "date"}}}, "t.t")
    assert compiled is not None
    error = compiled.best_error({"day": "not a date"})
    assert (
        error is not None and list(error.absolute_path) == ["day"] and "'not a date' is not a 'date'" in error.message
    )


def test_a_remote_ref_is_never_fetched() -> None:
    schema = {"properties": {"a": {"$ref": "http://127.0.0.1:9/schema.json"}}}
    compiled = compile_schema(schema, "t.t")
    # jsonschema-rs refuses it offline (no connection attempted); jsonschema resolves nothing
    # either, and the catalog passes such arguments through unvalidated (test_catalog).
    assert compiled is not None and compiled.fast is None


def test_an_invalid_schema_is_not_compiled() -> None:
    assert compile_schema({"type": "nonsense"}, "t.t") is None
    assert compile_schema("not a schema", "t.t") is None
