"""The selection problem and its ILP: one candidate per layer, fastest total time under a cap.

Every layer (in the network's fixed execution order) picks one candidate: for a convolution an
algorithm (which fixes its input and output layouts), for another operator a layout it runs in.
A tensor takes its producer's output layout; a consumer that needs the other layout pays a
transform (time, and a copy alive during its step). The peak-memory constraint holds at every
step: what is live regardless of choices (`fixed_bytes`, from the memory model) + the step's
workspace + the copies made for it + every layer's prepared weights (they persist) <= cap.
Before the first step the weights are prepared layer by layer, and that phase is bounded too:
the layers already prepared + the originals not yet prepared + the layer's copy <= cap.
The arena (the one buffer every activation, copy and workspace lives in) has a cap of its own:
at every step the arena's activations alive whatever the choices + the step's workspaces + its
copies, each rounded to the arena's alignment, <= arena cap. That sum bounds the most bytes
alive at once, the lower bound of any placement; the placed arena is checked after.

The formulation (PBQP-style selection linearised for an ILP):
    x[n, j] in {0, 1}, sum_j x[n, j] = 1                      one candidate per layer
    z[t, L] = sum of x[producer(t), j] with output layout L    the layout tensor t is stored in
    y[t, n, L] >= sum of x[n, j] with input layout L - z[t, L] consumer n copies t into L
    minimise  sum x * time + sum y * transform time
Layouts are binary (NCHW / NHWC), so y is exactly "a transform is needed" at the optimum.

Each row family is a named builder below, next to the term of `evaluate` that computes the same
quantity for a fixed choice (tests hold the two to brute force). To add a constraint: write its
``*_rows`` builder beside the ``evaluate`` term it must agree with, call the builder from
`_model` and the term from `evaluate`. When a tensor needs a copy is `lowering.needs_copy`,
the one rule lowering also follows.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulp

from convplan.kernels.spec import LAYOUTS, Layout
from convplan.selector.lowering import NETWORK_LAYOUT, needs_copy

#: Solver registry: name -> how to build the PuLP solver (msg off, a time limit).
#: A tiny relative gap: "optimal" must mean optimal (HiGHS stops at 1e-4 by default). CBC is
#: the binary bundled with PuLP 3 (``PULP_CBC_CMD``; PuLP 4 will move it to an extra). Its
#: preprocessing (2.10.3) declares some feasible selection problems infeasible ("Cut generators
#: found to be infeasible"; tests/selector/planning/test_ilp.py found one), so it is off.
SOLVERS = {
    "cbc": lambda limit: pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, gapRel=1e-9,
                                           options=["preprocess off"]),
    "highs": lambda limit: pulp.HiGHS(msg=False, timeLimit=limit, gapRel=1e-9),
}


class PlanningError(ValueError):
    """A cap that cannot be met (the message states the smallest achievable peak), or a
    problem the solver could not answer."""


class Infeasible(PlanningError):
    """No choice satisfies the rows: the cap is below the smallest achievable peak, or the
    network's outputs cannot come out in NCHW. A `PlanningError`, so callers' handlers hold.
    Where one cap alone is refused, ``cap`` names it ("memory" or "arena") and
    ``smallest_bytes`` is the smallest value of it a plan meets (the message states it too)."""

    def __init__(self, message: str, *, cap: str | None = None,
                 smallest_bytes: int | None = None) -> None:
        super().__init__(message)
        self.cap = cap
        self.smallest_bytes = smallest_bytes


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
    #: While this layer's weights are prepared: bytes beyond its original and the layers
    #: already prepared (the copy being made and the preparation's transient).
    preparing_bytes: int = 0
    #: Its workspaces as the arena holds them (each rounded up to the arena's alignment).
    arena_bytes: int = 0


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
    #: Layers whose weights are prepared before the run, in program order -> their original
    #: weights' bytes (held until each is prepared), and what is held beside them throughout.
    original_bytes: dict[str, int] = field(default_factory=dict)
    preparing_fixed_bytes: int = 0
    #: Per layer step, the arena bytes of the activations alive whatever the choices, and what
    #: one copy of a tensor takes in the arena (its bytes, aligned).
    arena_fixed_bytes: dict[str, int] = field(default_factory=dict)
    arena_copy_bytes: dict[str, int] = field(default_factory=dict)


@dataclass
class Solution:
    choice: dict[str, int]                    # layer -> index into its candidates
    status: str
    optimal: bool
    solve_seconds: float
    solver: str
    time_s: float                             # the objective, recomputed from the choice
    peak_bytes: int                           # the model's bound, recomputed from the choice
    arena_bound_bytes: int = 0                # the arena rows' bound, recomputed
    transforms: list[tuple[str, str, Layout]] = field(default_factory=list)


# -- the terms: each quantity for a fixed choice (`evaluate`) and as ILP rows (`_model`) --------
@dataclass
class _Model:
    """The PuLP model being built: x[n, j] (layer n runs candidate j), y[t, n, L] (layer n copies
    tensor t into layout L), and what the rows so far contribute to memory and time."""

    problem: Problem
    lp: pulp.LpProblem
    x: dict[tuple[str, int], pulp.LpVariable]
    y: dict[tuple[str, str, Layout], pulp.LpVariable] = field(default_factory=dict)
    copy_bytes: dict[str, list[Any]] = field(default_factory=dict)
    arena_copies: dict[str, list[Any]] = field(default_factory=dict)
    transform_time: list[Any] = field(default_factory=list)


def one_candidate_rows(m: _Model) -> None:
    """sum_j x[n, j] = 1: every layer runs exactly one candidate (a choice maps each layer to
    one index, so `evaluate` needs no term for it)."""
    for n in m.problem.order:
        m.lp += pulp.lpSum(m.x[n, j] for j in range(len(m.problem.candidates[n]))) == 1


def stored_layout(problem: Problem, choice: Mapping[str, int], t: str) -> Layout:
    """z's term: the layout tensor ``t`` is stored in, its producer's output layout."""
    p = problem.producer[t]
    return NETWORK_LAYOUT if p is None else problem.candidates[p][choice[p]].output_layout


def stored_in(m: _Model, t: str, layouts: list[Layout]) -> Any:
    """z as an expression: 1 when ``t`` is stored in one of ``layouts``."""
    p = m.problem.producer[t]
    if p is None:
        return 1 if NETWORK_LAYOUT in layouts else 0
    return pulp.lpSum(m.x[p, j] for j, c in enumerate(m.problem.candidates[p])
                      if c.output_layout in layouts)


def copy_bytes(problem: Problem, t: str) -> int:
    """What one copy of ``t`` holds during its consumer's step: the copy and the transform's
    own overhead."""
    return problem.tensor_bytes[t] + problem.transform_workspace_bytes


def copies(problem: Problem, choice: Mapping[str, int], node: str) -> list[tuple[str, Layout]]:
    """y's term: (tensor, layout) of every copy ``node`` needs under ``choice``."""
    wanted = problem.candidates[node][choice[node]].input_layout
    return [(t, wanted) for t in dict.fromkeys(problem.inputs_of[node])
            if needs_copy(t in problem.four_d, stored_layout(problem, choice, t), wanted)]


