"""The executor: runs a lowered program step by step and measures it.

A program is a list of steps in execution order. Each step reads tensors by name and produces
new ones: a convolution with its chosen algorithm (weights prepared once, before the first step),
another operator, or a layout transform. Every buffer a step writes lives in one static arena
(`arena`), allocated once per executor after the weights are prepared and reused by every run:
each step writes its outputs and workspaces into views of it made once. Only the buffers that
hold the program's outputs are allocated by each run, because the caller keeps them. Per-step
time comes from `time.perf_counter`; the peak memory from `tracemalloc`, which sees every NumPy
buffer.

The executor knows nothing of graphs or plans: `selector` lowers a plan into a `Program` and
predicts its memory; this module only runs what it is given.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
import tracemalloc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .arena import ALIGNMENT, ArenaLayout, allocation_bytes, buffers, check_layout, place
from .base import TAP_TABLE_BYTES, ConvAlgorithm, Prepared, run_overhead_bytes
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

    def workspace_shapes(self, shapes: Mapping[str, tuple[int, ...]]
                         ) -> dict[str, tuple[int, ...]]:
        """The named temporaries the step runs with (in its layout): the arena holds them."""
        if self.kind == "conv":
            assert self.algorithm is not None and self.spec is not None
            return self.algorithm.workspace_shapes(self.spec)
        if self.kind == "transform" or self.is_view:
            return {}
        assert self.operator is not None
        return self.operator.workspace_shapes([shapes[t] for t in self.inputs], self.layout)

    def overhead_bytes(self, shapes: Mapping[str, tuple[int, ...]], itemsize: int = 4) -> int:
        """What a run of the step into given buffers still allocates: ufunc buffers and
        interpreter objects (`run_overhead_bytes`), and a convolution's table of taps (an
        operator's own `overhead_bytes`)."""
        if self.kind == "conv":
            assert self.algorithm is not None and self.spec is not None
            taps = (self.spec.kh * self.spec.kw * TAP_TABLE_BYTES
                    if self.algorithm.tabulates_taps else 0)
            return run_overhead_bytes(self.spec.itemsize) + taps
        if self.kind == "op" and not self.is_view:
            assert self.operator is not None
            return self.operator.overhead_bytes([shapes[t] for t in self.inputs], itemsize)
        return run_overhead_bytes(itemsize)

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """An output of logical (NCHW-order) ``shape`` as the step stores it."""
        if len(shape) == 4 and self.output_layout == "NHWC":
            n, c, h, w = shape
            return (n, h, w, c)
        return tuple(shape)

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
    _arena: ArenaLayout | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def arena(self) -> ArenaLayout:
        """Where a run keeps every buffer (`arena.place` of `arena.buffers`): placed the first
        time it is asked for, then kept (a program is not changed once lowered)."""
        if self._arena is None:
            self._arena = place(buffers(self))
        return self._arena

    def use_arena(self, layout: ArenaLayout) -> None:
        """Run in ``layout``, placed elsewhere (a compiled plan's), instead of placing the
        buffers here: ValueError unless it places exactly this program's buffers, no two
        alive at once sharing a byte (`check_layout`)."""
        check_layout(buffers(self), layout)
        self._arena = layout

    def arena_views(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """(step index, buffer key, shape) of every view of the arena the executor makes: each
        output a step writes into the arena (stored in the step's layout) and each named
        workspace. Not an in-place output (the step writes over its input's view), not a view
        step's, and not an output buffer (allocated by each run)."""
        offsets = self.arena.offsets
        views = []
        for i, step in enumerate(self.steps):
            if not step.aliases_input:
                views.extend((i, t, step.stored_shape(self.shapes[t]))
                             for t in step.outputs if t in offsets)
            views.extend((i, f"{step.name}#{name}", tuple(shape))
                         for name, shape in step.workspace_shapes(self.shapes).items())
        return views

    def constants(self) -> list[np.ndarray]:
        """The arrays other operators hold for the whole run (gemm, batch-norm, add/mul and
        matmul constants), used in place."""
        return [a for s in self.steps if s.kind == "op" for a in s.weights.values()]

    def originals(self) -> list[np.ndarray]:
        """The convolutions' original weights the steps still hold (none once released)."""
        return [a for s in self.steps if s.kind == "conv" for a in s.weights.values()]


def _root(a: np.ndarray) -> tuple[object, np.ndarray]:
    """The object owning ``a``'s memory, and the array directly on it (``a``'s last base that
    is an array)."""
    array, root = a, a.base
    while isinstance(root, np.ndarray):
        array, root = root, root.base
    return (array if root is None else root), array


def _is_mapped(root: object) -> bool:
    """Whether ``root`` is a memory map of a file (or a memoryview of one)."""
    return isinstance(root.obj if isinstance(root, memoryview) else root, mmap.mmap)


def buffers_of(arrays: Iterable[np.ndarray]) -> dict[int, int]:
    """The buffers behind ``arrays`` (id of the object owning the memory -> its bytes), each
    once: views of one buffer (a broadcast constant, two layers sharing an initializer, a
    prepared view of an original) name the buffer they keep alive. An array over a memory
    map (a compiled plan's weight) is its own buffer: the map is the whole file."""
    roots: dict[int, int] = {}
    for a in arrays:
        root, array = _root(a)
        if isinstance(root, np.ndarray):
            roots[id(root)] = root.nbytes
        elif _is_mapped(root):
            roots[id(array)] = array.nbytes
        else:
            try:
                roots[id(root)] = memoryview(root).nbytes    # type: ignore[arg-type]
            except TypeError:
                roots[id(a)] = a.nbytes
    return roots


def mapped_bytes(arrays: Iterable[np.ndarray]) -> int:
    """Bytes of the arrays over a memory-mapped file among ``arrays`` (a compiled plan's
    weights; views of one counted once): file-backed pages, which the page cache holds and
    processes mapping the same file share, not memory of the process's own."""
    seen: dict[int, int] = {}
    for a in arrays:
        root, array = _root(a)
        if _is_mapped(root):
            seen[id(array)] = array.nbytes
    return sum(seen.values())


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


#: The dtype every buffer of a run holds.
DTYPE = np.dtype(np.float32)


class Executor:
    """Prepares a program's convolution weights once; `run` executes it (again and again).

    The arena is allocated by the first run, once the weights are prepared (preparing and
    running never hold their temporaries at once), and every later run reuses it: runs are
    serialised by a lock. A run never writes the caller's inputs, and the outputs it returns
    are its own arrays, which a later run leaves alone.

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
        self._lock = threading.Lock()
        self._arena: np.ndarray | None = None
        #: Per step: the arena views of its outputs (None: allocated by each run) and of its
        #: workspaces by name; made with the arena.
        self._outs: list[list[np.ndarray | None]] = []
        self._workspaces: list[dict[str, np.ndarray]] = []

    def _allocate(self) -> None:
        """The arena, and the views of it every step writes into: made once."""
        layout = self.program.arena
        raw = np.empty(allocation_bytes(layout.size), dtype=np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        arena = raw[start:start + layout.size]
        steps = self.program.steps
        outs: list[list[np.ndarray | None]] = [
            [None] * (0 if s.aliases_input else len(s.outputs)) for s in steps]
        workspaces: list[dict[str, np.ndarray]] = [{} for _ in steps]
        for i, key, shape in self.program.arena_views():
            offset = layout.offsets[key]
            view = arena[offset:offset + int(np.prod(shape, dtype=np.int64)) * DTYPE.itemsize
                         ].view(DTYPE).reshape(shape)
            if key in steps[i].outputs:
                outs[i][steps[i].outputs.index(key)] = view
            else:
                workspaces[i][key.rsplit("#", 1)[1]] = view
        self._arena, self._outs, self._workspaces = raw, outs, workspaces

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

    def ready(self) -> None:
        """Prepare the weights and allocate the arena now, each at most once, in a run's order
        (untraced), so that no run does more than the next one: a `Session` is made so."""
        with self._lock:
            if not self._prepared:
                self.prepare()
            if self._arena is None:
                self._allocate()

    @property
    def arena(self) -> np.ndarray | None:
        """The arena's buffer (None before the first run or `ready`, and once closed)."""
        return self._arena

    def close(self) -> None:
        """Drop the prepared weights and the arena. A later `run` prepares again from the
        steps' weights, which a program that owns its weights no longer has: such an executor
        is spent."""
        with self._lock:
            self.prepared = {}
            self._prepared = False
            self._arena, self._outs, self._workspaces = None, [], []

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
        """Run the program on ``inputs`` (name -> array in its step layout), which it only
        reads. One run at a time: a run waits for one in progress (the arena is shared).

        With ``trace``, the preparation of weights (when not done yet), the arena's allocation
        (the first run) and the run are traced, and the peak is reported with the bytes held
        from before the trace added: the inputs, the other operators' constants, the arena
        when allocated before, and the convolutions' weights not allocated inside it: the
        originals a program that owns them holds (freed inside the trace as each layer is
        prepared, unless kept as a view), else the prepared views of the caller's arrays, or
        every prepared weight when prepared before.
        """
        missing = set(self.program.inputs) - set(inputs)
        if missing:
            raise ValueError(f"missing input(s): {', '.join(sorted(missing))}")
        with self._lock:
            return self._run(inputs, trace)

    def _run(self, inputs: Mapping[str, np.ndarray], trace: bool) -> RunResult:
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
                if self._arena is None:
                    self._allocate()
                elif trace:             # allocated before the trace: held all along
                    held += self._arena.nbytes
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
        shapes = self.program.shapes
        clock = time.perf_counter
        start = clock()
        for step, given, workspace in zip(self.program.steps, self._outs, self._workspaces,
                                          strict=True):
            if base is not None:
                tracemalloc.reset_peak()
            t0 = clock()
            xs = [live[t] for t in step.inputs]
            if step.is_view:
                assert step.operator is not None
                ys = step.operator.run(xs, step.weights, step.layout)
            else:
                # in place: over the input's own view; else the arena's views, and new arrays
                # for the buffers the caller keeps (the outputs)
                outs = [xs[0]] if step.inplace else [
                    np.empty(step.stored_shape(shapes[t]), DTYPE) if view is None else view
                    for t, view in zip(step.outputs, given, strict=True)]
                if step.kind == "conv":
                    assert step.algorithm is not None and step.spec is not None
                    ys = [step.algorithm.run(xs[0], self.prepared[step.name], step.spec,
                                             out=outs[0], workspace=workspace)]
                elif step.kind == "transform":
                    ys = [convert(xs[0], step.src_layout, step.layout, out=outs[0])]
                else:
                    assert step.operator is not None
                    ys = step.operator.run(xs, step.weights, step.layout, step.inplace,
                                           out=outs, workspace=workspace)
                _check_given(step, outs, ys)
                del outs
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


def _check_given(step: Step, given: list[np.ndarray], returned: list[np.ndarray]) -> None:
    """A step that writes must return exactly the arrays it was given to write into (the
    arena's views, its input's when in place, the new output buffers): anything else is memory
    the arena does not hold, or a view of an input that a later in-place step would write
    through, maybe into the caller's array. O(1) per array."""
    if len(returned) != len(given) or not all(
            y is o or (isinstance(y, np.ndarray) and y.shape == o.shape
                       and y.ctypes.data == o.ctypes.data)
            for y, o in zip(returned, given, strict=True)):
        raise RuntimeError(
            f"step {step.name!r} ({step.kind}) returned arrays other than the ones it was given "
            "to write into; refusing to continue with a result that could be wrong")
