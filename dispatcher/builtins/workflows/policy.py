"""How a step is retried and timed, from the tool's idempotency (docs: principle 4).

- **Idempotent tools** (``idempotentHint``): the step's ``retry`` becomes Temporal's retry
  policy. An attempt lost with its worker (a dispatcher killed mid-call stops heartbeating)
  is run again on another dispatcher: by Temporal while the step has attempts left, then
  by the workflow (up to ``TAKEOVERS`` times), since a crash is not the step's failure.
- **Any other tool**: Temporal makes exactly one attempt per schedule, so it never re-runs
  an attempt that may have started. The workflow retries only failures whose outcome is
  known (the tool answered with an error, the call was refused before an agent ran it),
  with the same backoff as a durable timer. An attempt that may have run (lost with its
  worker, timed out, ``outcome_unknown``) ends the step as ``outcome_unknown``, and the
  run compensates what completed: never run twice silently.

Pure functions; importable in the workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

# Refused before any agent ran it: no retry can fix these.
PERMANENT = frozenset(
    {
        "invalid_params",
        "method_not_found",
        "unknown_tool",
        "tool_forbidden",
        "not_found",
        "invalid_arguments",
        "parse_error",
    }
)
# The call may have run: a non-idempotent tool is not called again after these.
LOST = "lost"  # the attempt ended without an answer: its worker died, or Temporal timed it out
MAY_HAVE_RUN = frozenset({"outcome_unknown", "upstream_timeout", LOST})
TOOL_ERROR = "tool_error"  # the tool ran and answered isError: a known outcome
# An idempotent call lost with its dispatcher is scheduled again (elsewhere) up to this many
# times, apart from the step's own retries: a crash is not the step's failure.
TAKEOVERS = 3

# Compensations must happen: more patience than a step's own retry.
COMPENSATION_ATTEMPTS = 6
COMPENSATION_BACKOFF_S = 1.0
COMPENSATION_MAX_BACKOFF_S = 30.0
# Bounded like every answer (principle 9) and below Temporal's payload limit (2 MB by default).
MAX_STEP_RESULT_BYTES = 1_500_000

_JSONRPC_KINDS = {-32700: "parse_error", -32601: "method_not_found", -32602: "invalid_params"}


def error_kind(error: dict[str, Any] | None) -> str:
    """The stable code of a call's JSON-RPC error (ours in data.code), else by JSON-RPC code."""
    if not isinstance(error, dict):
        return "upstream_error"
    data = error.get("data")
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        return str(data["code"])
    return _JSONRPC_KINDS.get(error.get("code"), "agent_error")  # type: ignore[arg-type]


def activity_retry(attempts: int, backoff_s: float, max_backoff_s: float, *, idempotent: bool) -> RetryPolicy:
    """Temporal's retry policy for one scheduled call."""
    if not idempotent:
        return RetryPolicy(maximum_attempts=1)
    initial = max(backoff_s, 0.001)
    return RetryPolicy(
        initial_interval=timedelta(seconds=initial),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=max(max_backoff_s, initial)),
        maximum_attempts=attempts,
        non_retryable_error_types=sorted(PERMANENT),
    )


def schedules(attempts: int, *, idempotent: bool) -> int:
    """How many times the workflow schedules the call (Temporal retries idempotent ones itself)."""
    return 1 if idempotent else attempts


def again(kind: str) -> bool:
    """A non-idempotent call that failed this way may be scheduled again (known outcome)."""
    return kind not in PERMANENT and kind not in MAY_HAVE_RUN


def backoff(attempt: int, backoff_s: float, max_backoff_s: float) -> float:
    """Seconds before schedule ``attempt + 1`` (exponential, as Temporal's own policy)."""
    return float(min(max_backoff_s, backoff_s * 2 ** (attempt - 1)))


def start_to_close(timeout_s: float, heartbeat_s: float) -> timedelta:
    """The call enforces ``timeout_s`` itself; Temporal's bound only catches a hung attempt."""
    return timedelta(seconds=timeout_s + heartbeat_s)