def copy_rows(m: _Model) -> None:
    """y[t, n, L] >= sum of x[n, j] with input layout L - z(t stored where L needs no copy):
    a layer pays a copy of each distinct input it reads in a layout the input is not stored in
    (`lowering.needs_copy`); its bytes count at that layer's step, its time in the objective."""
    p = m.problem
    for i, n in enumerate(p.order):
        m.copy_bytes[n], m.arena_copies[n] = [], []
        for k, t in enumerate(dict.fromkeys(p.inputs_of[n])):
            if t not in p.four_d:
                continue
            for layout in LAYOUTS:
                wants = [j for j, c in enumerate(p.candidates[n]) if c.input_layout == layout]
                if not wants:
                    continue
                no_copy = [h for h in LAYOUTS if not needs_copy(True, h, layout)]
                var = m.lp.add_variable(f"y_{i}_{k}_{layout}", lowBound=0, upBound=1)
                m.lp += var >= pulp.lpSum(m.x[n, j] for j in wants) - stored_in(m, t, no_copy)
                m.y[t, n, layout] = var
                m.copy_bytes[n].append(copy_bytes(p, t) * var)
                m.arena_copies[n].append(p.arena_copy_bytes.get(t, 0) * var)
                m.transform_time.append(p.transform_time[t, layout] * var)


