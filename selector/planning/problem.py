"""The problem: a network and measured costs become the ILP's `Problem`, held in a `PlanContext`.

`build_problem` prices the one enumeration (`candidates`) and adds what is live at each step
whatever the choices (from `memory`, the one memory model). The `PlanContext` it returns keeps
the memory model's profile of every assignment asked about, so one plan request lowers and
predicts each assignment once: the solution, `_held_to`'s checks, the four baselines, the
Pareto points and the plan document share them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from convplan.kernels import registry
from convplan.kernels.arena import ALIGNMENT, aligned, buffers, live_bytes
from convplan.kernels.executor import Program
from convplan.kernels.spec import Layout
from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import request_key
from convplan.profiles.requests import CostRequest
from convplan.selector.lowering import lower
from convplan.selector.memory import (
    EXECUTOR_BYTES,
    EXECUTOR_BYTES_PER_STEP,
    PREPARED_OBJECT_BYTES,
    SLOT_BYTES_PER_STEP,
    MemoryProfile,
    array_overhead_bytes,
    predict,
    tensor_bytes,
)
from convplan.selector.network import Network, Node

from .candidates import enumerate_candidates
from .ilp import Problem, Solution, minimum_arena, minimum_peak

#: Dimensions enough for any view of the arena (im2col's patches have 5).
MAX_RANK = 6

#: Costs for a batch of requests: ``Profiler.costs`` (measured, cached, or estimated).
CostFunction = Callable[[list[CostRequest]], Mapping[tuple[str, str, str], Measurement]]


@dataclass
class Predictions:
    """The memory model's profile of each runnable assignment of ``network``, as a run that
    owns the network's weights holds them: lowered (strict) and predicted the first time it is
    asked for, remembered after."""

    network: Network
    _seen: dict[tuple, tuple[Program, MemoryProfile]] = field(default_factory=dict, repr=False)

    def profile(self, algorithms: Mapping[str, str], layouts: Mapping[str, Layout]
                ) -> MemoryProfile:
        return self._lowered(algorithms, layouts)[1]

    def program(self, algorithms: Mapping[str, str], layouts: Mapping[str, Layout]
                ) -> Program:
        """The program the assignment lowers to (its arena placed), as `profile` saw it."""
        return self._lowered(algorithms, layouts)[0]

    def _lowered(self, algorithms: Mapping[str, str], layouts: Mapping[str, Layout]
                 ) -> tuple[Program, MemoryProfile]:
        key = (tuple(sorted(algorithms.items())), tuple(sorted(layouts.items())))
        if key not in self._seen:
            program = lower(self.network, algorithms, layouts=layouts, strict=True).program
            # A plan promises the run that loads the network itself (convplan run, /v1/run):
            # it holds each layer's original until that layer is prepared, more than a run
            # of a caller's network, whose originals are the caller's.
            program.owns_weights = True
            self._seen[key] = (program, predict(program))
        return self._seen[key]


@dataclass
class PlanContext:
    """One plan request's network, its selection problem, where its costs came from, and the
    memory model's verdict on every assignment tried so far."""

    network: Network
    problem: Problem
    sources: set[str]
    predictions: Predictions
    _lowest: dict[tuple, Solution] = field(default_factory=dict, repr=False)

    def lowest(self, solver: str = "cbc", time_limit_s: float = 60.0, *,
               arena_cap: int | None = None) -> Solution:
        """The lowest-memory choice (`ilp.minimum_peak`, its arena bound within ``arena_cap``
        if given), solved once per request: the baselines, a refused cap and the Pareto sweep
        all ask for it."""
        key = ("peak", arena_cap, solver, time_limit_s)
        if key not in self._lowest:
            self._lowest[key] = minimum_peak(self.problem, arena_cap=arena_cap, solver=solver,
                                             time_limit_s=time_limit_s)
        return self._lowest[key]

    def smallest_arena(self, solver: str = "cbc", time_limit_s: float = 60.0) -> Solution:
        """The choice of the smallest arena bound (`ilp.minimum_arena`), solved once."""
        key = ("arena", None, solver, time_limit_s)
        if key not in self._lowest:
            self._lowest[key] = minimum_arena(self.problem, solver=solver,
                                              time_limit_s=time_limit_s)
        return self._lowest[key]

    def assignment(self, choice: Mapping[str, int]) -> tuple[dict[str, str], dict[str, Layout]]:
        """(conv layer -> algorithm, other layer -> layout) for `lowering.lower`."""
        algorithms, layouts = {}, {}
        for node in self.network.nodes:
            c = self.problem.candidates[node.name][choice[node.name]]
            if c.algorithm is not None:
                algorithms[node.name] = c.algorithm
            else:
                layouts[node.name] = c.input_layout
        return algorithms, layouts

    def predicted_peak(self, choice: Mapping[str, int]) -> int:
        """The memory model's peak for the program this choice lowers to (what `run`
        measures)."""
        return self.predictions.profile(*self.assignment(choice)).peak_bytes

    def arena_bytes(self, choice: Mapping[str, int]) -> int:
        """The placed arena of the program this choice lowers to (what the executor
        allocates)."""
        return self.predictions.profile(*self.assignment(choice)).arena_bytes


