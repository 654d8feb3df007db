"""Plans: the selection problem of a real network, solved under a cap, with its baselines.

`build_problem` turns a network and measured costs into the ILP's `Problem`: every applicable
algorithm of every convolution, every layout of every other operator, transform times per tensor,
and what is live at each step whatever the choices (from `memory`, the one memory model).
`make_plan` solves it and writes the plan document: the choice per layer with every candidate it
considered, the transforms, the solver's status, and four baselines (fastest per layer ignoring
memory, im2col everywhere, greedy per layer under the cap, lowest memory), each with its time and
its peak as the memory model predicts it for the lowered program.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from convplan.kernels import registry
from convplan.kernels.spec import Layout
from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import Profiler, Progress
from convplan.profiles.requests import ConvRequest, CostRequest, OpRequest, TransformRequest
from convplan.profiles.store import CostStore

from .ilp import (
    SOLVERS,
    Candidate,
    PlanningError,
    Problem,
    Solution,
    evaluate,
    minimum_peak,
    solve,
)
from .lowering import lower
from .memory import EXECUTOR_BYTES, EXECUTOR_BYTES_PER_STEP, predict, tensor_bytes
from .network import Name, Network, NetworkError, load_json, quoted

#: Costs for a batch of requests: ``Profiler.costs`` (measured, cached, or estimated).
CostFunction = Callable[[list[CostRequest]], Mapping[tuple[str, str, str], Measurement]]

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


# -- plans that come in ---------------------------------------------------------------------------
class PlanError(NetworkError):
    """A plan that cannot run on the network it is given: the message says why."""


class PlanSpec(BaseModel):
    """What running a plan needs of a plan document (`convplan run --plan`, `/v1/run`): the
    algorithm of every convolution, optionally the layout of other layers, the thread count
    and the network's name. A whole plan document validates (its other keys are kept).
    Whether it fits a network (every convolution, known algorithms ...) is `check_plan`'s."""

    model_config = ConfigDict(extra="allow", strict=True)
    network: Name | None = Field(None, description="The network the plan was made for.")
    assignment: Annotated[dict[Name, Annotated[str, Field(max_length=64)]],
                          Field(max_length=100_000)] = Field(
        description="Conv layer name -> algorithm name, for every convolution.")
    layouts: Annotated[dict[Name, Literal["NCHW", "NHWC"]], Field(max_length=100_000)] = Field(
        default_factory=dict, description="Other layer name -> layout (NCHW or NHWC).")
    threads: Annotated[StrictInt, Field(ge=1, le=4096)] | None = None


def plan_spec(data: Any, what: str = "the plan") -> PlanSpec:
    """A `PlanSpec` from JSON text or parsed data; PlanError saying what is wrong."""
    if isinstance(data, PlanSpec):
        return data
    if isinstance(data, str | bytes):
        try:
            data = load_json(data, what)
        except NetworkError as error:
            raise PlanError(str(error)) from None
    if not isinstance(data, Mapping):
        raise PlanError(f"{what} is not a plan: expected a JSON object with an \"assignment\" "
                        "(conv layer name -> algorithm name)")
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as error:
        problems = []
        for e in error.errors(include_url=False, include_input=False)[:5]:
            where = ".".join(str(p)[:60] for p in e["loc"]) or "(top level)"
            problems.append(f"{where}: {e['msg'][:300]}")
        more = f" (and {error.error_count() - 5} more)" if error.error_count() > 5 else ""
        raise PlanError(f"{what} is not a valid plan: " + "; ".join(problems) + more) from None


