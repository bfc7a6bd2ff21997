"""What an agent's answer must pass before it reaches anyone, on every path.

Two rules, the same for the direct path, the bus and tasks: no answer larger than
``max_result_bytes`` (counted as bytes arrive, so nothing is buffered past the limit), and
for tools that declare an ``outputSchema`` the final result's ``structuredContent`` must
conform (the spec: servers MUST, clients SHOULD check). Tools without a schema are never
parsed for it. A refused answer is answered with its own error and never retried
elsewhere: the work was done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgefleet.shared import jsonrpc
from edgefleet.shared.errors import EdgefleetError, InvalidToolResult, ResultTooLarge

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry

log = logging.getLogger("edgefleet.checks")


class ResultChecks:
    def __init__(self, max_result_bytes: int, validate_results: bool) -> None:
        self.limit = max_result_bytes
        self.validate = validate_results

    def has_schema(self, entry: ToolEntry) -> bool:
        """Must this tool's results be parsed for the outputSchema check?"""
        return self.validate and entry.output_validator is not None

    def too_large(self, entry: ToolEntry, **where: str) -> ResultTooLarge:
        log.warning("%s answered %s with more than %d bytes: not relayed", _who(where), entry.public_name, self.limit)
        return ResultTooLarge(
            f"The answer of {entry.public_name} is larger than {self.limit} bytes (EDGEFLEET_MAX_RESULT_BYTES); it was not relayed.",
            data={"tool": entry.public_name, **where, "limit_bytes": self.limit},
        )

    def invalid_response(self, entry: ToolEntry, message: Any, **where: str) -> InvalidToolResult | None:
        """The error replacing a JSON-RPC response whose result breaks the outputSchema;
        None for conforming results, error answers and anything that is not a response."""
        result = message.get("result") if jsonrpc.is_response(message) else None
        return self.invalid_result(entry, result, **where) if isinstance(result, dict) else None

    def invalid_result(self, entry: ToolEntry, result: dict[str, Any], **where: str) -> InvalidToolResult | None:
        if not self.has_schema(entry):
            return None
        problem = entry.result_problem(result)
        if problem is None:
            return None
        log.warning(
            "%s answered %s with a result that breaks its outputSchema: %s", _who(where), entry.public_name, problem
        )
        return InvalidToolResult(problem, data={"tool": entry.public_name, **where})

    def refused(
        self, entry: ToolEntry, result: dict[str, Any] | None, size: int, **where: str
    ) -> EdgefleetError | None:
        """Why a whole answer of ``size`` bytes (result, or None for an error answer) must
        not be delivered, or None."""
        if size > self.limit:
            return self.too_large(entry, **where)
        return self.invalid_result(entry, result, **where) if result is not None else None


def _who(where: dict[str, str]) -> str:
    if "replica" in where:
        return f"replica {where['replica']}"
    return f"bus call {where.get('task', '?')}"
