"""The memory model: what a program's run holds at every step, and the peak (DESIGN.md's promise).

Every weight the run holds counts once: the prepared convolution weights and the other operators'
constants (gemm, batch-norm, add/mul, matmul), each buffer once, at every step; the network's
inputs belong to the caller and count for the whole run. Preparing the weights is a phase of its
own, before the first step: while layer l is prepared, the layers before it hold their prepared
form, l and the layers after it what they held before (their originals when the program owns
them, else only what becomes a view of the caller's array), and l its new copy and
`prepare_extra_bytes`. The originals of a network the caller keeps are the caller's, not counted.

Then the executor allocates its arena (`kernels.arena`): every activation, layout copy and
workspace a step writes is at a planned offset in it, so the whole arena (its placed size) and
the executor's views of it are held from the first step to the last, whatever is alive. Only the
buffers holding the program's outputs are allocated by the run, each at the step that first
writes it, and kept to the end. Every live tensor also costs its array object
(`array_overhead_bytes`), and each step its allowance (`Step.overhead_bytes`: ufunc buffers,
interpreter objects, tap tables). The activations alive at each step are reported besides: the
bound any placement must meet, which the planner prices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convplan.kernels.arena import allocation_bytes, output_buffers
from convplan.kernels.executor import Program, held_bytes

#: What the executor itself holds: its tensor table and per-step timings (measured: about 10 KiB
#: plus 70 bytes a step on ResNet-50), with room to spare.
EXECUTOR_BYTES = 32 * 1024
EXECUTOR_BYTES_PER_STEP = 160
#: What each prepared convolution keeps beyond its weights' data: its `Prepared` record, two
#: array views and a slot in the executor's table (measured: 650 bytes for im2col, 840 for
#: direct, 1140 for Winograd), which hundreds of layers make visible.
PREPARED_OBJECT_BYTES = 1280
#: Per step, the executor's tables of its views of the arena: a list of output views and a
#: dict of workspace views.
SLOT_BYTES_PER_STEP = 300


@dataclass(frozen=True)
class StepMemory:
    name: str
    kind: str
    #: Activations alive during the step, its new outputs included, and their array objects
    #: (whether they live in the arena or in an output buffer).
    activation_bytes: int
    #: The step's workspaces (in the arena) and its allowance.
    workspace_bytes: int
    #: Everything held at this step: weights, inputs, the executor's allowance, the arena and
    #: its views, the output buffers made so far, live array objects and the step's allowance.
    total_bytes: int


@dataclass(frozen=True)
class MemoryProfile:
    steps: list[StepMemory]
    #: The peak over the preparation and the steps: the promise.
    peak_bytes: int
    #: The step at the peak, or "preparing <layer>" when preparing a layer's weights peaks.
    peak_step: str
    prepared_bytes: int
    input_bytes: int
    #: Other operators' weights (each buffer once), held for the whole run and counted.
    constant_bytes: int = 0
    #: The peak while the weights are prepared (inputs and the allowance included).
    prepare_peak_bytes: int = 0
    #: The arena's placed size, and the lower bound of any placement (the most bytes of its
    #: buffers alive at one step).
    arena_bytes: int = 0
    max_live_bytes: int = 0
    #: The buffers holding the outputs, allocated by each run.
    output_bytes: int = 0

    @property
    def weight_bytes(self) -> int:
        """Every weight the run holds, counted once: prepared weights plus constants."""
        return self.prepared_bytes + self.constant_bytes

    def as_dict(self) -> dict[str, object]:
        return {"peak_bytes": self.peak_bytes, "peak_step": self.peak_step,
                "prepared_bytes": self.prepared_bytes, "input_bytes": self.input_bytes,
                "constant_bytes": self.constant_bytes, "weight_bytes": self.weight_bytes,
                "prepare_peak_bytes": self.prepare_peak_bytes, "arena_bytes": self.arena_bytes,
                "max_live_bytes": self.max_live_bytes, "output_bytes": self.output_bytes}


#: What one live tensor costs beyond its data, whether it owns a buffer or is a view: the ndarray
#: object (measured: 121 bytes), its shape and strides (16 bytes a dimension), its slot in the
#: executor's tensor table (a dict entry, ~37 bytes, twice that while the table grows) and in
#: the step's output lists. Thousands of tiny tensors (a split into 2000) make this dominate.
ARRAY_BYTES = 208
ARRAY_BYTES_PER_DIM = 16


def tensor_bytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def array_overhead_bytes(shape: tuple[int, ...]) -> int:
    """The bytes one live array object costs beyond its data (see `ARRAY_BYTES`)."""
    return ARRAY_BYTES + ARRAY_BYTES_PER_DIM * len(shape)


def views_bytes(program: Program) -> int:
    """What the executor's views of the arena cost, held from its allocation on: each view's
    array object (`Program.arena_views`) and each step's tables of them."""
    return SLOT_BYTES_PER_STEP * len(program.steps) + sum(
        array_overhead_bytes(shape) for _, _, shape in program.arena_views())