def _names(names: Any, limit: int = 5) -> str:
    names = sorted(names)
    listed = ", ".join(quoted(n) for n in names[:limit])
    return listed + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_plan(network: Network, assignment: Mapping[str, str],
               layouts: Mapping[str, str] | None = None, *, made_for: str | None = None
               ) -> None:
    """PlanError unless the plan fits ``network`` exactly: made for it (when the plan names its
    network), an algorithm for every convolution and for nothing else, layouts only for its
    other layers and only ones they run in, and only known algorithms."""
    if made_for is not None and made_for != network.name:
        raise PlanError(f"the plan was made for network {quoted(made_for)}, not "
                        f"{quoted(network.name)}")
    kinds = {n.name: n for n in network.nodes}
    convs = {n.name for n in network.conv_nodes}
    unknown = set(assignment) - set(kinds)
    if unknown:
        raise PlanError(f"the plan assigns algorithms to layers {quoted(network.name)} "
                        f"does not have: {_names(unknown)}")
    not_conv = set(assignment) - convs
    if not_conv:
        raise PlanError(f"the plan assigns algorithms to layers that are not convolutions: "
                        f"{_names(not_conv)}")
    missing = convs - set(assignment)
    if missing:
        raise PlanError(f"the plan assigns no algorithm to convolution(s) {_names(missing)}")
    known = {a.name for a in registry.all_algorithms()}
    for layer, name in assignment.items():
        if name not in known:
            raise PlanError(f"layer {quoted(layer)}: unknown algorithm {quoted(name)}")
    for layer, layout in (layouts or {}).items():
        if layer not in kinds:
            raise PlanError(f"the plan gives a layout to layer {quoted(layer)}, which "
                            f"{quoted(network.name)} does not have")
        if layer in convs:
            raise PlanError(f"the plan gives a layout to convolution {quoted(layer)}; a "
                            "convolution runs in its algorithm's layout")
        if layout not in kinds[layer].operator.layouts:
            runs_in = ", ".join(kinds[layer].operator.layouts)
            raise PlanError(f"layer {quoted(layer)}: {kinds[layer].op} does not run in "
                            f"{quoted(layout)} (only {runs_in})")


# -- the problem ---------------------------------------------------------------------------------
@dataclass
class NetworkProblem:
    """A network's selection problem and the facts a plan needs to describe it."""

    network: Network
    problem: Problem
    sources: set[str]


def _op_layouts(network: Network, node) -> list[Layout]:
    has_4d = any(len(network.shapes[t]) == 4 for t in node.inputs)
    return list(node.operator.layouts) if has_4d else ["NCHW"]


def requests_for(network: Network) -> list[CostRequest]:
    """Everything a plan of ``network`` needs measured (identical specs appear once)."""
    out: dict[tuple[str, str, str], CostRequest] = {}

    def add(request: CostRequest) -> None:
        out.setdefault((request.kind, request.key, request.candidate), request)

    for node in network.nodes:
        shapes = [network.shapes[t] for t in node.inputs]
        if node.op == "conv":
            spec = network.conv_spec(node)
            for algorithm in registry.applicable(spec):
                add(ConvRequest(spec, algorithm.name))
        else:
            for layout in _op_layouts(network, node):
                add(OpRequest.of(node.operator, shapes, layout))
    for shape in network.shapes.values():
        if len(shape) == 4:
            add(TransformRequest(shape, "NCHW", "NHWC"))
            add(TransformRequest(shape, "NHWC", "NCHW"))
    return list(out.values())


def fixed_bytes(network: Network) -> dict[str, int]:
    """Per layer step, the bytes live whatever the plan chooses: activations (the layer's output
    included), the caller's inputs and the executor's allowance for the most steps a plan can
    have. Measured on the program where every layer runs in NCHW (no copies, no workspace)."""
    baseline = lower(network, {n.name: "direct" for n in network.conv_nodes},
                     layouts={n.name: "NCHW" for n in network.nodes if n.op != "conv"},
                     strict=True)
    profile = predict(baseline.program)
    edges = sum(1 for n in network.nodes for t in dict.fromkeys(n.inputs)
                if len(network.shapes[t]) == 4)
    most_steps = len(network.nodes) + edges + len(network.outputs)
    allowance = EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * most_steps
    return {s.name: s.activation_bytes + profile.input_bytes + allowance
            for s in profile.steps if s.kind != "transform"}


