"""The executor: runs a lowered program step by step and measures it.

A program is a list of steps in execution order. Each step reads tensors by name and produces
new ones: a convolution with its chosen algorithm (weights prepared once, before the first step),
another operator, or a layout transform. After a tensor's last use the executor drops it, so its
memory is returned at once. Per-step time comes from `time.perf_counter`; the peak memory from
`tracemalloc`, which sees every NumPy buffer.

The executor knows nothing of graphs or plans: `selector` lowers a plan into a `Program` and
predicts its memory; this module only runs what it is given.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .base import ConvAlgorithm, Prepared, run_overhead_bytes
from .layout import convert
from .measure import collector_paused
from .operators import Operator
from .spec import ConvSpec, Layout


@dataclass
class Step:
    """One step of a program.

    kind: "conv" (``algorithm`` + ``spec``), "op" (``operator``) or "transform" (a layout
    change from ``src_layout`` to ``layout``). ``layout`` is how the step's 4-D inputs and
    outputs are stored (for conv: the algorithm's input layout; its output layout is the
    algorithm's). ``inplace``: the output overwrites the first input (its last use).
    ``release``: tensors whose last use is this step, dropped right after it.
    """

    name: str
    kind: str
    inputs: list[str]
    outputs: list[str]
    layout: Layout = "NCHW"
    algorithm: ConvAlgorithm | None = None
    spec: ConvSpec | None = None
    operator: Operator | None = None
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)
    src_layout: Layout = "NCHW"
    inplace: bool = False
    release: list[str] = field(default_factory=list)

    @property
    def output_layout(self) -> Layout:
        if self.kind == "conv" and self.algorithm is not None:
            return self.algorithm.output_layout
        return self.layout

    @property
    def is_view(self) -> bool:
        """The outputs are views of the first input (no allocation)."""
        return self.kind == "op" and self.operator is not None and self.operator.view

    @property
    def aliases_input(self) -> bool:
        """The outputs share the first input's buffer (a view, or written in place)."""
        return self.is_view or self.inplace

    def workspace_bytes(self, shapes: Mapping[str, tuple[int, ...]], itemsize: int = 4) -> int:
        """Bytes the step allocates beyond its outputs (an upper bound the executor keeps)."""
        if self.kind == "conv":
            assert self.algorithm is not None and self.spec is not None
            return self.algorithm.workspace_bytes(self.spec)
        if self.kind == "transform":
            return run_overhead_bytes(itemsize)
        assert self.operator is not None
        return self.operator.workspace_bytes([shapes[t] for t in self.inputs], itemsize)

    def prepared_bytes(self) -> int:
        """Bytes of the weights this step keeps prepared for the whole run."""
        if self.kind != "conv":
            return 0
        assert self.algorithm is not None and self.spec is not None
        return self.algorithm.prepared_bytes(self.spec, bias="bias" in self.weights)


@dataclass
class Program:
    """Steps in order, the input tensors it reads, the output tensors it returns, and the
    logical (NCHW-order) shape of every tensor."""

    steps: list[Step]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    step_seconds: list[float]
    seconds: float
    #: Per step: peak traced bytes while it ran, inputs included (None when not traced).
    step_peak_bytes: list[int] | None
    #: Peak bytes traced during preparation and the run (None when not traced), plus what was
    #: held from before the trace: the inputs and the prepared weights not allocated in it.
    measured_peak_bytes: int | None
    prepared_bytes: int


class Executor:
    """Prepares a program's convolution weights once; `run` executes it (again and again)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.prepared: dict[str, Prepared] = {}
        self._prepared = False

    def prepare(self) -> int:
        """Reorder every convolution's weights for its algorithm; returns their bytes."""
        for step in self.program.steps:
            if step.kind == "conv" and step.name not in self.prepared:
                assert step.algorithm is not None and step.spec is not None
                self.prepared[step.name] = step.algorithm.prepare(
                    step.weights["weight"], step.weights.get("bias"), step.spec)
        self._prepared = True
        return self.prepared_bytes

    @property
    def prepared_bytes(self) -> int:
        return sum(p.nbytes for p in self.prepared.values())

    def _view_bytes(self) -> int:
        """Bytes of prepared weights that are views of the network's own arrays (allocated
        before any trace): the executor holds them as surely as the weights it copied."""
        total = 0
        for step in self.program.steps:
            prepared = self.prepared.get(step.name)
            if prepared is None:
                continue
            if np.may_share_memory(prepared.weights, step.weights["weight"]):
                total += prepared.weights.nbytes
            bias = step.weights.get("bias")
            if prepared.bias is not None and bias is not None and np.may_share_memory(
                    prepared.bias, bias):
                total += prepared.bias.nbytes
        return total

    def run(self, inputs: dict[str, np.ndarray], trace: bool = False) -> RunResult:
        """Run the program on ``inputs`` (name -> array in its step layout).

        With ``trace``, the preparation of weights (when not done yet) and the run are traced,
        and the peak is reported with the bytes held from before the trace added: the inputs
        and the prepared weights that were not allocated inside it (views of the network's
        own arrays, or all of them when prepared before).
        """
        missing = set(self.program.inputs) - set(inputs)
        if missing:
            raise ValueError(f"missing input(s): {', '.join(sorted(missing))}")
        if trace:
            started = not tracemalloc.is_tracing()
            if started:
                tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        try:
            with collector_paused() if trace else contextlib.nullcontext():
                if self._prepared:      # prepared before the trace: all of it is untraced
                    untraced = self.prepared_bytes
                else:
                    self.prepare()
                    untraced = self._view_bytes()
                held = untraced + sum(inputs[name].nbytes for name in self.program.inputs)
                prepare_peak = tracemalloc.get_traced_memory()[1] - base + held if trace else 0
                outputs, times, seconds, step_peaks = self._execute(
                    inputs, base - held if trace else None)
                peak = max([prepare_peak, *step_peaks]) if trace else None
        finally:
            if trace and started:
                tracemalloc.stop()
        return RunResult(outputs, times, seconds, step_peaks if trace else None, peak,
                         self.prepared_bytes)

    def _execute(self, inputs: Mapping[str, np.ndarray], base: int | None
                 ) -> tuple[dict[str, np.ndarray], list[float], float, list[int]]:
        live: dict[str, np.ndarray] = {name: inputs[name] for name in self.program.inputs}
        times: list[float] = []
        peaks: list[int] = []
        clock = time.perf_counter
        start = clock()
        for step in self.program.steps:
            if base is not None:
                tracemalloc.reset_peak()
            t0 = clock()
            xs = [live[t] for t in step.inputs]
            if step.kind == "conv":
                assert step.algorithm is not None and step.spec is not None
                ys = [step.algorithm.run(xs[0], self.prepared[step.name], step.spec)]
            elif step.kind == "transform":
                ys = [convert(xs[0], step.src_layout, step.layout)]
            else:
                assert step.operator is not None
                ys = step.operator.run(xs, step.weights, step.layout, step.inplace)
            if not step.aliases_input:
                _check_owned(step, xs, ys)
            del xs
            for name, y in zip(step.outputs, ys, strict=True):
                live[name] = y
            del ys
            for name in step.release:
                del live[name]
            times.append(clock() - t0)
            if base is not None:
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
        seconds = clock() - start
        return {name: live[name] for name in self.program.outputs}, times, seconds, peaks


def _check_owned(step: Step, xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
    """A step the program counts as allocating its outputs must not hand back a view of an
    input: the next in-place step would write through it, maybe into the caller's array, and
    the memory model would count bytes that are not there. A bounds check, O(1) per pair."""
    for y in ys:
        for x in xs:
            if np.may_share_memory(y, x):
                raise RuntimeError(
                    f"step {step.name!r} ({step.kind}) returned a view of its input where the "
                    "program expects a new buffer; refusing to continue with a result that "
                    "could be wrong")
