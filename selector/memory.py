"""The memory model: live bytes at every step of a program, and the peak (DESIGN.md's promise).

At each step the live set is every activation already produced and still needed, plus the step's
outputs, plus its workspace (a layout-transformed copy is its own step's output). Prepared
weights count at every step; the network's inputs belong to the caller and count for the whole
run; original weights are reported, not counted. Tensors that share a buffer (views, in-place
outputs) count once, until the last of them is released; every live tensor, views included, also
costs its array object (`array_overhead_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convplan.kernels.executor import Program

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
    #: Everything counted at this step: prepared weights + inputs + activations + workspace +
    #: the executor's own allowance.
    total_bytes: int


@dataclass(frozen=True)
class MemoryProfile:
    steps: list[StepMemory]
    peak_bytes: int
    peak_step: str
    prepared_bytes: int
    input_bytes: int

    def as_dict(self) -> dict[str, object]:
        return {"peak_bytes": self.peak_bytes, "peak_step": self.peak_step,
                "prepared_bytes": self.prepared_bytes, "input_bytes": self.input_bytes}


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


def predict(program: Program, itemsize: int = 4) -> MemoryProfile:
    """Live bytes at every step of ``program`` and the peak over steps."""
    shapes = program.shapes
    prepared = sum(step.prepared_bytes() for step in program.steps)
    inputs = sum(tensor_bytes(shapes[t], itemsize) for t in program.inputs)
    fixed = prepared + inputs + EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * len(program.steps)

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
    peak = max(out, key=lambda s: s.total_bytes) if out else None
    return MemoryProfile(out, peak.total_bytes if peak else fixed,
                         peak.name if peak else "", prepared, inputs)
