"""Solving a plan context: the plan under a cap (held to the memory model's prediction), and the
Pareto frontier over a sweep of caps (`make_plan`, `make_frontier`: their documents)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

from convplan.selector.network import Network

from .baselines import baselines
from .documents import Frontier, FrontierPoint, Plan, costs_label, plan_document
from .ilp import Infeasible, PlanningError, Solution, solve
from .problem import Caps, CostFunction, PlanContext, build_problem


def make_plan(network: Network, costs: CostFunction, cap: int | None, *, machine: Mapping,
              threads: int, arena_cap: int | None = None, solver: str = "cbc",
              time_limit_s: float = 60.0, with_baselines: bool = True) -> Plan:
    """Solve ``network`` under ``cap`` (the whole footprint) and ``arena_cap`` (the arena alone;
    None: unbounded, both None: the fastest plan) and return its `Plan`."""
    context = build_problem(network, costs)
    caps = Caps(cap, arena_cap)
    if cap is None and arena_cap is None:
        solution = solve(context.problem, None, solver=solver, time_limit_s=time_limit_s)
    else:
        solution = _under_caps(context, caps, solver=solver, time_limit_s=time_limit_s)
    extra = baselines(context, caps, solver=solver, time_limit_s=time_limit_s) \
        if with_baselines else {}
    return plan_document(context, solution, caps, machine, threads, extra)


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.2f} MiB)"


def _under_caps(context: PlanContext, caps: Caps, *, solver: str, time_limit_s: float
                ) -> Solution:
    """The fastest plan the memory model puts within ``caps``. The ILP's bounds are above the
    model's prediction and the placed arena (by a few KiB for the footprint: copies and
    overheads counted for the whole step; by a copy's source freed before its consumer runs
    for the arena), so a cap between the two would be refused though a plan fits: then the
    ILP is solved again under the caps plus its overestimate of the lowest plans, held to the
    model, and failing that a lowest plan meeting the caps is the plan. Refused only when no
    plan found meets them, naming the smallest value of the cap that cannot be met."""
    kwargs = {"solver": solver, "time_limit_s": time_limit_s}
    try:
        return _held_to(context, solve(context.problem, caps.memory, arena_cap=caps.arena,
                                       **kwargs), caps, **kwargs)
    except Infeasible:
        pass
    fallbacks = []
    if caps.arena is not None:
        smallest = context.smallest_arena(**kwargs)
        least = context.arena_bytes(smallest.choice)
        if least > caps.arena:
            raise Infeasible(f"no plan's arena fits in {caps.arena} bytes: the smallest "
                             f"achievable arena is {_mib(least)}", cap="arena",
                             smallest_bytes=least) from None
        fallbacks.append(smallest)
    if caps.memory is not None:
        lowest = context.lowest(**kwargs)
        least = context.predicted_peak(lowest.choice)
        if least > caps.memory:
            raise Infeasible(f"no plan fits in {caps.memory} bytes: the smallest achievable "
                             f"peak is {_mib(least)}", cap="memory",
                             smallest_bytes=least) from None
        fallbacks.append(lowest)
    if caps.memory is not None and caps.arena is not None:
        with contextlib.suppress(PlanningError):
            fallbacks.append(context.lowest(**kwargs, arena_cap=caps.arena))
    relaxed = Caps(
        None if caps.memory is None else caps.memory + max(
            0, max(f.peak_bytes - context.predicted_peak(f.choice) for f in fallbacks)),
        None if caps.arena is None else caps.arena + max(
            0, max(f.arena_bound_bytes - context.arena_bytes(f.choice) for f in fallbacks)))
    try:
        return dataclasses.replace(_held_to(context, solve(
            context.problem, relaxed.memory, arena_cap=relaxed.arena, **kwargs), caps,
            **kwargs), optimal=False)
    except PlanningError:
        pass
    for fallback in fallbacks:
        if caps.met_by(context, fallback.choice):
            return dataclasses.replace(fallback, optimal=False)
    assert caps.memory is not None and caps.arena is not None
    within = [f for f in fallbacks if context.arena_bytes(f.choice) <= caps.arena]
    least = min((context.predicted_peak(f.choice) for f in within), default=None)
    raise Infeasible(f"no plan fits both caps ({caps.memory} bytes in all, {caps.arena} bytes "
                     "of arena)" + ("" if least is None else
                                    f": within the arena cap, the smallest peak found is "
                                    f"{_mib(least)}"))


def _held_to(context: PlanContext, solution: Solution, caps: Caps, *, solver: str,
             time_limit_s: float, attempts: int = 3) -> Solution:
    """The ILP's rows bound the memory model's prediction from above and the arena's lower
    bound, but the plan's promise is the prediction and the placed arena: a solution over a
    cap by them is solved again under that cap lowered by the excess, and refused if that does
    not help. Never a plan over its caps."""
    memory, arena = caps.memory, caps.arena
    for _ in range(attempts):
        peak, placed = context.predicted_peak(solution.choice), context.arena_bytes(
            solution.choice)
        if caps.met_by(context, solution.choice):
            return solution
        if memory is not None and caps.memory is not None and peak > caps.memory:
            memory -= peak - caps.memory
        if arena is not None and caps.arena is not None and placed > caps.arena:
            arena -= placed - caps.arena
        try:
            solution = solve(context.problem, memory, arena_cap=arena, solver=solver,
                             time_limit_s=time_limit_s)
        except PlanningError:
            break
    raise Infeasible(f"no plan fits the caps by the memory model (the solver's best plan "
                     f"needs {context.predicted_peak(solution.choice)} bytes in all, "
                     f"{context.arena_bytes(solution.choice)} of arena); give larger caps")


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
                    baselines=baselines(context, Caps(), solver=solver,
                                        time_limit_s=time_limit_s))
