"""A planning job, as the CLI, the service and batch start one: a `PlanRequest` (cap, threads,
solver, whether to measure, the cost store) and `plan_network`, which profiles what the plan
needs and returns the plan document (a `Plan`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import Profiler, Progress
from convplan.profiles.requests import CostRequest
from convplan.profiles.store import CostStore
from convplan.selector.network import Network

from .documents import Plan
from .ilp import SOLVERS, PlanningError
from .problem import CostFunction
from .solving import make_plan

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


def plan_network(network: Network, request: PlanRequest, progress: Progress | None = None
                 ) -> Plan:
    """Plan ``network`` as ``request`` asks: its `Plan`."""
    if request.solver not in SOLVERS:
        raise PlanningError(f"unknown solver {request.solver!r}; use one of "
                            f"{', '.join(SOLVERS)}")
    profiler = profiler_for(request)
    try:
        costs = cost_function(profiler, request.measure, progress)
        return make_plan(network, costs, request.cap, machine=profiler.fingerprint,
                         threads=profiler.threads, solver=request.solver,
                         time_limit_s=request.time_limit_s)
    finally:
        if profiler.store is not None:
            profiler.store.close()
