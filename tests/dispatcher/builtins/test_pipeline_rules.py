"""The rules of pipeline runs that need no server: who may see, decide and cancel a run;
how a step is retried by its tool's idempotency; what an approval step may declare."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.dispatcher.builtins.pipelines import PipelineSpec
from edgefleet.dispatcher.builtins.workflows import access, policy
from edgefleet.dispatcher.security.auth import ADMIN_SCOPE, Identity

MEMO = {"owner": "bob", "pipeline": "release", "approvers": {"review": ["alice", "ops-*"]}}


def test_who_may_decide_an_approval() -> None:
    assert access.may_decide(Identity("alice"), "release", ["alice", "ops-*"])
    assert access.may_decide(Identity("ops-eu"), "release", ["alice", "ops-*"])
    assert access.may_decide(Identity("carol", frozenset({"approve:release"})), "release", [])
    assert access.may_decide(Identity("carol", frozenset({"approve:*"})), "release", [])
    assert access.may_decide(Identity("root", frozenset({ADMIN_SCOPE})), "release", [])
    assert not access.may_decide(Identity("carol", frozenset({"approve:other"})), "release", ["alice"])
    assert not access.may_decide(Identity("bob"), "release", ["alice"])  # starting a run is not approving it


def test_who_may_see_and_cancel_a_run() -> None:
    assert access.may_see(Identity("bob"), MEMO) and access.may_cancel(Identity("bob"), MEMO)
    assert access.may_see(Identity("alice"), MEMO) and not access.may_cancel(Identity("alice"), MEMO)
    assert not access.may_see(Identity("mallory"), MEMO) and not access.may_cancel(Identity("mallory"), MEMO)
    assert access.may_cancel(Identity("root", frozenset({ADMIN_SCOPE})), MEMO)


def test_a_non_idempotent_call_is_never_retried_by_temporal_and_only_known_failures_by_the_workflow() -> None:
    assert policy.activity_retry(5, 0.2, 5.0, idempotent=False).maximum_attempts == 1
    assert policy.schedules(5, idempotent=False) == 5
    assert policy.again("tool_error") and policy.again("agent_unavailable")
    for may_have_run in ("outcome_unknown", "upstream_timeout", policy.LOST):
        assert not policy.again(may_have_run)
    assert not policy.again("tool_forbidden") and not policy.again("invalid_params")


def test_an_idempotent_call_gets_the_steps_policy_from_temporal() -> None:
    retry = policy.activity_retry(4, 0.5, 3.0, idempotent=True)
    assert retry.maximum_attempts == 4 and retry.backoff_coefficient == 2.0
    assert retry.initial_interval.total_seconds() == 0.5 and retry.maximum_interval is not None
    assert retry.maximum_interval.total_seconds() == 3.0 and "tool_forbidden" in retry.non_retryable_error_types
    assert policy.schedules(4, idempotent=True) == 1
    assert [policy.backoff(n, 0.5, 3.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]


def test_error_kinds_come_from_our_stable_codes() -> None:
    assert policy.error_kind({"code": -31004, "message": "x", "data": {"code": "outcome_unknown"}}) == "outcome_unknown"
    assert policy.error_kind({"code": -32602, "message": "bad"}) == "invalid_params"
    assert policy.error_kind({"code": 42, "message": "the agent's own"}) == "agent_error"


def test_approval_steps_take_no_tool_and_stand_alone() -> None:
    spec = PipelineSpec.model_validate(
        {"steps": [{"name": "a", "tool": "x.y"}, {"name": "ok", "approval": {"approvers": ["alice"]}}]}
    )
    assert [s.name for s in spec.approvals()] == ["ok"] and spec.tools() == {"x.y"}
    with pytest.raises(ValidationError, match="approval step"):
        PipelineSpec.model_validate({"steps": [{"name": "ok", "tool": "x.y", "approval": {}}]})
    with pytest.raises(ValidationError, match="parallel"):
        PipelineSpec.model_validate(
            {"steps": [{"parallel": [{"name": "a", "tool": "x.y"}, {"name": "ok", "approval": {}}]}]}
        )
    with pytest.raises(ValidationError, match="needs a tool"):
        PipelineSpec.model_validate({"steps": [{"name": "a"}]})