def build_problem(network: Network, costs: CostFunction) -> NetworkProblem:
    """The ILP problem of ``network`` with costs from ``costs`` (a profiler)."""
    measured = costs(requests_for(network))
    sources: set[str] = set()

    def cost(request: CostRequest) -> Measurement:
        m = measured[(request.kind, request.key, request.candidate)]
        sources.add(m.source)
        return m

    candidates: dict[str, list[Candidate]] = {}
    for node in network.nodes:
        shapes = [network.shapes[t] for t in node.inputs]
        options = []
        if node.op == "conv":
            spec = network.conv_spec(node)
            bias = "bias" in node.weights
            for algorithm in registry.applicable(spec):
                m = cost(ConvRequest(spec, algorithm.name))
                options.append(Candidate(
                    algorithm.name, algorithm.name, algorithm.input_layout,
                    algorithm.output_layout, m.time_s, algorithm.workspace_bytes(spec),
                    algorithm.prepared_bytes(spec, bias), m.workspace_bytes, m.source))
        else:
            workspace = node.operator.workspace_bytes(shapes, 4)
            for layout in _op_layouts(network, node):
                m = cost(OpRequest.of(node.operator, shapes, layout))
                out_layout = layout if all(len(network.shapes[t]) == 4 for t in node.outputs) \
                    else "NCHW"
                options.append(Candidate(layout, None, layout, out_layout, m.time_s, workspace,
                                         0, m.workspace_bytes, m.source))
        candidates[node.name] = options

    producer: dict[str, str | None] = dict.fromkeys(network.inputs)
    for node in network.nodes:
        for t in node.outputs:
            producer[t] = node.name
    four_d = {t for t, s in network.shapes.items() if len(s) == 4}
    transform_time = {}
    for t in four_d:
        shape = network.shapes[t]
        transform_time[t, "NHWC"] = cost(TransformRequest(shape, "NCHW", "NHWC")).time_s
        transform_time[t, "NCHW"] = cost(TransformRequest(shape, "NHWC", "NCHW")).time_s
    problem = Problem(
        order=[n.name for n in network.nodes],
        inputs_of={n.name: list(n.inputs) for n in network.nodes},
        producer=producer,
        tensor_bytes={t: tensor_bytes(s) for t, s in network.shapes.items()},
        four_d=four_d, outputs=list(network.outputs), candidates=candidates,
        fixed_bytes=fixed_bytes(network), transform_time=transform_time,
        transform_workspace_bytes=_transform_workspace())
    return NetworkProblem(network, problem, sources)


def _transform_workspace() -> int:
    from convplan.kernels.base import run_overhead_bytes

    return run_overhead_bytes(4)


# -- choices as runnable assignments ---------------------------------------------------------------
def assignment_of(np_: NetworkProblem, choice: Mapping[str, int]
                  ) -> tuple[dict[str, str], dict[str, Layout]]:
    """(conv layer -> algorithm, other layer -> layout) for `lowering.lower`."""
    algorithms, layouts = {}, {}
    for node in np_.network.nodes:
        c = np_.problem.candidates[node.name][choice[node.name]]
        if c.algorithm is not None:
            algorithms[node.name] = c.algorithm
        else:
            layouts[node.name] = c.input_layout
    return algorithms, layouts


def predicted_peak(np_: NetworkProblem, choice: Mapping[str, int]) -> int:
    """The memory model's peak for the program this choice lowers to (what `run` measures)."""
    algorithms, layouts = assignment_of(np_, choice)
    return predict(lower(np_.network, algorithms, layouts=layouts, strict=True).program).peak_bytes


def _choice_where(np_: NetworkProblem, pick: Callable[[str, list[Candidate]], int]
                  ) -> dict[str, int]:
    return {n: pick(n, cs) for n, cs in np_.problem.candidates.items()}


