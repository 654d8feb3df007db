"""Solving a plan context: the plan under a cap (held to the memory model's prediction), and the
Pareto frontier over a sweep of caps (`make_plan`, `make_frontier`: their documents)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from convplan.selector.network import Network

from .baselines import baselines
from .documents import Frontier, FrontierPoint, Plan, costs_label, plan_document
from .ilp import Infeasible, PlanningError, Solution, solve
from .problem import CostFunction, PlanContext, build_problem


def make_plan(network: Network, costs: CostFunction, cap: int | None, *, machine: Mapping,
              threads: int, solver: str = "cbc", time_limit_s: float = 60.0,
              with_baselines: bool = True) -> Plan:
    """Solve ``network`` under ``cap`` (None: fastest) and return its `Plan`."""
    context = build_problem(network, costs)
    if cap is None:
        solution = solve(context.problem, None, solver=solver, time_limit_s=time_limit_s)
    else:
        solution = _under_cap(context, cap, solver=solver, time_limit_s=time_limit_s)
    extra = baselines(context, cap, solver=solver, time_limit_s=time_limit_s) \
        if with_baselines else {}
    return plan_document(context, solution, cap, machine, threads, extra)


def _under_cap(context: PlanContext, cap: int, *, solver: str, time_limit_s: float
               ) -> Solution:
    """The fastest plan the memory model puts within ``cap``. The ILP's per-step bound is
    above the model's prediction (by a few KiB: copies and overheads counted for the whole
    step), so a cap between the two would be refused though a plan fits: then the ILP is
    solved again under the cap plus its overestimate of the lowest-memory plan, held to the
    model, and failing that the lowest-memory plan itself is the plan. Refused, naming the
    smallest peak the model predicts, only when even that plan is over the cap."""
    try:
        return _held_to(context, solve(context.problem, cap, solver=solver,
                                       time_limit_s=time_limit_s),
                        cap, solver=solver, time_limit_s=time_limit_s)
    except Infeasible:
        lowest = context.lowest(solver, time_limit_s)
    smallest = context.predicted_peak(lowest.choice)
    if smallest > cap:
        raise Infeasible(f"no plan fits in {cap} bytes: the smallest achievable peak is "
                         f"{smallest} bytes ({smallest / 2**20:.2f} MiB)") from None
    overestimate = max(0, lowest.peak_bytes - smallest)
    try:
        relaxed = solve(context.problem, cap + overestimate, solver=solver,
                        time_limit_s=time_limit_s)
        return dataclasses.replace(_held_to(context, relaxed, cap, solver=solver,
                                            time_limit_s=time_limit_s), optimal=False)
    except PlanningError:
        return dataclasses.replace(lowest, optimal=False)


def _held_to(context: PlanContext, solution: Solution, cap: int, *, solver: str,
             time_limit_s: float, attempts: int = 3) -> Solution:
    """The ILP's per-step accounting bounds the memory model's prediction from above for
    every choice tried so far, but the plan's promise is the prediction: a solution the
    memory model puts over the cap is solved again under a cap lowered by the excess, and
    refused if that does not help. Never a plan over its cap."""
    for _ in range(attempts):
        peak = context.predicted_peak(solution.choice)
        if peak <= cap:
            return solution
        lowered = cap - (peak - cap)
        try:
            solution = solve(context.problem, lowered, solver=solver,
                             time_limit_s=time_limit_s)
        except PlanningError:
            break
    raise Infeasible(f"no plan fits in {cap} bytes by the memory model (the solver's best "
                     f"plan needs {context.predicted_peak(solution.choice)}); give a larger "
                     "cap")


def pareto(context: PlanContext, points: int = 8, *, solver: str = "cbc",
           time_limit_s: float = 60.0) -> list[FrontierPoint]:
    """The time / peak-memory frontier: re-solve over caps from the lowest achievable peak to the
    fastest plan's peak; dominated and repeated points are dropped, so time falls as peak rises."""
    p = context.problem
    low = context.lowest(solver, time_limit_s)
    fast = solve(p, None, solver=solver, time_limit_s=time_limit_s)
    caps = sorted({low.peak_bytes, fast.peak_bytes} | {
        int(low.peak_bytes + (fast.peak_bytes - low.peak_bytes) * i / max(points - 1, 1))
        for i in range(points)})
    found = []
    for cap in caps:
        try:
            s = solve(p, cap, solver=solver, time_limit_s=time_limit_s)
        except PlanningError:
            continue
        found.append(FrontierPoint(cap_bytes=cap, time_s=s.time_s, peak_bytes=s.peak_bytes,
                                   predicted_peak_bytes=context.predicted_peak(s.choice),
                                   optimal=s.optimal))
    frontier: list[FrontierPoint] = []
    for point in sorted(found, key=lambda q: (q.peak_bytes, q.time_s)):
        if not frontier or point.time_s < frontier[-1].time_s - 1e-12:
            frontier.append(point)
    return frontier


def make_frontier(network: Network, costs: CostFunction, points: int = 8, *, threads: int,
                  solver: str = "cbc", time_limit_s: float = 60.0) -> Frontier:
    """The `Frontier` of ``network``: `pareto` over ``points`` caps, and the baselines (no
    cap)."""
    context = build_problem(network, costs)
    return Frontier(network=network.name, threads=threads, costs=costs_label(context.sources),
                    points=pareto(context, points, solver=solver, time_limit_s=time_limit_s),
                    baselines=baselines(context, None, solver=solver,
                                        time_limit_s=time_limit_s))
