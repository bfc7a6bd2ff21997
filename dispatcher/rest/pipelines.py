"""``/v1/pipelines/runs``: pipeline runs on Temporal for people and scripts (the CLI's
``edgefleet pipelines ...``), with the same credentials as ``/mcp``.

    GET  /v1/pipelines/runs                          runs the caller may see, newest first
    GET  /v1/pipelines/runs/{run}                    one run: phase, steps, waiting approvals, result
    POST /v1/pipelines/runs/{run}/steps/{step}/approve   {"comment": "..."}
    POST /v1/pipelines/runs/{run}/steps/{step}/reject    {"comment": "..."}
    POST /v1/pipelines/runs/{run}/cancel             compensates what completed

Who may do what is ``builtins.workflows.access``; the runs themselves are behind the small
``PipelineRuns`` interface (the engine, handed over by ``app``: REST does not import builtins).
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Depends, Header

# At run time: FastAPI reads the annotations of the routes.
from edgefleet.dispatcher.security.auth import Authenticator, Identity


class PipelineRuns(Protocol):
    async def runs(self, identity: Identity, *, limit: int = 50) -> list[dict[str, Any]]: ...

    async def run(self, run_id: str, identity: Identity) -> dict[str, Any]: ...

    async def decide(
        self, run_id: str, step: str, *, approve: bool, comment: str, identity: Identity
    ) -> dict[str, Any]: ...

    async def cancel_run(self, run_id: str, identity: Identity) -> dict[str, Any]: ...


def pipeline_routes(engine: PipelineRuns, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/pipelines")

    def caller(authorization: Annotated[str | None, Header()] = None) -> Identity:
        return auth.authenticate(authorization)

    who = Depends(caller)
    comment_body = Body("", embed=True, max_length=2000)

    @router.get("/runs")
    async def list_runs(limit: int = 50, identity: Identity = who) -> dict[str, Any]:
        return {"runs": await engine.runs(identity, limit=limit)}

    @router.get("/runs/{run_id}")
    async def get_run(run_id: str, identity: Identity = who) -> dict[str, Any]:
        return await engine.run(run_id, identity)

    @router.post("/runs/{run_id}/steps/{step}/approve")
    async def approve(run_id: str, step: str, comment: str = comment_body, identity: Identity = who) -> dict[str, Any]:
        return await engine.decide(run_id, step, approve=True, comment=comment, identity=identity)

    @router.post("/runs/{run_id}/steps/{step}/reject")
    async def reject(run_id: str, step: str, comment: str = comment_body, identity: Identity = who) -> dict[str, Any]:
        return await engine.decide(run_id, step, approve=False, comment=comment, identity=identity)

    @router.post("/runs/{run_id}/cancel")
    async def cancel(run_id: str, identity: Identity = who) -> dict[str, Any]:
        return await engine.cancel_run(run_id, identity)

    return router
