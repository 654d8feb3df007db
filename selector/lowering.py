"""Lowering: a network plus a choice of algorithm per convolution becomes an executable program.

The program runs the network's nodes in its fixed topological order. Convolutions run with the
chosen algorithm in that algorithm's layouts; every other operator runs in the layout a plan gives
it, or else the layout its input already has when it supports it (element-wise operators,
batch-norm, pooling, concat ...), else NCHW. Where a producer's layout differs from what a consumer
needs, a layout-transform step right before the consumer makes the copy, which lives for that
consumer's step only (DESIGN.md: "any layout-transformed copy made for this step"); `needs_copy`
is that rule, and the ILP prices exactly it. Each step lists
the tensors whose last use it is, so the executor frees them right after it, and a unary operator
overwrites its input when nothing else needs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from convplan.kernels import ConvAlgorithm, registry
from convplan.kernels.conv import default_algorithm
from convplan.kernels.executor import Program, Step
from convplan.kernels.spec import Layout

from .network import Network, NetworkError

#: The layout the caller gives a network's inputs in and gets its outputs back in.
NETWORK_LAYOUT: Layout = "NCHW"


def needs_copy(has_layout: bool, stored: Layout, wanted: Layout) -> bool:
    """The layout rule (DESIGN.md, Selection: edges carry layout-transform time and memory): a
    consumer that runs in ``wanted`` and reads a 4-D tensor stored in ``stored`` pays a
    transform, a copy made right before its step and alive during that step only. Tensors of
    other ranks (``has_layout`` false) have no layout and are read as they are. Lowering makes
    the copies by it; the ILP's rows and its evaluator price them by it."""
    return has_layout and stored != wanted


@dataclass
class Lowered:
    """A program, which algorithm runs each convolution, and what lowering had to change."""

    program: Program
    algorithms: dict[str, str]
    #: Human-readable notes: requested algorithms that could not run a layer, and the fallback.
    notes: list[str] = field(default_factory=list)
    #: Network output name -> the program tensor holding it (in NCHW).
    outputs: dict[str, str] = field(default_factory=dict)


def choose_algorithm(network: Network, node_name: str, requested: str | None,
                     strict: bool) -> tuple[ConvAlgorithm, str | None]:
    """The algorithm for one convolution and, when the request could not be kept, why."""
    node = network.node(node_name)
    spec = network.conv_spec(node)
    fallback = default_algorithm(spec)
    if requested is None:
        return fallback, None
    algorithm = registry.get(requested)
    reason = algorithm.unsupported_reason(spec)
    if reason is None:
        return algorithm, None
    if strict:
        raise NetworkError(f"layer {node_name!r}: algorithm {requested!r} cannot run it: {reason}")
    return fallback, (f"layer {node_name!r}: {requested} cannot run it ({reason}); "
                      f"using {fallback.name}")