@dataclass(frozen=True)
class Caps:
    """What a plan must fit: ``memory`` bounds the whole footprint the memory model predicts
    (weights, inputs, the arena, allowances), ``arena`` the placed arena alone (the buffer an
    embedded deployer sizes); None: unbounded."""

    memory: int | None = None
    arena: int | None = None

    def met_by(self, context: PlanContext, choice: Mapping[str, int]) -> bool:
        return ((self.memory is None or context.predicted_peak(choice) <= self.memory)
                and (self.arena is None or context.arena_bytes(choice) <= self.arena))


def fixed_bytes(network: Network, predictions: Predictions | None = None) -> dict[str, int]:
    """Per layer step, the bytes live whatever the plan chooses: activations (the layer's output
    included), the caller's inputs and the executor's allowance for the most steps a plan can
    have. Measured on the program where every layer runs in NCHW (no copies, no workspace)."""
    predictions = predictions or Predictions(network)
    profile = predictions.profile(*_all_nchw(network))
    held = (held_throughout(network, predictions)
            + beyond_live_bytes(network, profile.output_bytes, most_steps(network)))
    return {s.name: s.activation_bytes + held for s in profile.steps if s.kind != "transform"}


def arena_fixed_bytes(network: Network, predictions: Predictions | None = None
                      ) -> dict[str, int]:
    """Per layer step, the arena bytes of the activations alive whatever the plan chooses
    (aligned, as the arena holds them; not the buffers of the network's outputs, which each
    run allocates). Measured on the program where every layer runs in NCHW, which has no
    copies and whose arena activations every plan has at the same steps."""
    program = (predictions or Predictions(network)).program(*_all_nchw(network))
    live = live_bytes([b for b in buffers(program) if b.key in program.shapes])
    return {step.name: live[i] if i < len(live) else 0
            for i, step in enumerate(program.steps) if step.kind != "transform"}


def most_steps(network: Network) -> int:
    """The most steps a plan of ``network`` can lower to: every layer, a copy per 4-D input
    edge, and one per output."""
    edges = sum(1 for n in network.nodes for t in dict.fromkeys(n.inputs)
                if len(network.shapes[t]) == 4)
    return len(network.nodes) + edges + len(network.outputs)


def _all_nchw(network: Network) -> tuple[dict[str, str], dict[str, Layout]]:
    """The assignment every layer of which runs in NCHW (no copies, no workspace)."""
    return ({n.name: "direct" for n in network.conv_nodes},
            {n.name: "NCHW" for n in network.nodes if n.op != "conv"})