def preparation_peak(program: Program) -> tuple[int, str]:
    """(bytes, conv layer) at the peak of preparing the weights, before the first step:
    convolution weights only (see the module's docstring; exact, in program order)."""
    convs = [s for s in program.steps if s.kind == "conv"]
    prepared = [s.prepared_bytes() for s in convs]
    copies = []
    for step in convs:
        assert step.algorithm is not None and step.spec is not None
        copies.append(step.algorithm.prepared_bytes(step.spec, bias=False)
                      if step.algorithm.prepare_copies(step.spec) else 0)
    # before its preparation a layer holds its original (owned) or only its future views
    before = [s.original_bytes() if program.owns_weights else p - c
              for s, p, c in zip(convs, prepared, copies, strict=True)]
    peak, at = 0, ""
    done, waiting = 0, sum(before)
    for step, p, c, b in zip(convs, prepared, copies, before, strict=True):
        assert step.algorithm is not None and step.spec is not None
        now = done + waiting + c + step.algorithm.prepare_extra_bytes(step.spec)
        if now > peak:
            peak, at = now, step.name
        done, waiting = done + p, waiting - b
    return peak, at


def predict(program: Program) -> MemoryProfile:
    """The memory held at every step of ``program``'s run and the peak over its preparation
    and steps (see the module's docstring)."""
    shapes = program.shapes
    layout = program.arena
    outputs = output_buffers(program)
    prepared = sum(step.prepared_bytes() for step in program.steps)
    inputs = sum(tensor_bytes(shapes[t]) for t in program.inputs)
    constants = held_bytes(program.constants())
    allowance = (EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * len(program.steps)
                 + PREPARED_OBJECT_BYTES * sum(step.kind == "conv" for step in program.steps))
    fixed = prepared + constants + inputs + allowance
    running = fixed + allocation_bytes(layout.size) + views_bytes(program)

    made: dict[int, int] = {}                # step -> bytes of output buffers it allocates
    for b in outputs:
        made[b.first] = made.get(b.first, 0) + b.nbytes
    buffer_of: dict[str, int] = {}
    size: dict[int, int] = {}
    holders: dict[int, set[str]] = {}
    for t in program.inputs:                 # counted in `fixed`, never freed
        buffer_of[t] = -1 - len(buffer_of)
        holders[buffer_of[t]] = {t}
    data = objects = kept = 0
    out: list[StepMemory] = []
    for i, step in enumerate(program.steps):
        for t in step.outputs:
            objects += array_overhead_bytes(shapes[t])
            if step.aliases_input:
                buffer_of[t] = buffer_of[step.inputs[0]]
            else:
                buffer_of[t] = len(size)
                size[buffer_of[t]] = tensor_bytes(shapes[t])
                data += size[buffer_of[t]]
            holders.setdefault(buffer_of[t], set()).add(t)
        kept += made.get(i, 0)
        workspace = sum(tensor_bytes(shape, step.spec.itemsize if step.spec else 4)
                        for shape in step.workspace_shapes(shapes).values())
        overhead = step.overhead_bytes(shapes)
        out.append(StepMemory(step.name, step.kind, data + objects, workspace + overhead,
                              running + kept + objects + overhead))
        for t in step.release:
            objects -= array_overhead_bytes(shapes[t])
            b = buffer_of[t]
            holders[b].discard(t)
            if not holders[b] and b >= 0:
                data -= size[b]
    weights, layer = preparation_peak(program)
    preparing = weights + constants + inputs + allowance
    peak = max(out, key=lambda s: s.total_bytes) if out else None
    if peak is None or preparing > peak.total_bytes:
        peak_bytes, peak_step = max(preparing, running), f"preparing {layer}" if layer else ""
    else:
        peak_bytes, peak_step = peak.total_bytes, peak.name
    return MemoryProfile(out, peak_bytes, peak_step, prepared, inputs, constants, preparing,
                         arena_bytes=layout.size, max_live_bytes=layout.max_live_bytes,
                         output_bytes=sum(b.nbytes for b in outputs))