def outputs_in_network_layout(problem: Problem, choice: Mapping[str, int]) -> bool:
    """The output term: every 4-D network output is stored in NCHW (nothing copies it after)."""
    return all(t not in problem.four_d or problem.producer[t] is None
               or stored_layout(problem, choice, t) == NETWORK_LAYOUT for t in problem.outputs)


def output_rows(m: _Model) -> None:
    """z[t, NCHW] = 1 for every 4-D network output a layer produces."""
    for t in m.problem.outputs:
        if t in m.problem.four_d and m.problem.producer[t] is not None:
            m.lp += stored_in(m, t, [NETWORK_LAYOUT]) == 1


def step_bytes(problem: Problem, choice: Mapping[str, int], n: str, prepared: int) -> int:
    """The memory term of step ``n``: what is live whatever the choices, the step's workspace,
    the copies made for it, and every layer's ``prepared`` weights (they persist)."""
    c = problem.candidates[n][choice[n]]
    return (problem.fixed_bytes[n] + c.workspace_bytes + prepared
            + sum(copy_bytes(problem, t) for t, _ in copies(problem, choice, n)))


def prepared_bytes(problem: Problem, choice: Mapping[str, int]) -> int:
    """Every chosen candidate's prepared weights (counted at every step)."""
    return sum(problem.candidates[n][choice[n]].prepared_bytes for n in problem.order)


def step_bytes_exprs(m: _Model) -> dict[str, Any]:
    """`step_bytes` of every step as an expression (needs `copy_rows` first)."""
    p, x = m.problem, m.x
    prepared = pulp.lpSum(c.prepared_bytes * x[n, j] for n in p.order
                          for j, c in enumerate(p.candidates[n]) if c.prepared_bytes)
    return {n: p.fixed_bytes[n] + prepared + pulp.lpSum(m.copy_bytes[n])
            + pulp.lpSum(c.workspace_bytes * x[n, j] for j, c in enumerate(p.candidates[n]))
            for n in p.order}


def preparing_bytes(problem: Problem, choice: Mapping[str, int], n: str) -> int:
    """The term of preparing layer ``n``'s weights (the memory model's preparation phase): the
    layers before it prepared, it and the later ones still their originals, its copy and
    transient, and what is held throughout."""
    layers = list(problem.original_bytes)
    i = layers.index(n)
    return (problem.preparing_fixed_bytes
            + sum(problem.candidates[k][choice[k]].prepared_bytes for k in layers[:i])
            + sum(problem.original_bytes[k] for k in layers[i:])
            + problem.candidates[n][choice[n]].preparing_bytes)


def preparing_exprs(m: _Model) -> dict[str, Any]:
    """`preparing_bytes` of every prepared layer as an expression, keyed ``preparing <n>``."""
    p, x = m.problem, m.x
    layers = list(p.original_bytes)
    out = {}
    for i, n in enumerate(layers):
        out[f"preparing {n}"] = (
            p.preparing_fixed_bytes + sum(p.original_bytes[k] for k in layers[i:])
            + pulp.lpSum(c.prepared_bytes * x[k, j] for k in layers[:i]
                         for j, c in enumerate(p.candidates[k]) if c.prepared_bytes)
            + pulp.lpSum(c.preparing_bytes * x[n, j] for j, c in enumerate(p.candidates[n])
                         if c.preparing_bytes))
    return out