def lower(network: Network, assignment: Mapping[str, str] | None = None, *,
          algorithm: str | None = None, strict: bool = False,
          layouts: Mapping[str, Layout] | None = None, keep: Sequence[str] = ()) -> Lowered:
    """Lower ``network`` with ``assignment`` (conv layer -> algorithm), or one ``algorithm`` for
    every convolution, or `kernels.conv.default_algorithm` per layer; ``layouts`` (other layers
    -> the layout they run in) as a plan chose them.

    ``strict`` (plans): an algorithm that cannot run its layer is an error. Otherwise the layer
    falls back to the default algorithm and a note says so. ``keep``: inner tensors the
    program also returns (in NCHW), alive to the end (`--check` compares a softmax's input).

    Each step gets its own dict of the node's weights (the same arrays): a program that owns
    its weights drops a step's entries once prepared, which leaves the network's nodes alone.
    """
    assignment = dict(assignment or {})
    layouts = dict(layouts or {})
    conv_names = {n.name for n in network.conv_nodes}
    unknown = set(assignment) - conv_names
    if unknown:
        raise NetworkError(f"the assignment names layers that are not convolutions of "
                           f"{network.name!r}: {', '.join(sorted(unknown))}")
    for name in {*assignment.values(), *([algorithm] if algorithm else [])}:
        registry.get(name)      # an unknown name is an error even when no layer uses it

    shapes: dict[str, tuple[int, ...]] = dict(network.shapes)
    layout_of: dict[str, Layout] = dict.fromkeys(network.inputs, NETWORK_LAYOUT)
    steps: list[Step] = []
    chosen: dict[str, str] = {}
    notes: list[str] = []

    copies: dict[tuple[str, Layout, str], str] = {}

    def in_layout(tensor: str, layout: Layout, step: str) -> str:
        """``tensor`` stored in ``layout``: itself, or a copy made for ``step`` alone."""
        if not needs_copy(len(shapes[tensor]) == 4, layout_of[tensor], layout):
            return tensor
        key = (tensor, layout, step)
        if key in copies:           # a step reading one tensor twice makes one copy
            return copies[key]
        copy = f"{tensor}@{layout}>{step}"
        while copy in shapes:       # a network's own tensor (or another copy) has that name
            copy += "'"
        steps.append(Step(name=copy, kind="transform", inputs=[tensor], outputs=[copy],
                          layout=layout, src_layout=layout_of[tensor]))
        shapes[copy] = shapes[tensor]
        layout_of[copy] = layout
        copies[key] = copy
        return copy

    for node in network.nodes:
        if node.op == "conv":
            requested = assignment.get(node.name, algorithm)
            algo, note = choose_algorithm(network, node.name, requested, strict)
            if note:
                notes.append(note)
            chosen[node.name] = algo.name
            x = in_layout(node.inputs[0], algo.input_layout, node.name)
            steps.append(Step(name=node.name, kind="conv", inputs=[x], outputs=node.outputs,
                              layout=algo.input_layout, algorithm=algo,
                              spec=network.conv_spec(node), weights=dict(node.weights),
                              bias=bool(node.operator.attrs["bias"])))
            out_layout = algo.output_layout
        else:
            layout = layouts.get(node.name) or natural_layout(
                node.operator.layouts, [layout_of[t] for t in node.inputs
                                        if len(shapes[t]) == 4])
            if layout not in node.operator.layouts:
                raise NetworkError(f"layer {node.name!r}: {node.op} does not run in {layout}")
            inputs = [in_layout(t, layout, node.name) for t in node.inputs]
            steps.append(Step(name=node.name, kind="op", inputs=inputs, outputs=node.outputs,
                              layout=layout, operator=node.operator,
                              weights=dict(node.weights)))
            out_layout = layout
        for t in node.outputs:
            layout_of[t] = out_layout if len(shapes[t]) == 4 else "NCHW"

    unknown = [t for t in keep if t not in shapes]
    if unknown:
        raise NetworkError(f"no tensor named {', '.join(map(repr, unknown))} to keep")
    outputs = {name: in_layout(name, NETWORK_LAYOUT, "output")
               for name in dict.fromkeys([*network.outputs, *keep])}
    program = Program(steps, list(network.inputs), list(outputs.values()), shapes)
    _plan_releases(program)
    _plan_inplace(program)
    return Lowered(program, chosen, notes, outputs)


def natural_layout(supported: tuple[Layout, ...], current: list[Layout]) -> Layout:
    """Without a plan, an operator runs in its inputs' layout when they share one it supports."""
    if len(set(current)) == 1 and current[0] in supported:
        return current[0]
    return "NCHW"


def _plan_releases(program: Program) -> None:
    """Each tensor is released by the step that uses it last (or that made it, if unused)."""
    last: dict[str, int] = {}
    for i, step in enumerate(program.steps):
        for t in step.outputs:
            last[t] = i
        for t in step.inputs:
            last[t] = i
    kept = set(program.outputs) | set(program.inputs)
    for step in program.steps:
        step.release = []
    for tensor, i in last.items():
        if tensor not in kept:
            program.steps[i].release.append(tensor)


def _plan_inplace(program: Program) -> None:
    """Let an in-place capable operator overwrite its first input when this step is the last
    use of every tensor sharing that input's buffer and no other operand of the step is a view
    of it (the same tensor twice is fine: NumPy needs no copy for an exact overlap)."""
    buffer_of: dict[str, int] = {t: i for i, t in enumerate(program.inputs)}
    sharing: dict[int, list[str]] = {i: [t] for t, i in buffer_of.items()}
    pinned = {buffer_of[t] for t in program.inputs}
    released_at: dict[str, int] = {t: i for i, s in enumerate(program.steps) for t in s.release}
    next_buffer = len(buffer_of)
    for i, step in enumerate(program.steps):
        if step.kind == "op" and step.operator is not None and step.operator.inplace:
            x = step.inputs[0]
            buffer = buffer_of[x]
            shapes = [program.shapes[t] for t in step.inputs]
            # Another operand that shares the buffer (a view of x) would make NumPy copy it
            # before overwriting: a hidden temporary the memory model does not count.
            step.inplace = (
                buffer not in pinned
                and not any(buffer_of[t] == buffer and t != x for t in step.inputs[1:])
                and all(released_at.get(t, -1) == i for t in sharing[buffer])
                and step.operator.can_overwrite(shapes)
                and not any(t in program.outputs for t in sharing[buffer])
            )
        for t in step.outputs:
            if step.aliases_input:
                buffer_of[t] = buffer_of[step.inputs[0]]
            else:
                buffer_of[t] = next_buffer
                next_buffer += 1
            sharing.setdefault(buffer_of[t], []).append(t)
