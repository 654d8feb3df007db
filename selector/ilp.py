"""The selection problem and its ILP: one candidate per layer, fastest total time under a cap.

Every layer (in the network's fixed execution order) picks one candidate: for a convolution an
algorithm (which fixes its input and output layouts), for another operator a layout it runs in.
A tensor takes its producer's output layout; a consumer that needs the other layout pays a
transform (time, and a copy alive during its step). The peak-memory constraint holds at every
step: what is live regardless of choices (`fixed_bytes`, from the memory model) + the step's
workspace + the copies made for it + every layer's prepared weights (they persist) <= cap.

The formulation (PBQP-style selection linearised for an ILP):
    x[n, j] in {0, 1}, sum_j x[n, j] = 1                      one candidate per layer
    z[t, L] = sum of x[producer(t), j] with output layout L    the layout tensor t is stored in
    y[t, n, L] >= sum of x[n, j] with input layout L - z[t, L] consumer n copies t into L
    minimise  sum x * time + sum y * transform time
Layouts are binary (NCHW / NHWC), so y is exactly "a transform is needed" at the optimum.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pulp

from convplan.kernels.spec import LAYOUTS, Layout

#: Solver registry: name -> how to build the PuLP solver (msg off, a time limit).
#: A tiny relative gap: "optimal" must mean optimal (HiGHS stops at 1e-4 by default). CBC is
#: the binary bundled with PuLP 3 (``PULP_CBC_CMD``; PuLP 4 will move it to an extra). Its
#: preprocessing (2.10.3) declares some feasible selection problems infeasible ("Cut generators
#: found to be infeasible"; tests/test_ilp.py found one), so it is off.
SOLVERS = {
    "cbc": lambda limit: pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, gapRel=1e-9,
                                           options=["preprocess off"]),
    "highs": lambda limit: pulp.HiGHS(msg=False, timeLimit=limit, gapRel=1e-9),
}


class PlanningError(ValueError):
    """A cap that cannot be met (the message states the smallest achievable peak), or a
    problem the solver could not answer."""


@dataclass(frozen=True)
class Candidate:
    """One way to run one layer, with its costs."""

    name: str                       # the algorithm (conv) or the layout (other operators)
    algorithm: str | None
    input_layout: Layout
    output_layout: Layout
    time_s: float
    workspace_bytes: int            # predicted: what the memory promise counts
    prepared_bytes: int = 0
    measured_workspace_bytes: int | None = None
    source: str = "measured"        # or "analytic"


@dataclass
class Problem:
    """What the ILP needs, independent of where the numbers came from."""

    order: list[str]
    inputs_of: dict[str, list[str]]
    producer: dict[str, str | None]           # tensor -> producing layer (None: network input)
    tensor_bytes: dict[str, int]
    four_d: set[str]                          # tensors that have a layout
    outputs: list[str]                        # must end up in NCHW
    candidates: dict[str, list[Candidate]]
    fixed_bytes: dict[str, int]               # per layer step, whatever the choices
    transform_time: dict[tuple[str, Layout], float]   # (tensor, into layout) -> seconds
    transform_workspace_bytes: int = 0


@dataclass
class Solution:
    choice: dict[str, int]                    # layer -> index into its candidates
    status: str
    optimal: bool
    solve_seconds: float
    solver: str
    time_s: float                             # the objective, recomputed from the choice
    peak_bytes: int                           # the model's bound, recomputed from the choice
    transforms: list[tuple[str, str, Layout]] = field(default_factory=list)


def _copies(problem: Problem, choice: Mapping[str, int], node: str) -> list[tuple[str, Layout]]:
    """(tensor, layout) of every copy ``node`` needs under ``choice``."""
    wanted = problem.candidates[node][choice[node]].input_layout
    out = []
    for t in dict.fromkeys(problem.inputs_of[node]):
        if t not in problem.four_d:
            continue
        p = problem.producer[t]
        have = "NCHW" if p is None else problem.candidates[p][choice[p]].output_layout
        if have != wanted:
            out.append((t, wanted))
    return out


def evaluate(problem: Problem, choice: Mapping[str, int]) -> tuple[float, int, bool]:
    """(total time, peak bound, outputs in NCHW) of a choice, by the ILP's own accounting."""
    prepared = sum(problem.candidates[n][choice[n]].prepared_bytes for n in problem.order)
    total, peak = 0.0, 0
    for n in problem.order:
        c = problem.candidates[n][choice[n]]
        copies = _copies(problem, choice, n)
        total += c.time_s + sum(problem.transform_time[k] for k in copies)
        step = (problem.fixed_bytes[n] + c.workspace_bytes + prepared
                + sum(problem.tensor_bytes[t] + problem.transform_workspace_bytes
                      for t, _ in copies))
        peak = max(peak, step)
    outputs_ok = all(
        t not in problem.four_d or problem.producer[t] is None
        or problem.candidates[problem.producer[t]][choice[problem.producer[t]]].output_layout
        == "NCHW" for t in problem.outputs)
    return total, peak, outputs_ok


def brute_force(problem: Problem, cap: int | None) -> tuple[float, dict[str, int]] | None:
    """The optimum by enumeration (tests only: exponential)."""
    best = None
    ranges = [range(len(problem.candidates[n])) for n in problem.order]
    for combo in itertools.product(*ranges):
        choice = dict(zip(problem.order, combo, strict=True))
        t, peak, ok = evaluate(problem, choice)
        if ok and (cap is None or peak <= cap) and (best is None or t < best[0] - 1e-12):
            best = (t, choice)
    return best


