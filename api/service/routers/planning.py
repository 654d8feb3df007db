"""POST /v1/plan, /v1/plan/onnx and /v1/pareto: planning, in a worker process each."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile
from pydantic import Field

from convplan.selector.network import MAX_DIM, InputShapes
from convplan.selector.planning import Frontier, Plan

from .. import work
from ..deps import JsonBody, PoolDep, SettingsDep
from ..errors import ERRORS
from ..schemas import CostOptions, ParetoBody, PlanBody

router = APIRouter(tags=["planning"], responses=ERRORS)


class PlanOnnxForm(CostOptions):
    """The multipart form of /v1/plan/onnx: the ONNX file and the options as fields (here, not
    in `schemas`, which the worker processes import: `UploadFile` is FastAPI's)."""

    file: UploadFile = Field(description="The ONNX model (no external data).")
    memory_cap: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="Bytes or a size string (\"24MiB\"); empty: no cap.")
    batch: Annotated[int, Field(ge=1, le=MAX_DIM)] | None = Field(
        None, description="The leading dimension (batch) of every input.")
    input_shape: Annotated[list[Annotated[str, Field(max_length=256)]],
                           Field(max_length=64)] = Field(
        default_factory=list, description="An input's whole shape, NAME=1x3x224x224 (as "
                                          "`--input-shape`); repeat the field for several.")


@router.post("/v1/plan", response_model=Plan, dependencies=[JsonBody])
async def plan(body: PlanBody, pool: PoolDep, settings: SettingsDep) -> Plan:
    """The fastest plan under the memory cap (an ILP), with every candidate and four
    baselines: the same document as `convplan plan --json`."""
    options = body.model_dump(exclude={"network"})
    return await pool.run(work.plan_task, work.source(body.network, body.shapes()), options,
                          settings, pass_deadline=True)


@router.post("/v1/plan/onnx", response_model=Plan)
async def plan_onnx(form: Annotated[PlanOnnxForm, Form(media_type="multipart/form-data")],
                    pool: PoolDep, settings: SettingsDep) -> Plan:
    """As /v1/plan, for an uploaded ONNX file (multipart: `file` and the option fields)."""
    data = await form.file.read()
    with work.client_errors():
        shapes = InputShapes.parse(form.input_shape, form.batch)
    return await pool.run(work.plan_task, ("onnx", data, shapes or None),
                          form.model_dump(exclude={"file"}), settings, pass_deadline=True)


@router.post("/v1/pareto", response_model=Frontier, dependencies=[JsonBody])
async def pareto(body: ParetoBody, pool: PoolDep, settings: SettingsDep) -> Frontier:
    """The time / peak-memory frontier (fastest plan over a sweep of caps) and the
    baselines: the same document as `convplan pareto --json`."""
    options = body.model_dump(exclude={"network", "points"})
    return await pool.run(work.pareto_task, work.source(body.network, body.shapes()), options,
                          body.points, settings, pass_deadline=True)
