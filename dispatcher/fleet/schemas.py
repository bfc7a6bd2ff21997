"""A tool's JSON Schema compiled for the call path: a fast verdict, the same explanations.

Every call's arguments (and every structured result of a tool with an ``outputSchema``) are
checked. Most are valid, so the verdict is asked of ``jsonschema-rs`` (Rust, ~1-3 µs for a
tool's arguments against ~20-60 µs for the ``jsonschema`` package's ``iter_errors``); only
an instance it refuses is explained by the ``jsonschema`` validator, whose ``best_match``
error names the field exactly as before, and whose verdict is the one that counts. So the
two can never disagree in a client's eyes: a refusal is always ``jsonschema``'s, with its
message, and ``jsonschema-rs`` alone can only say "valid".

That is exact only where the two implement the same keywords the same way. They do not
everywhere: ``format`` (which formats are asserted depends on the optional packages the
``jsonschema`` package finds) and regular expressions (``pattern``, ``patternProperties``:
ECMA 262 in Rust, Python's ``re`` here). Schemas using those stay with ``jsonschema``
alone, as do drafts ``jsonschema-rs`` lacks (draft 3) and anything it cannot compile.
Remote ``$ref`` are never fetched by either (``offline``): an agent's schema must not make
the dispatcher open connections.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import jsonschema
import jsonschema_rs

log = logging.getLogger("edgefleet.schemas")

# Keywords whose semantics differ between the two implementations (see the module docstring).
PYTHON_ONLY_KEYWORDS = frozenset({"format", "pattern", "patternProperties"})
FAST_CLASSES: dict[str, Any] = {
    "Draft202012Validator": jsonschema_rs.Draft202012Validator,
    "Draft201909Validator": jsonschema_rs.Draft201909Validator,
    "Draft7Validator": jsonschema_rs.Draft7Validator,
    "Draft6Validator": jsonschema_rs.Draft6Validator,
    "Draft4Validator": jsonschema_rs.Draft4Validator,
}


def _keywords(schema: Any) -> Iterator[str]:
    """Every key of every object in the schema (over-approximates keywords: a property named
    ``format`` counts too, which only costs that schema the fast path)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield from node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class CompiledSchema:
    """``is_valid`` for the verdict (fast where possible), ``iter_errors`` for the explanation."""

    __slots__ = ("python", "fast")

    def __init__(self, python: Any, fast: Any | None) -> None:
        self.python = python  # a jsonschema validator (its verdict and messages count)
        self.fast = fast  # a jsonschema-rs validator, or None

    def is_valid(self, instance: Any) -> bool:
        if self.fast is not None:
            try:
                if self.fast.is_valid(instance):
                    return True
            except Exception:  # noqa: BLE001 - e.g. an int beyond 64 bits: let jsonschema decide
                pass
        return bool(self.python.is_valid(instance))

    def iter_errors(self, instance: Any) -> Iterator[jsonschema.exceptions.ValidationError]:
        return iter(self.python.iter_errors(instance))

    def best_error(self, instance: Any) -> jsonschema.exceptions.ValidationError | None:
        """None when ``instance`` is valid, else the error ``jsonschema`` picks as most relevant."""
        if self.is_valid(instance):
            return None
        error: jsonschema.exceptions.ValidationError | None = jsonschema.exceptions.best_match(
            self.python.iter_errors(instance)
        )
        return error


def compile_schema(schema: Any, tool: str, which: str = "inputSchema") -> CompiledSchema | None:
    """The compiled schema, or None (no schema, or an invalid one: logged, and then the
    arguments pass unvalidated / results unchecked, as the agent is the authority)."""
    if not isinstance(schema, dict):
        return None
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        python = cls(schema, format_checker=cls.FORMAT_CHECKER)
        # Exercise it once now: the first real call must not pay for lazy set-up.
        with contextlib.suppress(Exception):  # e.g. an unresolvable $ref: reported at call time
            python.is_valid({})
    except jsonschema.exceptions.SchemaError as exc:
        unchecked = "arguments are passed unvalidated" if which == "inputSchema" else "results are passed unchecked"
        log.warning("tool %s has an invalid %s (%s); %s", tool, which, exc.message, unchecked)
        return None
    return CompiledSchema(python, _fast(schema, cls.__name__, tool, which))


def _fast(schema: dict[str, Any], draft: str, tool: str, which: str) -> Any | None:
    fast_cls = FAST_CLASSES.get(draft)
    if fast_cls is None or not PYTHON_ONLY_KEYWORDS.isdisjoint(_keywords(schema)):
        return None
    try:
        fast = fast_cls(schema, offline=True)
        fast.is_valid({})
    except Exception as exc:  # noqa: BLE001 - e.g. a $ref it cannot resolve offline: jsonschema alone
        log.debug("tool %s: %s checked by jsonschema only (%s)", tool, which, exc)
        return None
    return fast


__all__ = ["CompiledSchema", "compile_schema"]
