"""Request and response bodies of the HTTP service (pydantic), so /docs shows every field and
schema-driven clients (and fuzzers) see exactly what the service accepts and returns. The plan
and frontier documents are the planner's own (`selector.planning.Plan`, `Frontier`).

Pydantic only, no FastAPI: the worker processes build the job documents (`Job`) and import
this module, and stay free of the web stack (the ONNX upload form, which needs FastAPI's
`UploadFile`, is declared beside its route)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic.json_schema import SkipJsonSchema

from convplan.selector.network import MAX_DIM, InputShapes, NetworkDescription, ShapeMap
from convplan.selector.planning import Plan, PlanSpec
from convplan.selector.runner import RunReport

#: A built-in network name (GET /v1/networks) or a JSON network description.
NetworkField = Annotated[
    NetworkDescription | Annotated[str, Field(min_length=1, max_length=256)],
    Field(description="A built-in network name (GET /v1/networks) or a network description "
                      "object (inputs, layers; see the README).")]

#: A peak-memory cap: bytes, or a size string such as "24MiB".
MemoryCap = Annotated[
    Annotated[StrictInt, Field(le=2**62)] | Annotated[StrictStr, Field(max_length=64)] | None,
    Field(description="Peak-memory cap: bytes (int) or a size string (\"24MiB\", \"1.5 GB\"). "
                      "None: no cap (the fastest plan).")]
#: An arena cap: the same grammar, bounding the arena alone.
ArenaCap = Annotated[
    Annotated[StrictInt, Field(le=2**62)] | Annotated[StrictStr, Field(max_length=64)] | None,
    Field(description="Cap of the arena alone (activations, copies, workspaces): bytes (int) "
                      "or a size string. None: unbounded.")]


# -- errors ------------------------------------------------------------------------------------
class FieldError(BaseModel):
    """One problem of a request body, where it is and what is wrong."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a short code and a message a person can act on."""

    error: str = Field(description="Machine-readable code, e.g. invalid_network.")
    detail: str = Field(description="What is wrong, in words.")
    errors: list[FieldError] | None = Field(None, description="Per-field validation problems.")


# -- options shared by planning requests ----------------------------------------------------------
class CostOptions(BaseModel):
    """How costs are obtained and the ILP solved (the service caps the limits)."""

    model_config = ConfigDict(extra="forbid")
    threads: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="BLAS threads (default: all cores; at most the server's cores).")
    solver: Literal["cbc", "highs"] = "cbc"
    time_limit_s: float = Field(60.0, gt=0, le=86400, description=(
        "Solver time limit in seconds, capped at the server's CONVPLAN_MAX_TIME_LIMIT."))
    measure: bool = Field(True, description=(
        "Measure missing costs on the server (true) or fill them with the analytic model "
        "(false: fast, the plan says costs are analytic)."))
    budget_s: float = Field(0.3, gt=0, le=3600, description=(
        "Measuring budget per candidate, seconds; capped at CONVPLAN_MAX_BUDGET."))


class ShapeOptions(BaseModel):
    """The shapes to load the network for (`convplan ... --batch / --input-shape`); none: its
    declared ones. The server's limits hold for them before anything is allocated."""

    batch: Annotated[StrictInt, Field(ge=1, le=MAX_DIM)] | None = Field(
        None, description="The leading dimension (batch) of every input.")
    input_shapes: ShapeMap | None = Field(
        None, description="Input name -> its whole shape; with `batch`, each starts with it.")

    def shapes(self) -> InputShapes | None:
        """The shapes asked for, or None."""
        if self.batch is None and not self.input_shapes:
            return None
        return InputShapes(batch=self.batch, inputs=self.input_shapes or {})


class PlanBody(CostOptions, ShapeOptions):
    model_config = ConfigDict(extra="forbid", strict=True)
    network: NetworkField
    memory_cap: MemoryCap = None
    arena_cap: ArenaCap = None


class ParetoBody(CostOptions, ShapeOptions):
    model_config = ConfigDict(extra="forbid", strict=True)
    network: NetworkField
    points: int = Field(8, ge=2, le=64, description="Caps to solve for.")


class PlanInput(PlanSpec):
    """What /v1/run needs of a plan: a whole plan document, or just its assignment (the same
    model `convplan run --plan` reads; `check_plan` then checks it against the network)."""


