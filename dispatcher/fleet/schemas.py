"""A tool's JSON Schema compiled for the call path: a fast verdict, the same explanations.

Every call's arguments (and every structured result of a tool with an ``outputSchema``) are
checked. Most are valid, so the verdict is asked of ``jsonschema-rs`` (Rust, ~1-3 µs for a
tool's arguments against ~20-60 µs for the ``jsonschema`` package's ``iter_errors``); only
an instance it refuses is explained by the ``jsonschema`` validator, whose ``best_match``
error names the field exactly as before, and whose verdict is the one that counts. So the
two can never disagree in a client's eyes: a refusal is always ``jsonschema``'s, with its
message, and ``jsonschema-rs`` alone can only say "valid".

That is exact only where the two implement the same keywords the same way. ``format``
differs (which formats are asserted depends on the optional packages the ``jsonschema``
package finds): such schemas stay with ``jsonschema`` alone, as do drafts ``jsonschema-rs``
lacks (draft 3) and anything it cannot compile.

Regular expressions (``pattern``, ``patternProperties``) differ too (ECMA 262 in Rust,
Python's ``re`` in ``jsonschema``), and they must never run in ``re`` at all: it
backtracks, so one agent's ``"(a+)+$"`` and a 27-character string held the event loop
(every call, every heartbeat) for 20 s. A schema with a regex is therefore judged *and*
explained by ``jsonschema-rs`` alone, its regexes compiled for Rust's ``regex`` engine,
whose matching is linear in the string whatever the pattern; ``jsonschema`` only checks
that schema. That is also the dialect JSON Schema specifies: ECMA 262 (``\\d`` and
``\\w`` are ASCII, where ``re`` took any Unicode digit or letter). A failed ``pattern``
is worded as ``jsonschema`` words it; formats in such a schema are asserted by
``jsonschema-rs``. A pattern the linear engine cannot run (lookaround, backreferences)
makes the dispatcher leave that schema unevaluated, logged, as any schema it cannot
evaluate: the agent is the authority on its own tool. (``fancy_regex``, the backtracking
alternative, is no answer: its backtrack limit does not bound its scan; ``(?=a)a*$`` took
0.7 s on 30,000 characters.)

Remote ``$ref`` are never fetched by either (``offline``): an agent's schema must not make
the dispatcher open connections.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import jsonschema
import jsonschema_rs

log = logging.getLogger("edgefleet.schemas")

# Keywords whose semantics differ between the two implementations (see the module docstring).
PYTHON_ONLY_KEYWORDS = frozenset({"format"})
# Keywords that match regexes: never evaluated by Python's re (see the module docstring).
REGEX_KEYWORDS = frozenset({"pattern", "patternProperties"})
# Rust's regex crate: linear-time matching; patterns needing backtracking fail to compile.
LINEAR_REGEXES = jsonschema_rs.RegexOptions()
# A refusal is explained from at most this many of jsonschema-rs's errors.
MAX_EXPLAINED_ERRORS = 64
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
    """``is_valid`` for the verdict (fast where possible), ``best_error`` for the explanation.

    With ``judge`` (a jsonschema-rs validator) the schema has regexes: the judge alone
    decides and explains, and ``python`` is never run on an instance."""

    __slots__ = ("python", "fast", "judge")

    def __init__(self, python: Any, fast: Any | None, judge: Any | None = None) -> None:
        self.python = python  # a jsonschema validator (its verdict and messages count)
        self.fast = fast  # a jsonschema-rs validator, or None
        self.judge = judge  # a jsonschema-rs validator with linear-time regexes, or None

    def is_valid(self, instance: Any) -> bool:
        if self.judge is not None:
            return bool(self.judge.is_valid(instance))
        if self.fast is not None:
            try:
                if self.fast.is_valid(instance):
                    return True
            except Exception:  # noqa: BLE001 - e.g. an int beyond 64 bits: let jsonschema decide
                pass
        return bool(self.python.is_valid(instance))

    def iter_errors(self, instance: Any) -> Iterator[jsonschema.exceptions.ValidationError]:
        if self.judge is not None:
            return (_explained(error) for error in self.judge.iter_errors(instance))
        return iter(self.python.iter_errors(instance))

    def best_error(self, instance: Any) -> jsonschema.exceptions.ValidationError | None:
        """None when ``instance`` is valid, else the error ``jsonschema`` picks as most relevant."""
        if self.is_valid(instance):
            return None
        errors = self.iter_errors(instance)
        if self.judge is not None:
            errors = itertools.islice(errors, MAX_EXPLAINED_ERRORS)
        error: jsonschema.exceptions.ValidationError | None = jsonschema.exceptions.best_match(errors)
        return error


def _explained(error: Any) -> jsonschema.exceptions.ValidationError:
    """A jsonschema-rs error as a ``jsonschema`` one (what callers read: ``message``, the
    path; ``validator`` for ``best_match``). A failed pattern is worded as ``jsonschema``
    words it, which is also what clients saw before regexes moved to Rust."""
    keywords = [part for part in error.schema_path if isinstance(part, str)]
    message = error.message
    if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Pattern):
        message = f"{error.instance!r} does not match {error.kind.pattern!r}"
    return jsonschema.exceptions.ValidationError(
        message,
        validator=keywords[-1] if keywords else "",
        path=error.instance_path,
        instance=error.instance,
        schema_path=error.schema_path,
    )


def compile_schema(schema: Any, tool: str, which: str = "inputSchema") -> CompiledSchema | None:
    """The compiled schema, or None (no schema, an invalid one, or one with a regex the
    dispatcher cannot run in linear time: logged, and then the arguments pass unvalidated /
    results unchecked, as the agent is the authority)."""
    if not isinstance(schema, dict):
        return None
    unchecked = "arguments are passed unvalidated" if which == "inputSchema" else "results are passed unchecked"
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        python = cls(schema, format_checker=cls.FORMAT_CHECKER)
    except jsonschema.exceptions.SchemaError as exc:
        log.warning("tool %s has an invalid %s (%s); %s", tool, which, exc.message, unchecked)
        return None
    if not REGEX_KEYWORDS.isdisjoint(_keywords(schema)):
        return _judged(schema, cls.__name__, tool, which, unchecked)
    # Exercise it once now: the first real call must not pay for lazy set-up.
    with contextlib.suppress(Exception):  # e.g. an unresolvable $ref: reported at call time
        python.is_valid({})
    return CompiledSchema(python, _fast(schema, cls.__name__, tool, which))


def _judged(schema: dict[str, Any], draft: str, tool: str, which: str, unchecked: str) -> CompiledSchema | None:
    """A schema with regexes, judged by jsonschema-rs alone with linear-time regexes; None
    (logged) where it cannot be: a pattern needing backtracking, draft 3, an offline $ref."""
    rust_cls = FAST_CLASSES.get(draft)
    if rust_cls is None:
        log.warning(
            "tool %s: %s has regexes but is a draft the dispatcher cannot run them in; %s", tool, which, unchecked
        )
        return None
    try:
        judge = rust_cls(schema, offline=True, pattern_options=LINEAR_REGEXES, validate_formats=True)
        judge.is_valid({})
    except Exception as exc:  # noqa: BLE001 - e.g. a lookahead: the linear engine does not have it
        log.warning(
            "tool %s: %s cannot be checked with linear-time regexes (%s); %s",
            tool,
            which,
            str(exc).splitlines()[0],
            unchecked,
        )
        return None
    return CompiledSchema(None, None, judge)


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
