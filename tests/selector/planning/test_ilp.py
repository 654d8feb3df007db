"""The ILP against brute force on small random DAGs (layout costs included), and against a
dynamic program on chains."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convplan.selector.planning.ilp import (
    SOLVERS,
    Candidate,
    Infeasible,
    PlanningError,
    Problem,
    arena_bound,
    brute_force,
    evaluate,
    minimum_arena,
    minimum_peak,
    solve,
)


@st.composite
def problems(draw, max_nodes: int = 6, chain: bool = False, prepared: bool = True) -> Problem:
    n = draw(st.integers(1, max_nodes))
    order = [f"n{i}" for i in range(n)]
    producer: dict[str, str | None] = {"in": None}
    inputs_of, candidates, fixed = {}, {}, {}
    tensors = ["in"]
    for i, node in enumerate(order):
        if chain:
            inputs = [tensors[-1]]
        else:
            inputs = draw(st.lists(st.sampled_from(tensors), min_size=1, max_size=3))
        inputs_of[node] = inputs
        out = f"t{i}"
        producer[out] = node
        tensors.append(out)
        options = []
        for k in range(draw(st.integers(1, 3))):
            options.append(Candidate(
                name=f"c{k}", algorithm=f"c{k}",
                input_layout=draw(st.sampled_from(["NCHW", "NHWC"])),
                output_layout=draw(st.sampled_from(["NCHW", "NHWC"])),
                time_s=draw(st.floats(0.001, 1.0)),
                workspace_bytes=draw(st.integers(0, 1000)),
                prepared_bytes=draw(st.integers(0, 300)) if prepared else 0,
                preparing_bytes=draw(st.integers(0, 600)) if prepared else 0,
                arena_bytes=draw(st.integers(0, 800))))
        candidates[node] = options
        fixed[node] = draw(st.integers(0, 2000))
    sizes = {t: draw(st.integers(1, 500)) for t in tensors}
    four_d = {t for t in tensors if draw(st.integers(0, 4)) > 0}
    transform_time = {(t, layout): draw(st.floats(0.0, 0.5)) for t in tensors
                      for layout in ("NCHW", "NHWC")}
    outputs = [tensors[-1]] if draw(st.booleans()) else []
    # some layers' weights are prepared before the run (a phase the caps bound too)
    originals = {node: draw(st.integers(0, 300)) for node in order
                 if prepared and draw(st.booleans())}
    return Problem(order, inputs_of, producer, sizes, four_d, outputs, candidates, fixed,
                   transform_time, draw(st.integers(0, 50)), originals,
                   draw(st.integers(0, 1500)) if originals else 0,
                   arena_fixed_bytes={node: draw(st.integers(0, 1500)) for node in order},
                   arena_copy_bytes={t: draw(st.integers(0, 600)) for t in four_d})


def _feasible_peaks(problem: Problem) -> list[int]:
    import itertools

    peaks = []
    for combo in itertools.product(*[range(len(problem.candidates[n])) for n in problem.order]):
        _, peak, ok = evaluate(problem, dict(zip(problem.order, combo, strict=True)))
        if ok:
            peaks.append(peak)
    return sorted(peaks)


@settings(max_examples=60)
@given(problem=problems(), solver=st.sampled_from(["cbc", "highs"]), data=st.data())
def test_ilp_equals_brute_force_on_random_dags(problem: Problem, solver: str, data) -> None:
    peaks = _feasible_peaks(problem)
    if not peaks:       # outputs can never be NCHW: the ILP must say infeasible too
        with pytest.raises(Infeasible):
            solve(problem, None, solver=solver)
        return
    cap = data.draw(st.sampled_from([None, peaks[0], peaks[len(peaks) // 2], peaks[-1]]))
    expected = brute_force(problem, cap)
    assert expected is not None
    solution = solve(problem, cap, solver=solver)
    assert solution.optimal
    assert solution.time_s == pytest.approx(expected[0], rel=1e-7, abs=1e-9)
    assert cap is None or solution.peak_bytes <= cap
    # the transforms it reports are exactly the copies its choice implies
    t, peak, ok = evaluate(problem, solution.choice)
    assert ok and peak == solution.peak_bytes and t == pytest.approx(solution.time_s)


@settings(max_examples=40)
@given(problem=problems(), solver=st.sampled_from(["cbc", "highs"]))
def test_minimum_peak_and_an_infeasible_cap(problem: Problem, solver: str) -> None:
    peaks = _feasible_peaks(problem)
    if not peaks:
        return
    assert minimum_peak(problem, solver=solver).peak_bytes == peaks[0]
    with pytest.raises(Infeasible):
        solve(problem, peaks[0] - 1, solver=solver)
    assert issubclass(Infeasible, PlanningError)    # callers' `except PlanningError` hold


@settings(max_examples=60)
@given(problem=problems(), solver=st.sampled_from(["cbc", "highs"]), data=st.data())
def test_arena_cap_rows_equal_brute_force(problem: Problem, solver: str, data) -> None:
    """Under an arena cap (and a memory cap with it, or not), the ILP's answer is the brute
    force's; its smallest arena is the least `arena_bound` of any feasible choice, and one byte
    less is infeasible."""
    import itertools

    arenas = sorted(arena_bound(problem, choice) for choice in (
        dict(zip(problem.order, combo, strict=True)) for combo in itertools.product(
            *[range(len(problem.candidates[n])) for n in problem.order]))
        if evaluate(problem, choice)[2])
    if not arenas:
        return
    arena_cap = data.draw(st.sampled_from([arenas[0], arenas[len(arenas) // 2], arenas[-1]]))
    peaks = _feasible_peaks(problem)
    cap = data.draw(st.sampled_from([None, peaks[len(peaks) // 2], peaks[-1]]))
    expected = brute_force(problem, cap, arena_cap)
    if expected is None:
        with pytest.raises(Infeasible):
            solve(problem, cap, arena_cap=arena_cap, solver=solver)
    else:
        solution = solve(problem, cap, arena_cap=arena_cap, solver=solver)
        assert solution.optimal
        assert solution.time_s == pytest.approx(expected[0], rel=1e-7, abs=1e-9)
        assert solution.arena_bound_bytes == arena_bound(problem, solution.choice) <= arena_cap
        assert cap is None or solution.peak_bytes <= cap
    assert minimum_arena(problem, solver=solver).arena_bound_bytes == arenas[0]
    with pytest.raises(Infeasible):
        solve(problem, None, arena_cap=arenas[0] - 1, solver=solver)


def _chain_dp(problem: Problem, cap: int | None) -> float | None:
    """Dynamic program over (layer, candidate) on a chain with step-local memory."""
    best: dict[int, float] = {}
    previous = None
    for n in problem.order:
        t = problem.inputs_of[n][0]
        current: dict[int, float] = {}
        for j, c in enumerate(problem.candidates[n]):
            options = []
            sources = [(None, 0.0)] if previous is None else list(best.items())
            for i, cost in sources:
                have = "NCHW" if i is None else problem.candidates[previous][i].output_layout
                copy = t in problem.four_d and have != c.input_layout
                memory = (problem.fixed_bytes[n] + c.workspace_bytes
                          + (problem.tensor_bytes[t] + problem.transform_workspace_bytes
                             if copy else 0))
                if cap is not None and memory > cap:
                    continue
                options.append(cost + c.time_s
                               + (problem.transform_time[t, c.input_layout] if copy else 0))
            if options:
                current[j] = min(options)
        best, previous = current, n
    last = problem.order[-1]
    finals = [cost for j, cost in best.items()
              if not problem.outputs or problem.outputs[-1] not in problem.four_d
              or problem.candidates[last][j].output_layout == "NCHW"]
    return min(finals) if finals else None


@settings(max_examples=40)
@given(problem=problems(max_nodes=12, chain=True, prepared=False), data=st.data())
def test_ilp_equals_a_dynamic_program_on_chains(problem: Problem, data) -> None:
    cap = data.draw(st.sampled_from([None, 1500, 2500, 3500]))
    expected = _chain_dp(problem, cap)
    if expected is None:
        with pytest.raises(Infeasible):
            solve(problem, cap)
        return
    solution = solve(problem, cap)
    assert solution.time_s == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_unknown_solver_is_a_clear_error() -> None:
    problem = Problem(["a"], {"a": ["in"]}, {"in": None, "t": "a"}, {"in": 1, "t": 1}, set(),
                      [], {"a": [Candidate("c", "c", "NCHW", "NCHW", 1.0, 0)]}, {"a": 0}, {})
    with pytest.raises(PlanningError, match="unknown solver"):
        solve(problem, solver="gurobi")


def test_a_solver_crash_on_an_infeasible_problem_is_still_an_answer() -> None:
    """CBC 2.10.3 (preprocessing off) dies with a segmentation fault on this infeasible chain,
    found by the dynamic-program test: the same model goes to HiGHS, so the cap is refused as
    infeasible rather than a traceback."""
    def c(name: str, into: str = "NCHW", out: str = "NCHW", workspace: int = 0) -> Candidate:
        return Candidate(name, name, into, out, 1.0, workspace)

    layouts = ("NCHW", "NHWC")
    problem = Problem(
        ["n0", "n1", "n2", "n3"], {"n0": ["in"], "n1": ["t0"], "n2": ["t1"], "n3": ["t2"]},
        {"in": None, "t0": "n0", "t1": "n1", "t2": "n2", "t3": "n3"},
        {"in": 1, "t0": 1, "t1": 1, "t2": 239, "t3": 1}, {"t2"}, [],
        {"n0": [c("c0"), c("c1"), c("c2")], "n1": [c("c0")],
         "n2": [c("c0", out="NHWC", workspace=219), c("c1"), c("c2")],
         "n3": [c("c0", into="NHWC")]},
        {"n0": 0, "n1": 0, "n2": 1303, "n3": 1285},
        {(t, layout): 0.0 for t in ("in", "t0", "t1", "t2", "t3") for layout in layouts})
    assert _chain_dp(problem, 1500) is None
    for solver in SOLVERS:
        with pytest.raises(Infeasible):
            solve(problem, 1500, solver=solver)
