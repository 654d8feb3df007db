"""The arena cap: plans whose placed arena (what the executor allocates) stays within it, the
ILP's arena rows bounding the most bytes alive at once from above, and a refusal that names the
smallest arena a plan can have (and that arena is achievable)."""

from __future__ import annotations

import random

import pytest

from convplan.profiles.profiler import Profiler
from convplan.selector.network import zoo
from convplan.selector.planning import (
    Infeasible,
    PlanRequest,
    build_problem,
    make_plan,
    minimum_arena,
    solve,
)
from convplan.selector.planning.ilp import arena_bound, copies
from convplan.selector.runner import run_plan

NETWORKS = ["alexnet", "googlenet", "onnx:squeezenet", "onnx:shufflenet"]


def estimated(requests):
    """Analytic costs: the same on every machine."""
    return Profiler(None, threads=1).costs(requests, measure_missing=False)


@pytest.mark.parametrize("name", NETWORKS)
def test_the_arena_rows_bound_the_live_bytes_and_are_exact_without_copies(name: str) -> None:
    context = build_problem(zoo.builtin(name), estimated)
    p = context.problem
    rng = random.Random(name)
    choices = [solve(p).choice, {n: 0 for n in p.order}]
    choices += [{n: rng.randrange(len(cs)) for n, cs in p.candidates.items()} for _ in range(12)]
    exact = 0
    for choice in choices:
        profile = context.predictions.profile(*context.assignment(choice))
        bound = arena_bound(p, choice)
        assert profile.arena_bytes >= profile.max_live_bytes
        assert bound >= profile.max_live_bytes
        if not any(copies(p, choice, n) for n in p.order):
            assert bound == profile.max_live_bytes
            exact += 1
    assert exact, "no choice without copies: the exactness was not checked"


@pytest.mark.parametrize("name", NETWORKS)
def test_plans_under_arena_caps_fit_them_and_the_minimum_is_stated_and_achievable(name: str
                                                                                  ) -> None:
    network = zoo.builtin(name)
    context = build_problem(network, estimated)
    smallest = context.arena_bytes(minimum_arena(context.problem).choice)
    widest = max(context.arena_bytes(solve(context.problem).choice),
                 context.arena_bytes({n: 0 for n in context.problem.order}))
    for cap in sorted({smallest, (smallest + widest) // 2, widest}):
        plan = make_plan(network, estimated, None, arena_cap=cap, machine={}, threads=1,
                         with_baselines=False)
        assert plan.predicted.arena_bytes <= cap
        assert plan.arena_cap_bytes == cap and plan.memory_cap_bytes is None
    with pytest.raises(Infeasible, match=f"smallest achievable arena is {smallest} bytes"
                       ) as refused:
        make_plan(network, estimated, None, arena_cap=smallest - 1, machine={}, threads=1)
    assert (refused.value.cap, refused.value.smallest_bytes) == ("arena", smallest)


def test_both_caps_hold_and_the_plan_runs_in_the_arena_it_promised() -> None:
    network = zoo.builtin("googlenet")
    context = build_problem(network, estimated)
    smallest = context.arena_bytes(minimum_arena(context.problem).choice)
    fastest = solve(context.problem).choice
    cap = context.predicted_peak(fastest) + (1 << 20)
    plan = make_plan(network, estimated, cap, arena_cap=smallest, machine={}, threads=1)
    assert plan.predicted.arena_bytes <= smallest and plan.predicted.peak_bytes <= cap
    assert plan.baselines["lowest_memory"].arena_bytes >= plan.predicted.max_live_bytes
    assert all(b.fits_cap == (b.peak_bytes <= cap and b.arena_bytes <= smallest)
               for b in plan.baselines.values())
    report = run_plan(zoo.builtin("googlenet", fresh=True), plan, owned=True)
    assert report.arena_bytes == plan.predicted.arena_bytes
    assert report.measured_peak_bytes <= report.predicted_peak_bytes <= cap


@pytest.mark.parametrize("given", ["0", "-1MiB", "lots", True])
def test_a_bad_arena_cap_is_refused_saying_what_is_wrong(given) -> None:
    with pytest.raises(ValueError, match=r"arena cap|as a size|must be"):
        PlanRequest(arena_cap=given)