def arena_step_bytes(problem: Problem, choice: Mapping[str, int], n: str) -> int:
    """The arena term of step ``n``: its activations alive whatever the choices, its
    candidate's workspaces and the copies made for it, as the arena holds them."""
    return (problem.arena_fixed_bytes.get(n, 0)
            + problem.candidates[n][choice[n]].arena_bytes
            + sum(problem.arena_copy_bytes.get(t, 0) for t, _ in copies(problem, choice, n)))


def arena_bound(problem: Problem, choice: Mapping[str, int]) -> int:
    """The arena rows' bound of a choice: its largest `arena_step_bytes`."""
    return max((arena_step_bytes(problem, choice, n) for n in problem.order), default=0)


def arena_exprs(m: _Model) -> dict[str, Any]:
    """`arena_step_bytes` of every step as an expression (needs `copy_rows` first)."""
    p, x = m.problem, m.x
    return {n: p.arena_fixed_bytes.get(n, 0) + pulp.lpSum(m.arena_copies[n])
            + pulp.lpSum(c.arena_bytes * x[n, j] for j, c in enumerate(p.candidates[n])
                         if c.arena_bytes)
            for n in p.order}


def cap_rows(m: _Model, steps: Mapping[str, Any], cap: int) -> None:
    """step bytes <= cap at every step (`brute_force`'s ``peak <= cap``)."""
    for expression in steps.values():
        m.lp += expression <= cap


def step_time(problem: Problem, choice: Mapping[str, int], n: str) -> float:
    """The time term of step ``n``: its candidate and the transforms of its copies."""
    return (problem.candidates[n][choice[n]].time_s
            + sum(problem.transform_time[k] for k in copies(problem, choice, n)))


def time_expr(m: _Model) -> Any:
    """The objective's time: sum x * time + sum y * transform time (needs `copy_rows` first)."""
    p = m.problem
    return (pulp.lpSum(c.time_s * m.x[n, j] for n in p.order
                       for j, c in enumerate(p.candidates[n]))
            + pulp.lpSum(m.transform_time))


def peak_objective(m: _Model, steps: Mapping[str, Any], total_time: Any) -> None:
    """Minimise the largest step (bytes dominate; time, in seconds scaled to sub-byte weight,
    only breaks ties): `evaluate`'s peak, or `arena_bound` given the arena steps."""
    peak = m.lp.add_variable("peak", lowBound=0)
    for expression in steps.values():
        m.lp += peak >= expression
    m.lp += peak + 1e-3 * total_time


def evaluate(problem: Problem, choice: Mapping[str, int]) -> tuple[float, int, bool]:
    """(total time, peak bound, outputs in NCHW) of a choice, by the ILP's own accounting."""
    prepared = prepared_bytes(problem, choice)
    total, peak = 0.0, 0
    for n in problem.order:
        total += step_time(problem, choice, n)
        peak = max(peak, step_bytes(problem, choice, n, prepared))
    for n in problem.original_bytes:
        peak = max(peak, preparing_bytes(problem, choice, n))
    return total, peak, outputs_in_network_layout(problem, choice)


def brute_force(problem: Problem, cap: int | None, arena_cap: int | None = None
                ) -> tuple[float, dict[str, int]] | None:
    """The optimum by enumeration (tests only: exponential)."""
    best = None
    ranges = [range(len(problem.candidates[n])) for n in problem.order]
    for combo in itertools.product(*ranges):
        choice = dict(zip(problem.order, combo, strict=True))
        t, peak, ok = evaluate(problem, choice)
        ok = ok and (arena_cap is None or arena_bound(problem, choice) <= arena_cap)
        if ok and (cap is None or peak <= cap) and (best is None or t < best[0] - 1e-12):
            best = (t, choice)
    return best


