"""POST /v1/run: run a plan (or plan first) in a worker process and measure it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import work
from ..deps import JsonBody, PoolDep, SettingsDep
from ..errors import ERRORS
from ..schemas import RunBody, RunResponse

router = APIRouter(tags=["running"], responses=ERRORS)


@router.post("/v1/run", response_model=RunResponse, dependencies=[JsonBody])
async def run(body: RunBody, pool: PoolDep, settings: SettingsDep) -> dict[str, Any]:
    """Run a plan (or plan first under `memory_cap`): the output, the measured time and
    peak memory next to the predicted peak."""
    options = body.model_dump(exclude={"network", "plan"})
    if body.plan is not None:
        options["plan"] = {"network": body.plan.network, "assignment": body.plan.assignment,
                           "layouts": body.plan.layouts, "threads": body.plan.threads,
                           "inputs": body.plan.inputs}
    return await pool.run(work.run_task, work.source(body.network, body.shapes()), options,
                          settings, pass_deadline=True)
