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
from collections.abc import Iterable, Mapping
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
    ``release``: tensors whose last use is this step, dropped right after it. ``bias`` (conv):
    whether the layer adds a bias, a fact that outlives weights released once prepared.
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
    bias: bool = False

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
        return self.algorithm.prepared_bytes(self.spec, bias=self.bias)

    def original_bytes(self) -> int:
        """Bytes of a convolution's original weights and bias (float32, as the network holds
        them), 0 for other steps."""
        if self.kind != "conv":
            return 0
        assert self.spec is not None
        m, cg, kh, kw = self.spec.weight_shape
        return (m * cg * kh * kw + (m if self.bias else 0)) * self.spec.itemsize


@dataclass
class Program:
    """Steps in order, the input tensors it reads, the output tensors it returns, and the
    logical (NCHW-order) shape of every tensor.

    ``owns_weights``: the steps hold the only references to the convolutions' original weights
    (the runner moved them out of a network it loaded itself), so preparing a layer releases
    its original: the process holds each weight once, in its prepared form. Otherwise the
    originals belong to the caller and are left alone."""

    steps: list[Step]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]
    owns_weights: bool = False

    def constants(self) -> list[np.ndarray]:
        """The arrays other operators hold for the whole run (gemm, batch-norm, add/mul and
        matmul constants), used in place."""
        return [a for s in self.steps if s.kind == "op" for a in s.weights.values()]

    def originals(self) -> list[np.ndarray]:
        """The convolutions' original weights the steps still hold (none once released)."""
        return [a for s in self.steps if s.kind == "conv" for a in s.weights.values()]


def buffers_of(arrays: Iterable[np.ndarray]) -> dict[int, int]:
    """The buffers behind ``arrays`` (id of the object owning the memory -> its bytes), each
    once: views of one buffer (a broadcast constant, two layers sharing an initializer, a
    prepared view of an original) name the buffer they keep alive."""
    roots: dict[int, int] = {}
    for a in arrays:
        root: object = a
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        if isinstance(root, np.ndarray):
            roots[id(root)] = root.nbytes
        else:
            try:
                roots[id(root)] = memoryview(root).nbytes    # type: ignore[arg-type]
            except TypeError:
                roots[id(a)] = a.nbytes
    return roots


def held_bytes(arrays: Iterable[np.ndarray]) -> int:
    """Bytes of the buffers behind ``arrays``, each buffer once (see `buffers_of`)."""
    return sum(buffers_of(arrays).values())


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
    """Prepares a program's convolution weights once; `run` executes it (again and again).

    ``prepared``: weights already prepared for steps of the same names and algorithms (another
    program lowered from the same network and choices), reused instead of prepared again."""

    def __init__(self, program: Program, prepared: Mapping[str, Prepared] | None = None) -> None:
        self.program = program
        self.prepared: dict[str, Prepared] = {}
        for step in program.steps:
            given = (prepared or {}).get(step.name)
            if given is not None and step.kind == "conv":
                assert step.algorithm is not None
                if given.algorithm != step.algorithm.name:
                    raise ValueError(f"step {step.name!r} runs {step.algorithm.name}; the "
                                     f"weights given were prepared for {given.algorithm}")
                self.prepared[step.name] = given
        self._prepared = False

    def prepare(self) -> int:
        """Reorder every convolution's weights for its algorithm; returns their bytes. When the
        program owns its weights, each step drops its original right after it is prepared, so
        a copied original is freed layer by layer (a kept view holds the array alive)."""
        for step in self._unprepared():
            self._prepare_step(step)
        self._prepared = True
        return self.prepared_bytes

    def _unprepared(self) -> list[Step]:
        return [s for s in self.program.steps if s.kind == "conv" and s.name not in self.prepared]

    def _prepare_step(self, step: Step) -> None:
        assert step.algorithm is not None and step.spec is not None
        self.prepared[step.name] = step.algorithm.prepare(
            step.weights["weight"], step.weights.get("bias"), step.spec)
        if self.program.owns_weights:
            step.weights = {}

    def _prepare_traced(self, base: int) -> tuple[int, int]:
        """`prepare` inside a trace, for a program that owns its weights: (the peak relative to
        ``base`` with the originals held at the time added, the bytes of originals still held
        once prepared: those kept as views). tracemalloc does not see an original freed, as it
        was allocated before the trace, so each layer subtracts the buffers it released that
        nothing else holds (buffers compared while all of them are alive: ids are not reused)."""
        held = held_bytes(self.program.originals())
        peak = held
        for step in self._unprepared():
            originals = list(step.weights.values())
            tracemalloc.reset_peak()
            self._prepare_step(step)
            peak = max(peak, tracemalloc.get_traced_memory()[1] - base + held)
            kept = [a for p in self.prepared.values() for a in (p.weights, p.bias)
                    if a is not None]
            still = buffers_of([*self.program.originals(), *kept])
            held -= sum(n for key, n in buffers_of(originals).items() if key not in still)
            del originals, kept, still
        self._prepared = True
        return peak, held

    def close(self) -> None:
        """Drop the prepared weights. A later `run` prepares again from the steps' weights,
        which a program that owns its weights no longer has: such an executor is spent."""
        self.prepared = {}
        self._prepared = False

    @property
    def prepared_bytes(self) -> int:
        return sum(p.nbytes for p in self.prepared.values())

    def _view_bytes(self) -> int:
        """Bytes of prepared weights that are views of the network's own arrays (allocated
        before any trace): the executor holds them as surely as the weights it copied."""
        total = 0
        for step in self.program.steps:
            prepared = self.prepared.get(step.name)
            original = step.weights.get("weight")
            if prepared is None or original is None:
                continue
            if np.may_share_memory(prepared.weights, original):
                total += prepared.weights.nbytes
            bias = step.weights.get("bias")
            if prepared.bias is not None and bias is not None and np.may_share_memory(
                    prepared.bias, bias):
                total += prepared.bias.nbytes
        return total

    def run(self, inputs: dict[str, np.ndarray], trace: bool = False) -> RunResult:
        """Run the program on ``inputs`` (name -> array in its step layout).

        With ``trace``, the preparation of weights (when not done yet) and the run are traced,
        and the peak is reported with the bytes held from before the trace added: the inputs,
        the other operators' constants, and the convolutions' weights not allocated inside
        it: the originals a program that owns them holds (freed inside the trace as each layer
        is prepared, unless kept as a view), else the prepared views of the caller's arrays,
        or every prepared weight when prepared before.
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
                others = held_bytes(self.program.constants()) + sum(
                    inputs[name].nbytes for name in self.program.inputs)
                preparing = None
                if self._prepared:      # prepared before the trace: all of it is untraced
                    untraced = self.prepared_bytes
                elif self.program.owns_weights and trace:
                    preparing, untraced = self._prepare_traced(base)
                else:
                    self.prepare()
                    untraced = self._view_bytes()
                held = untraced + others
                if not trace:
                    prepare_peak = 0
                elif preparing is not None:
                    prepare_peak = preparing + others
                else:
                    prepare_peak = tracemalloc.get_traced_memory()[1] - base + held
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
