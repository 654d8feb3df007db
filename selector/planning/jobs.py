"""A planning job, as the CLI, the service and batch start one: a `PlanRequest` (cap, threads,
solver, whether to measure, the cost store) and `plan_network`, which profiles what the plan
needs and returns the plan document (a `Plan`), or `pareto_network`, the same for the
time / peak-memory frontier (a `Frontier`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
)

from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import Profiler, Progress, measuring_deadline
from convplan.profiles.requests import CostRequest
from convplan.profiles.store import CostStore
from convplan.selector.network import Network
from convplan.settings import SIZE_ERRORS, SIZE_HINT, Size

from .documents import Frontier, Plan
from .ilp import SOLVERS
from .problem import CostFunction, build_problem
from .solving import make_frontier, make_plan


def _explain(error: ValidationError) -> str:
    """A `PlanRequest`'s validation errors as one line: what is wrong and what was given."""
    problems = []
    for e in error.errors():
        field, given = (str(e["loc"][0]) if e["loc"] else ""), e.get("input")
        if field in ("cap", "arena_cap") and e["type"] in SIZE_ERRORS:
            problems.append(f"cannot read {given!r} as a size: {SIZE_HINT}")
        elif field in ("cap", "arena_cap"):
            what = "a memory cap" if field == "cap" else "an arena cap"
            problems.append(f"{what} must be positive, got {given!r}")
        elif e["type"] == "value_error":
            problems.append(str(e["ctx"]["error"]))
        elif e["msg"].startswith("Input should be"):
            problems.append(e["msg"].replace("Input should be", f"{field} must be", 1)
                            + f", got {given!r}")
        else:
            problems.append(f"{field}: {e['msg']}")
    return "; ".join(problems)


class PlanRequest(BaseModel):
    """Everything one planning job needs besides the network (CLI, service, batch and
    `convplan.plan` alike). Checked when made: a wrong value is a ValueError whose message says
    what is wrong (a cap is bytes or a size text, as `convplan.settings` reads sizes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cap: Annotated[Size, AfterValidator(int)] | None = Field(
        None, description="Cap of the whole footprint (weights, inputs, arena, allowances): "
                          "bytes, or a size text (24MiB); None: unbounded.")
    arena_cap: Annotated[Size, AfterValidator(int)] | None = Field(
        None, description="Cap of the arena alone (activations, copies, workspaces): bytes or "
                          "a size text; None: unbounded.")
    threads: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="BLAS threads; None: all cores.")
    solver: str = "cbc"
    time_limit_s: float = Field(60.0, gt=0, allow_inf_nan=False)
    measure: StrictBool = Field(True, description="False: analytic costs for what the store "
                                                  "lacks.")
    budget_s: float = Field(0.3, gt=0, allow_inf_nan=False,
                            description="Measuring budget per candidate, seconds.")
    db: str | None = Field(None, description="The cost store; None: $CONVPLAN_DB or the user "
                                             "cache.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(_explain(error)) from None

    @field_validator("solver")
    @classmethod
    def _known_solver(cls, solver: str) -> str:
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
        return solver


def parse_bytes(text: str | int) -> int:
    """A memory cap as `PlanRequest` reads it: ``24MiB``, ``1.5 GiB``, ``500kB``, ``123456`` ->
    bytes; ValueError for anything else."""
    cap = PlanRequest(cap=text).cap
    assert cap is not None
    return cap


def profiler_for(request: PlanRequest) -> Profiler:
    """The profiler (and cost store) a planning job uses."""
    store = CostStore(request.db) if request.db is not None else CostStore()
    return Profiler(store, request.threads or os.cpu_count() or 1, request.budget_s)


def cost_function(profiler: Profiler, measure: bool, progress: Progress | None = None
                  ) -> CostFunction:
    """``profiler.costs``: measuring what is missing (reporting progress), or estimating it."""
    def costs(requests: list[CostRequest]) -> Mapping[tuple[str, str, str], Measurement]:
        if not measure:
            return profiler.costs(requests, measure_missing=False)
        return profiler.costs(requests, progress=progress)
    return costs


@contextmanager
def _job_costs(request: PlanRequest, progress: Progress | None, measure_until: float | None
               ) -> Iterator[tuple[Profiler, CostFunction]]:
    """The profiler of a job and its cost function; measuring stops at ``measure_until`` (a
    `time.monotonic` instant, `profiles.profiler.measuring_deadline`; None: no deadline) and
    what is missing then is estimated. The cost store is closed when the job ends."""
    profiler = profiler_for(request)
    try:
        with measuring_deadline(measure_until):
            yield profiler, cost_function(profiler, request.measure, progress)
    finally:
        if profiler.store is not None:
            profiler.store.close()


def plan_network(network: Network, request: PlanRequest, progress: Progress | None = None, *,
                 measure_until: float | None = None) -> Plan:
    """Plan ``network`` as ``request`` asks: its `Plan`. Costs not measured by
    ``measure_until`` (a `time.monotonic` instant; None: no deadline) are estimated."""
    with _job_costs(request, progress, measure_until) as (profiler, costs):
        return make_plan(network, costs, request.cap, arena_cap=request.arena_cap,
                         machine=profiler.fingerprint,
                         threads=profiler.threads, solver=request.solver,
                         time_limit_s=request.time_limit_s)


def smallest_peak(network: Network, request: PlanRequest) -> int:
    """The smallest predicted peak any plan of ``network`` reaches (its arena within the
    request's arena cap, if any), from the memory model alone: no cost is measured and no cost
    store is opened, since workspaces are declared and the estimated times only break ties.
    What a cap below the weights is told, before any profiling."""
    profiler = Profiler(None, request.threads or os.cpu_count() or 1, request.budget_s)
    context = build_problem(network, cost_function(profiler, measure=False))
    lowest = context.lowest(request.solver, request.time_limit_s, arena_cap=request.arena_cap)
    return context.predicted_peak(lowest.choice)


def pareto_network(network: Network, request: PlanRequest, points: int = 8,
                   progress: Progress | None = None, *, measure_until: float | None = None
                   ) -> Frontier:
    """The time / peak-memory frontier of ``network`` over ``points`` caps, with the costs
    ``request`` asks for (its cap is not used): its `Frontier`. ``measure_until`` as for
    `plan_network`."""
    with _job_costs(request, progress, measure_until) as (profiler, costs):
        return make_frontier(network, costs, points, threads=profiler.threads,
                             solver=request.solver, time_limit_s=request.time_limit_s)