def held_throughout(network: Network, predictions: Predictions | None = None) -> int:
    """What every plan of ``network`` holds from its preparation to its last step: the
    caller's inputs, the other layers' constants (gemm, batch-norm ...) and the executor's
    allowance for the most steps a plan can have."""
    profile = (predictions or Predictions(network)).profile(*_all_nchw(network))
    allowance = (EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * most_steps(network)
                 + PREPARED_OBJECT_BYTES * len(network.conv_nodes))
    return profile.input_bytes + profile.constant_bytes + allowance


def beyond_live_bytes(network: Network, output_bytes: int, most_steps: int) -> int:
    """What the memory model holds at its peak beyond one step's live activations, workspace
    and copies, bounded for every plan of ``network``: the output buffers (all of them: the
    peak may come after the busiest step), the arena's views and their tables, each buffer's
    rounding up to `ALIGNMENT` (one view or buffer per tensor, per possible copy and per
    workspace the hungriest candidate of each layer declares) and every array object (those
    alive at the peak). So the ILP's step sum stays an upper bound of the model's peak, while
    the arena is placed at its lower bound (measured: every built-in network)."""
    buffers = len(network.shapes) + most_steps
    for node in network.nodes:
        if node.op == "conv":
            spec = network.conv_spec(node)
            buffers += max((len(a.workspace_shapes(spec)) for a in registry.applicable(spec)),
                           default=0)
        else:
            shapes = [network.shapes[t] for t in node.inputs]
            buffers += max(len(node.operator.workspace_shapes(shapes, layout))
                           for layout in node.operator.layouts)
    objects = sum(array_overhead_bytes(shape) for shape in network.shapes.values())
    per_buffer = array_overhead_bytes((1,) * MAX_RANK) + ALIGNMENT
    return (output_bytes + ALIGNMENT + SLOT_BYTES_PER_STEP * most_steps + objects
            + buffers * per_buffer)


def build_problem(network: Network, costs: CostFunction) -> PlanContext:
    """The ILP problem of ``network`` with costs from ``costs`` (a profiler), as a context
    for one plan request."""
    enumerated = enumerate_candidates(network)
    measured = costs(enumerated.requests())
    sources: set[str] = set()

    def cost(request: CostRequest) -> Measurement:
        m = measured[request_key(request)]
        sources.add(m.source)
        return m

    candidates = {node: [o.priced(cost(o.request)) for o in options]
                  for node, options in enumerated.options.items()}
    transform_time = {k: cost(r).time_s for k, r in enumerated.transforms.items()}
    producer: dict[str, str | None] = dict.fromkeys(network.inputs)
    for node in network.nodes:
        for t in node.outputs:
            producer[t] = node.name
    predictions = Predictions(network)
    problem = Problem(
        order=[n.name for n in network.nodes],
        inputs_of={n.name: list(n.inputs) for n in network.nodes},
        producer=producer,
        tensor_bytes={t: tensor_bytes(s) for t, s in network.shapes.items()},
        four_d={t for t, s in network.shapes.items() if len(s) == 4},
        outputs=list(network.outputs), candidates=candidates,
        fixed_bytes=fixed_bytes(network, predictions), transform_time=transform_time,
        transform_workspace_bytes=_transform_workspace(),
        original_bytes={n.name: original_bytes(network, n) for n in network.conv_nodes},
        preparing_fixed_bytes=held_throughout(network, predictions),
        arena_fixed_bytes=arena_fixed_bytes(network, predictions),
        arena_copy_bytes={t: aligned(tensor_bytes(s)) for t, s in network.shapes.items()
                          if len(s) == 4})
    return PlanContext(network, problem, sources, predictions)


def original_bytes(network: Network, node: Node) -> int:
    """A convolution's original weights and bias as the network holds them (float32)."""
    spec = network.conv_spec(node)
    m, cg, kh, kw = spec.weight_shape
    return (m * cg * kh * kw + (m if "bias" in node.weights else 0)) * spec.itemsize


def _transform_workspace() -> int:
    from convplan.kernels.base import run_overhead_bytes

    return run_overhead_bytes(4)