def _nchw_output_fix(np_: NetworkProblem, choice: dict[str, int]) -> dict[str, int]:
    """Baselines ignore layouts; a network output must still come out in NCHW."""
    p = np_.problem
    for t in p.outputs:
        node = p.producer[t]
        if node is not None and t in p.four_d and \
                p.candidates[node][choice[node]].output_layout != "NCHW":
            options = [j for j, c in enumerate(p.candidates[node]) if c.output_layout == "NCHW"]
            choice[node] = min(options, key=lambda j: p.candidates[node][j].time_s)
    return choice


def baselines(np_: NetworkProblem, cap: int | None, *, solver: str = "cbc",
              time_limit_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """The four reference plans, each with time (its costs plus transforms) and predicted peak."""
    p = np_.problem

    def fastest(_: str, cs: list[Candidate]) -> int:
        return min(range(len(cs)), key=lambda j: cs[j].time_s)

    def im2col(_: str, cs: list[Candidate]) -> int:
        names = [c.name for c in cs]
        return names.index("im2col") if "im2col" in names else names.index("NCHW")

    min_prepared = sum(min(c.prepared_bytes for c in cs) for cs in p.candidates.values())

    def greedy(n: str, cs: list[Candidate]) -> int:
        """cuDNN's way: per layer, the fastest candidate whose workspace fits what the cap
        leaves at that step (ignoring the rest of the network's choices)."""
        room = None if cap is None else cap - p.fixed_bytes[n] - min_prepared
        fits = [j for j, c in enumerate(cs) if room is None or c.workspace_bytes <= room]
        if not fits:
            return min(range(len(cs)), key=lambda j: cs[j].workspace_bytes)
        return min(fits, key=lambda j: cs[j].time_s)

    choices = {"fastest": _choice_where(np_, fastest), "im2col": _choice_where(np_, im2col),
               "greedy": _choice_where(np_, greedy)}
    out: dict[str, dict[str, Any]] = {}
    for name, choice in choices.items():
        choice = _nchw_output_fix(np_, choice)
        out[name] = _summary(np_, choice, cap)
    lowest = minimum_peak(p, solver=solver, time_limit_s=time_limit_s)
    out["lowest_memory"] = _summary(np_, lowest.choice, cap)
    return out


def _summary(np_: NetworkProblem, choice: Mapping[str, int], cap: int | None) -> dict[str, Any]:
    """Time, predicted peak, and what `run` needs to execute it."""
    time_s, _, _ = evaluate(np_.problem, choice)
    peak = predicted_peak(np_, choice)
    algorithms, layouts = assignment_of(np_, choice)
    return {"time_s": time_s, "peak_bytes": peak, "fits_cap": cap is None or peak <= cap,
            "assignment": algorithms, "layouts": layouts}


# -- the plan document ----------------------------------------------------------------------------
def _candidate_doc(c: Candidate) -> dict[str, Any]:
    return {"name": c.name, "algorithm": c.algorithm, "input_layout": c.input_layout,
            "output_layout": c.output_layout, "time_s": c.time_s,
            "workspace_bytes": c.workspace_bytes, "prepared_bytes": c.prepared_bytes,
            "measured_workspace_bytes": c.measured_workspace_bytes, "source": c.source}


def plan_document(np_: NetworkProblem, solution: Solution, cap: int | None,
                  machine: Mapping[str, Any], threads: int,
                  baseline_plans: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plan as JSON-ready data (what `convplan plan --json` prints and `run --plan` reads)."""
    network, p = np_.network, np_.problem
    algorithms, layouts = assignment_of(np_, solution.choice)
    layers = []
    for node in network.nodes:
        options = p.candidates[node.name]
        c = options[solution.choice[node.name]]
        layers.append({"name": node.name, "op": node.op, "algorithm": c.algorithm,
                       "input_layout": c.input_layout, "output_layout": c.output_layout,
                       "time_s": c.time_s, "workspace_bytes": c.workspace_bytes,
                       "prepared_bytes": c.prepared_bytes,
                       "candidates": [_candidate_doc(o) for o in options]})
    transforms = [{"tensor": t, "for": n, "into": layout,
                   "time_s": p.transform_time[t, layout], "bytes": p.tensor_bytes[t]}
                  for t, n, layout in solution.transforms]
    costs = next(iter(np_.sources)) if len(np_.sources) == 1 else "mixed"
    return {
        "network": network.name,
        "machine": dict(machine),
        "threads": threads,
        "memory_cap_bytes": cap,
        "costs": costs,
        "solver": {"name": solution.solver, "status": solution.status,
                   "optimal": solution.optimal, "solve_seconds": solution.solve_seconds},
        "predicted": {"time_s": solution.time_s,
                      "peak_bytes": predicted_peak(np_, solution.choice),
                      "model_bound_bytes": solution.peak_bytes},
        "assignment": algorithms,
        "layouts": layouts,
        "layers": layers,
        "transforms": transforms,
        "baselines": dict(baseline_plans or {}),
    }


def make_plan(network: Network, costs: CostFunction, cap: int | None, *, machine: Mapping,
              threads: int, solver: str = "cbc", time_limit_s: float = 60.0,
              with_baselines: bool = True) -> dict[str, Any]:
    """Solve ``network`` under ``cap`` (None: fastest) and return the plan document."""
    from .ilp import solve_under_cap

    np_ = build_problem(network, costs)
    if cap is None:
        solution = solve(np_.problem, None, solver=solver, time_limit_s=time_limit_s)
    else:
        solution = solve_under_cap(np_.problem, cap, solver=solver, time_limit_s=time_limit_s)
        solution = _held_to(np_, solution, cap, solver=solver, time_limit_s=time_limit_s)
    extra = baselines(np_, cap, solver=solver, time_limit_s=time_limit_s) \
        if with_baselines else {}
    return plan_document(np_, solution, cap, machine, threads, extra)


def _held_to(np_: NetworkProblem, solution: Solution, cap: int, *, solver: str,
             time_limit_s: float, attempts: int = 3) -> Solution:
    """The ILP's per-step accounting bounds the memory model's prediction from above for
    every choice tried so far, but the plan's promise is the prediction: a solution the
    memory model puts over the cap is solved again under a cap lowered by the excess, and
    refused if that does not help. Never a plan over its cap."""
    for _ in range(attempts):
        peak = predicted_peak(np_, solution.choice)
        if peak <= cap:
            return solution
        lowered = cap - (peak - cap)
        try:
            solution = solve(np_.problem, lowered, solver=solver, time_limit_s=time_limit_s)
        except PlanningError:
            break
    raise PlanningError(f"no plan fits in {cap} bytes by the memory model (the solver's best "
                        f"plan needs {predicted_peak(np_, solution.choice)}); give a larger cap")


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
                 ) -> dict[str, Any]:
    """Plan ``network`` as ``request`` asks: the plan document."""
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


def pareto(np_: NetworkProblem, points: int = 8, *, solver: str = "cbc",
           time_limit_s: float = 60.0) -> list[dict[str, Any]]:
    """The time / peak-memory frontier: re-solve over caps from the lowest achievable peak to the
    fastest plan's peak; dominated and repeated points are dropped, so time falls as peak rises."""
    p = np_.problem
    low = minimum_peak(p, solver=solver, time_limit_s=time_limit_s)
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
        found.append({"cap_bytes": cap, "time_s": s.time_s, "peak_bytes": s.peak_bytes,
                      "predicted_peak_bytes": predicted_peak(np_, s.choice),
                      "optimal": s.optimal, "choice": s.choice})
    frontier: list[dict[str, Any]] = []
    for point in sorted(found, key=lambda q: (q["peak_bytes"], q["time_s"])):
        if not frontier or point["time_s"] < frontier[-1]["time_s"] - 1e-12:
            frontier.append(point)
    return frontier