def solve(problem: Problem, cap: int | None = None, *, solver: str = "cbc",
          time_limit_s: float = 60.0, minimise: str = "time") -> Solution:
    """The fastest choice whose peak stays <= ``cap`` (``minimise="peak"``: the smallest peak,
    ties broken by time). Raises PlanningError when no choice fits."""
    if solver not in SOLVERS:
        raise PlanningError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    model = pulp.LpProblem("convplan", pulp.LpMinimize)
    x = {(n, j): model.add_variable(f"x_{i}_{j}", cat="Binary")
         for i, n in enumerate(problem.order) for j in range(len(problem.candidates[n]))}
    for n in problem.order:
        model += pulp.lpSum(x[n, j] for j in range(len(problem.candidates[n]))) == 1

    def stored(t: str, layout: Layout):
        p = problem.producer[t]
        if p is None:
            return 1 if layout == "NCHW" else 0
        return pulp.lpSum(x[p, j] for j, c in enumerate(problem.candidates[p])
                          if c.output_layout == layout)

    y: dict[tuple[str, str, Layout], pulp.LpVariable] = {}
    copy_bytes: dict[str, list] = {n: [] for n in problem.order}
    transform_time = []
    for i, n in enumerate(problem.order):
        for k, t in enumerate(dict.fromkeys(problem.inputs_of[n])):
            if t not in problem.four_d:
                continue
            for layout in LAYOUTS:
                wants = [j for j, c in enumerate(problem.candidates[n])
                         if c.input_layout == layout]
                if not wants:
                    continue
                var = model.add_variable(f"y_{i}_{k}_{layout}", lowBound=0, upBound=1)
                model += var >= pulp.lpSum(x[n, j] for j in wants) - stored(t, layout)
                y[t, n, layout] = var
                copy_bytes[n].append(
                    (problem.tensor_bytes[t] + problem.transform_workspace_bytes) * var)
                transform_time.append(problem.transform_time[t, layout] * var)
    for t in problem.outputs:
        if t in problem.four_d and problem.producer[t] is not None:
            model += stored(t, "NCHW") == 1

    prepared = pulp.lpSum(c.prepared_bytes * x[n, j] for n in problem.order
                          for j, c in enumerate(problem.candidates[n]) if c.prepared_bytes)
    steps = {n: problem.fixed_bytes[n] + prepared + pulp.lpSum(copy_bytes[n])
             + pulp.lpSum(c.workspace_bytes * x[n, j]
                          for j, c in enumerate(problem.candidates[n]))
             for n in problem.order}
    total_time = (pulp.lpSum(c.time_s * x[n, j] for n in problem.order
                             for j, c in enumerate(problem.candidates[n]))
                  + pulp.lpSum(transform_time))
    if cap is not None:
        for expression in steps.values():
            model += expression <= cap
    if minimise == "peak":
        peak = model.add_variable("peak", lowBound=0)
        for expression in steps.values():
            model += peak >= expression
        # bytes dominate; time (seconds, scaled to sub-byte weight) only breaks ties
        model += peak + 1e-3 * total_time
    else:
        model += total_time

    started = time.perf_counter()
    with _native_stdout_silenced():
        model.solve(SOLVERS[solver](time_limit_s))
    seconds = time.perf_counter() - started
    status = pulp.LpStatus[model.status]
    if model.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        if status == "Infeasible" or model.sol_status == pulp.LpSolutionInfeasible:
            raise PlanningError("infeasible")
        raise PlanningError(f"the solver found no plan within {time_limit_s:g} s ({status})")
    choice = {}
    for n in problem.order:
        values = [x[n, j].value() or 0.0 for j in range(len(problem.candidates[n]))]
        choice[n] = max(range(len(values)), key=values.__getitem__)
    total, peak_bound, _ = evaluate(problem, choice)
    transforms = [(t, n, layout) for n in problem.order
                  for t, layout in _copies(problem, choice, n)]
    return Solution(choice, status, model.sol_status == pulp.LpSolutionOptimal, seconds, solver,
                    total, peak_bound, transforms)


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """HiGHS prints its banner from C++ even with msg=False; it must not land in `--json`
    output. Point file descriptor 1 at /dev/null while the solver runs."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:             # no real stdout (embedded): nothing to protect
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def minimum_peak(problem: Problem, *, solver: str = "cbc", time_limit_s: float = 60.0
                 ) -> Solution:
    """The choice with the smallest peak (the lowest-memory plan)."""
    return solve(problem, None, solver=solver, time_limit_s=time_limit_s, minimise="peak")


def solve_under_cap(problem: Problem, cap: int, *, solver: str = "cbc",
                    time_limit_s: float = 60.0) -> Solution:
    """`solve`, with an infeasible cap reported with the smallest achievable peak."""
    try:
        return solve(problem, cap, solver=solver, time_limit_s=time_limit_s)
    except PlanningError as error:
        if str(error) != "infeasible":
            raise
        lowest = minimum_peak(problem, solver=solver, time_limit_s=time_limit_s)
        raise PlanningError(
            f"no plan fits in {cap} bytes: the smallest achievable peak is "
            f"{lowest.peak_bytes} bytes ({lowest.peak_bytes / 2**20:.2f} MiB)") from None
