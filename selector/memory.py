"""The memory model: live bytes at every step of a program, and the peak (DESIGN.md's promise).

At each step the live set is every activation already produced and still needed, plus the step's
outputs, plus its workspace (a layout-transformed copy is its own step's output). Every weight the
run holds counts once: the prepared convolution weights and the other operators' constants
(gemm, batch-norm, add/mul, matmul), each buffer once, at every step; the network's inputs belong
to the caller and count for the whole run. Preparing the weights is a phase of its own, before
the first step: while layer l is prepared, the layers before it hold their prepared form, l and
the layers after it what they held before (their originals when the program owns them, else only
what becomes a view of the caller's array), and l its new copy and `prepare_extra_bytes`.
The originals of a network the caller keeps are the caller's, not counted. Tensors that share a
buffer (views, in-place outputs) count once, until the last of them is released; every live
tensor, views included, also costs its array object (`array_overhead_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convplan.kernels.executor import Program, held_bytes

#: What the executor itself holds: its tensor table and per-step timings (measured: about 10 KiB
#: plus 70 bytes a step on ResNet-50), with room to spare.
EXECUTOR_BYTES = 32 * 1024
EXECUTOR_BYTES_PER_STEP = 160


@dataclass(frozen=True)
class StepMemory:
    name: str
    kind: str
    #: Activations alive during the step, its new outputs included.
    activation_bytes: int
    workspace_bytes: int
    #: Everything counted at this step: prepared weights + constants + inputs + activations +
    #: workspace + the executor's own allowance.
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

    @property
    def weight_bytes(self) -> int:
        """Every weight the run holds, counted once: prepared weights plus constants."""
        return self.prepared_bytes + self.constant_bytes

    def as_dict(self) -> dict[str, object]:
        return {"peak_bytes": self.peak_bytes, "peak_step": self.peak_step,
                "prepared_bytes": self.prepared_bytes, "input_bytes": self.input_bytes,
                "constant_bytes": self.constant_bytes, "weight_bytes": self.weight_bytes,
                "prepare_peak_bytes": self.prepare_peak_bytes}


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


def predict(program: Program, itemsize: int = 4) -> MemoryProfile:
    """Live bytes at every step of ``program`` and the peak over its preparation and steps."""
    shapes = program.shapes
    prepared = sum(step.prepared_bytes() for step in program.steps)
    inputs = sum(tensor_bytes(shapes[t], itemsize) for t in program.inputs)
    constants = held_bytes(program.constants())
    allowance = EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * len(program.steps)
    fixed = prepared + constants + inputs + allowance

    buffer_of: dict[str, int] = {}
    size: dict[int, int] = {}
    holders: dict[int, set[str]] = {}
    for t in program.inputs:                 # counted in `fixed`, never freed
        buffer_of[t] = -1 - len(buffer_of)
        holders[buffer_of[t]] = {t}
    live = 0
    out: list[StepMemory] = []
    for step in program.steps:
        for t in step.outputs:
            live += array_overhead_bytes(shapes[t])
            if step.aliases_input:
                buffer_of[t] = buffer_of[step.inputs[0]]
            else:
                buffer_of[t] = len(size)
                size[buffer_of[t]] = tensor_bytes(shapes[t], itemsize)
                live += size[buffer_of[t]]
            holders.setdefault(buffer_of[t], set()).add(t)
        workspace = step.workspace_bytes(shapes, itemsize)
        out.append(StepMemory(step.name, step.kind, live, workspace, fixed + live + workspace))
        for t in step.release:
            live -= array_overhead_bytes(shapes[t])
            b = buffer_of[t]
            holders[b].discard(t)
            if not holders[b] and b >= 0:
                live -= size[b]
    weights, layer = preparation_peak(program)
    preparing = weights + constants + inputs + allowance
    peak = max(out, key=lambda s: s.total_bytes) if out else None
    if peak is None or preparing > peak.total_bytes:
        peak_bytes, peak_step = max(preparing, fixed), f"preparing {layer}" if layer else ""
    else:
        peak_bytes, peak_step = peak.total_bytes, peak.name
    return MemoryProfile(out, peak_bytes, peak_step, prepared, inputs, constants, preparing)
