"""Pipelines as Temporal workflows: crash-proof runs, approvals that wait for people.

When ``EDGEFLEET_TEMPORAL_ADDRESS`` is set every dispatcher runs a Temporal worker on one
task queue and every pipeline call starts a workflow there (``workflow.PipelineWorkflow``).
Each tool step is an activity that calls the tool through the dispatcher's normal routing
(``builtins.invoker``), as the caller: the caller's identity and route order travel in the
workflow's input, so any dispatcher's worker can run any step. The workflow's history is
the run's state: a dispatcher killed mid-run loses nothing, another worker replays the
history and goes on at the step that was running.

Modules: ``model`` (what crosses the engine: inputs, decisions, status), ``policy`` (retry
and timeout rules per step, from the tool's idempotency), ``workflow`` (the deterministic
orchestration), ``activities`` (the steps' side effects), ``engine`` (client, worker, runs
and their tasks), ``access`` (who may see, decide and cancel a run).
"""