# -- the ILP -------------------------------------------------------------------------------------
def _model(problem: Problem, cap: int | None, minimise: str, arena_cap: int | None = None
           ) -> _Model:
    """Every row of the selection problem, in a fixed order (the solvers' answers on ties
    depend on it). ``minimise``: "time", "peak" or "arena"."""
    lp = pulp.LpProblem("convplan", pulp.LpMinimize)
    x = {(n, j): lp.add_variable(f"x_{i}_{j}", cat="Binary")
         for i, n in enumerate(problem.order) for j in range(len(problem.candidates[n]))}
    m = _Model(problem, lp, x)
    one_candidate_rows(m)
    copy_rows(m)
    output_rows(m)
    steps = {**step_bytes_exprs(m), **preparing_exprs(m)}
    total_time = time_expr(m)
    arena = arena_exprs(m) if arena_cap is not None or minimise == "arena" else {}
    if cap is not None:
        cap_rows(m, steps, cap)
    if arena_cap is not None:
        cap_rows(m, arena, arena_cap)
    if minimise == "peak":
        peak_objective(m, steps, total_time)
    elif minimise == "arena":
        peak_objective(m, arena, total_time)
    else:
        m.lp += total_time
    return m


def solve(problem: Problem, cap: int | None = None, *, arena_cap: int | None = None,
          solver: str = "cbc", time_limit_s: float = 60.0, minimise: str = "time") -> Solution:
    """The fastest choice whose peak stays <= ``cap`` and whose arena bound stays <=
    ``arena_cap`` (``minimise="peak"``: the smallest peak, ``"arena"``: the smallest arena
    bound; ties broken by time). Raises Infeasible when no choice fits, PlanningError when the
    solver gives no answer."""
    if solver not in SOLVERS:
        raise PlanningError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    m = _model(problem, cap, minimise, arena_cap)
    model = m.lp
    started = time.perf_counter()
    with _native_stdout_silenced():
        try:
            model.solve(SOLVERS[solver](time_limit_s))
        except pulp.PulpSolverError as error:
            # CBC 2.10.3 with preprocessing off can crash (a segmentation fault) on an
            # infeasible selection problem; HiGHS answers the same model.
            if solver == "highs":
                raise PlanningError(f"the solver failed: {error}") from None
            solver = "highs"
            try:
                model.solve(SOLVERS[solver](time_limit_s))
            except pulp.PulpSolverError as again:
                raise PlanningError(f"the solver failed: {again}") from None
    seconds = time.perf_counter() - started
    status = pulp.LpStatus[model.status]
    if model.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        if status == "Infeasible" or model.sol_status == pulp.LpSolutionInfeasible:
            raise Infeasible("infeasible")
        raise PlanningError(f"the solver found no plan within {time_limit_s:g} s ({status})")
    choice = {}
    for n in problem.order:
        values = [m.x[n, j].value() or 0.0 for j in range(len(problem.candidates[n]))]
        choice[n] = max(range(len(values)), key=values.__getitem__)
    total, peak_bound, _ = evaluate(problem, choice)
    transforms = [(t, n, layout) for n in problem.order
                  for t, layout in copies(problem, choice, n)]
    return Solution(choice, status, model.sol_status == pulp.LpSolutionOptimal, seconds, solver,
                    total, peak_bound, arena_bound(problem, choice), transforms)


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


def minimum_peak(problem: Problem, *, arena_cap: int | None = None, solver: str = "cbc",
                 time_limit_s: float = 60.0) -> Solution:
    """The choice with the smallest peak (the lowest-memory plan), its arena bound within
    ``arena_cap`` if given."""
    return solve(problem, None, arena_cap=arena_cap, solver=solver, time_limit_s=time_limit_s,
                 minimise="peak")


def minimum_arena(problem: Problem, *, cap: int | None = None, solver: str = "cbc",
                  time_limit_s: float = 60.0) -> Solution:
    """The choice with the smallest arena bound, its peak within ``cap`` if given."""
    return solve(problem, cap, solver=solver, time_limit_s=time_limit_s, minimise="arena")