class RunBody(CostOptions, ShapeOptions):
    model_config = ConfigDict(extra="forbid", strict=True)
    network: NetworkField
    plan: PlanInput | None = Field(None, description=(
        "Run this plan. Without it (and without `algorithm`) the service plans first under "
        "`memory_cap` and `arena_cap` with the cost options."))
    memory_cap: MemoryCap = None
    arena_cap: ArenaCap = None
    algorithm: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="One algorithm for every convolution instead of a plan.")
    input: Annotated[str, Field(max_length=2**31)] | None = Field(None, description=(
        "Base64 of a .npy file (or an .npz by input name). Default: seeded random input."))
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the random input.")
    repeat: int = Field(1, ge=1, le=100, description="Timed runs (median), capped at 10.")
    check: bool = Field(False, description="Compare the output with onnxruntime.")


class ProfileBody(ShapeOptions):
    model_config = ConfigDict(extra="forbid", strict=True)
    network: NetworkField
    threads: Annotated[int, Field(ge=1, le=4096)] | None = None
    budget_s: float = Field(0.5, gt=0, le=3600, description=(
        "Timing budget per measurement, seconds; capped at CONVPLAN_MAX_BUDGET."))


# -- running --------------------------------------------------------------------------------------
class RunResponse(RunReport):
    """/v1/run's answer: the run's `RunReport` (`convplan run --json`'s document, its output
    shapes under ``output_shapes`` rather than ``outputs``) with what an HTTP client needs
    besides: the output itself, whether the promise held, and the plan made first."""

    outputs: SkipJsonSchema[dict[str, Any]] = Field(default_factory=dict, exclude=True)
    within_prediction: bool = Field(description="measured <= predicted.")
    output: str = Field(description="Base64 of a .npy (one output) or .npz (several, by name).")
    output_format: Literal["npy", "npz"]
    output_shapes: dict[str, list[int]]
    plan: Plan | None = Field(None, description="The plan made first, if one was.")
    session_reused: bool = Field(False, description=(
        "The run reused the session an earlier request of the same network, plan, shapes "
        "and threads left in its worker (CONVPLAN_SESSION_CACHE): nothing was loaded or "
        "prepared again, so the measured peak holds the prepared weights and the arena but "
        "not preparing them (the prediction still counts it)."))


# -- jobs and listings ----------------------------------------------------------------------------
class ProfileResult(BaseModel):
    network: str
    fingerprint_id: str
    threads: int
    conv_specs: int
    conv_requests: int
    transform_requests: int
    op_requests: int
    requested: int
    measured: int
    cached: int
    unmeasured: int = Field(0, description="Costs left unmeasured at the job's deadline "
                                           "(estimated when planning).")
    seconds: float


class Progress(BaseModel):
    done: int = 0
    total: int | None = None


#: Where a job is: waiting, measuring, or finished one of three ways.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    url: str


class Job(BaseModel):
    """A profiling job as GET /v1/jobs/{id} answers it; the job table holds these."""

    id: str
    kind: Literal["profile"]
    status: JobStatus = "queued"
    progress: Progress = Field(default_factory=Progress)
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: ProfileResult | None = None
    error: ErrorBody | None = None

    @property
    def pending(self) -> bool:
        """Queued or running (it counts against ``CONVPLAN_MAX_PENDING_JOBS``)."""
        return self.status in ("queued", "running")


class WorkerCounts(BaseModel):
    """The worker processes by state."""

    idle: int = 0
    busy: int = 0
    starting: int = 0
    overdue: int = Field(0, description="Busy past their deadline and not yet stopped.")
    dead: int = 0


class Health(BaseModel):
    """GET /healthz: 200 with status "ok" while some worker can make progress, else 503 with
    status "unhealthy" and why (`error`, `detail`)."""

    status: Literal["ok", "unhealthy"]
    version: str
    slots: int = Field(description="Heavy requests served at once (worker processes).")
    busy: int
    waiting: int
    workers: WorkerCounts
    replaced: int = Field(description="Worker processes replaced since the start (died, "
                                      "overran their deadline or memory).")
    error: Literal["unhealthy"] | None = Field(None, description="Only when unhealthy.")
    detail: str | None = Field(None, description="Why no worker can serve (when unhealthy).")
