"""A planning job, as the CLI, the service and batch start one: a `PlanRequest` (cap, threads,
solver, whether to measure, the cost store) and `plan_network`, which profiles what the plan
needs and returns the plan document (a `Plan`), or `pareto_network`, the same for the
time / peak-memory frontier (a `Frontier`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import Profiler, Progress, measuring_deadline
from convplan.profiles.requests import CostRequest
from convplan.profiles.store import CostStore
from convplan.selector.network import Network

from .documents import Frontier, Plan
from .ilp import SOLVERS, PlanningError
from .problem import CostFunction
from .solving import make_frontier, make_plan

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_bytes(text: str | int) -> int:
    """``24MiB``, ``1.5 GiB``, ``500kB``, ``123456`` -> bytes; ValueError for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read {text!r} as a size: use bytes or a number with "
                             "B, kB, MB, GB, KiB, MiB or GiB (e.g. 24MiB)")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a memory cap must be positive, got {text!r}")
    return size


@dataclass
class PlanRequest:
    """Everything one planning job needs besides the network (CLI, service and batch alike)."""

    cap: int | None = None
    threads: int | None = None          # None: all cores
    solver: str = "cbc"
    time_limit_s: float = 60.0
    measure: bool = True                # False: analytic costs for what the store lacks
    budget_s: float = 0.3               # measuring budget per candidate
    db: str | None = None               # None: $CONVPLAN_DB or the user cache


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
    if request.solver not in SOLVERS:
        raise PlanningError(f"unknown solver {request.solver!r}; use one of "
                            f"{', '.join(SOLVERS)}")
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
        return make_plan(network, costs, request.cap, machine=profiler.fingerprint,
                         threads=profiler.threads, solver=request.solver,
                         time_limit_s=request.time_limit_s)


def pareto_network(network: Network, request: PlanRequest, points: int = 8,
                   progress: Progress | None = None, *, measure_until: float | None = None
                   ) -> Frontier:
    """The time / peak-memory frontier of ``network`` over ``points`` caps, with the costs
    ``request`` asks for (its cap is not used): its `Frontier`. ``measure_until`` as for
    `plan_network`."""
    with _job_costs(request, progress, measure_until) as (profiler, costs):
        return make_frontier(network, costs, points, threads=profiler.threads,
                             solver=request.solver, time_limit_s=request.time_limit_s)
