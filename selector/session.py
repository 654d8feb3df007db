"""Load once, run many: a `Session` holds one lowered program, its prepared weights and its
arena, and runs it on input after input.

Making a session does everything a run needs once: load the network (the one loader,
`network_of`), check the plan against it (`check_plan`, made-for network and input shapes
included), lower it, predict its memory, prepare every convolution's weights and allocate the
arena. `Session.run` then only checks the inputs and executes the steps into the arena. A
session that loaded its network itself owns it: each original weight is dropped once
prepared, so the process holds every weight once (as `run_network(owned=True)`); a `Network`
a caller passes in is never changed. `Session.from_program` makes one from a program lowered
elsewhere, with weights prepared elsewhere; `Session.from_compiled` (and `Session(path)` of
a .cvplan file) is that for a compiled plan, its weights memory-mapped read-only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from convplan.kernels import blas
from convplan.kernels.base import Prepared
from convplan.kernels.executor import Executor, Program, RunResult, held_bytes, mapped_bytes

from .compiled import CompiledPlan, is_compiled, load_compiled
from .inputs import check_inputs
from .lowering import lower
from .memory import MemoryProfile, predict
from .network import CompiledPlanError, Limits, Network, NetworkError, network_of
from .network.shapes import InputShapes

if TYPE_CHECKING:   # the planner is imported when a plan is given: a compiled plan runs without
    from .incoming import PlanSpec
    from .planning import Plan

#: What a session runs: a built-in name ("alexnet", "onnx:squeezenet"), a path to an ONNX or
#: JSON file or to a compiled plan (.cvplan), or a `Network`.
Model = Network | str | os.PathLike[str]
#: A plan as given: a `Plan`, a plan document (parsed, or its JSON text), or a file holding it.
PlanGiven: TypeAlias = "Plan | PlanSpec | Mapping[str, Any] | str | bytes | os.PathLike[str]"


class SessionClosedError(RuntimeError):
    """A run asked of a session after `Session.close`."""


def given_plan(plan: PlanGiven) -> PlanSpec:
    """The `PlanSpec` of a plan as a session takes it: a path (or text that is not a JSON
    object) names a file; anything else is the plan itself (`plan_spec`)."""
    from .incoming import plan_file, plan_spec

    if isinstance(plan, os.PathLike):
        return plan_file(plan)
    if isinstance(plan, str) and not plan.lstrip().startswith("{"):
        if not Path(plan).is_file():
            raise NetworkError(f"the plan {plan[:200]!r} is neither a plan's JSON text nor a "
                               "file")
        return plan_file(plan)
    return plan_spec(plan)


class Session:
    """One model, lowered, prepared and allocated once; `run` runs it again and again.

    ``model``: a built-in name, an ONNX (or JSON description) file, a compiled plan (a
    .cvplan file: run as compiled, `from_compiled`; no plan, batch or input_shapes), or a
    `Network` (left unchanged: its originals stay beside the prepared copies). ``plan``: a
    `Plan`, a plan document or its file (checked against the network: every convolution,
    made for it and for its input shapes); None: the default algorithm per layer.
    ``threads``: the BLAS threads of every run (None: the plan's, else all cores).
    ``batch`` / ``input_shapes``: the shapes a named model is loaded for, as
    `convplan.load_network` takes them.

    Runs are serialised (one arena); each returns new output arrays, which later runs leave
    alone. `close` (or leaving a ``with`` block) releases the weights and the arena.
    """

    def __init__(self, model: Model, plan: PlanGiven | None = None, *,
                 threads: int | None = None, batch: int | None = None,
                 input_shapes: InputShapes | Mapping[str, Any] | None = None) -> None:
        if not isinstance(model, Network) and is_compiled(model):
            if plan is not None or batch is not None or input_shapes:
                raise CompiledPlanError(f"{model} is a compiled plan: it carries its plan and "
                                        "input shapes (give neither plan, batch nor "
                                        "input_shapes)")
            self._compiled(load_compiled(model), threads)
            return
        spec = given_plan(plan) if plan is not None else None
        network, owned = network_of(model, batch=batch, input_shapes=input_shapes)
        if spec is not None:
            from .incoming import check_plan

            check_plan(network, spec.assignment, spec.layouts, made_for=spec.network,
                       inputs=spec.inputs)
            threads = spec.run_threads(threads)
        self._lower(network, spec.assignment if spec else None,
                    layouts=spec.layouts if spec else None, strict=spec is not None,
                    owned=owned, threads=threads, prepare=True)

    # -- other ways in --------------------------------------------------------------------------
    @classmethod
    def from_network(cls, network: Network, assignment: Mapping[str, str] | None = None, *,
                     algorithm: str | None = None, layouts: Mapping[str, str] | None = None,
                     strict: bool = False, owned: bool = False, threads: int | None = None,
                     prepare: bool = True) -> Session:
        """A session of ``network`` lowered with ``assignment`` (or one ``algorithm``, or the
        default per layer; ``strict``: refuse an algorithm that cannot run its layer, else
        fall back with a note), checked by the caller. ``owned``: the caller hands the network
        over (`run_network`'s meaning): its convolutions' originals go as they are prepared.
        ``prepare=False`` leaves preparing and allocating to the first run, so a traced first
        run measures them (`run_network`)."""
        session = cls.__new__(cls)
        session._lower(network, assignment, algorithm=algorithm, layouts=layouts,
                       strict=strict, owned=owned, threads=threads, prepare=prepare)
        return session

    @classmethod
    def from_program(cls, program: Program, prepared: Mapping[str, Prepared] | None = None, *,
                     outputs: Mapping[str, str] | None = None, threads: int | None = None,
                     name: str = "program", notes: Sequence[str] = (),
                     original_weight_bytes: int | None = None, prepare: bool = True
                     ) -> Session:
        """A session of a program lowered elsewhere (`lowering.lower`, or a compiled plan's
        loader), with ``prepared`` (conv step name -> its `Prepared` weights for the step's
        algorithm; read-only, memory-mapped arrays are fine) used as they are: a convolution
        without them is prepared from the step's own weights. ``outputs``: output name -> the
        program tensor holding it (`Lowered.outputs`; default: the program's outputs by their
        own names). ``name`` and ``notes`` are for reports. ``original_weight_bytes``: the
        weights as the network held them (default: the steps' float32 originals and
        constants)."""
        session = cls.__new__(cls)
        session._start(program, prepared, outputs=outputs, threads=threads, name=name,
                       notes=notes, original_weight_bytes=original_weight_bytes,
                       prepare=prepare)
        return session

    @classmethod
    def from_compiled(cls, path: str | os.PathLike[str], *, threads: int | None = None,
                      limits: Limits | None = None, verify: bool = True) -> Session:
        """A session of a compiled plan (`selector.compiled`): its program rebuilt from the
        file's description, its weights read-only views of the mapped file, its arena the
        recorded one; nothing planned, measured or prepared. ``threads``: given, else the
        plan's (at most this machine's cores). ``limits``: those the described network must
        keep. ``verify=False`` skips the weights' CRC. A CompiledPlanError for a file that
        cannot be run; a note (`notes`) when it was planned on another machine."""
        session = cls.__new__(cls)
        session._compiled(load_compiled(path, limits=limits, verify=verify), threads)
        return session

    def _compiled(self, compiled: CompiledPlan, threads: int | None) -> None:
        if threads is None and compiled.header.threads is not None:
            threads = min(compiled.header.threads, os.cpu_count() or 1)
        self._start(compiled.lowered.program, compiled.prepared,
                    outputs=compiled.lowered.outputs, threads=threads, name=compiled.name,
                    notes=[*compiled.lowered.notes, *compiled.notes],
                    original_weight_bytes=compiled.mapped_bytes, prepare=True)

    def _lower(self, network: Network, assignment: Mapping[str, str] | None, *,
               algorithm: str | None = None, layouts: Mapping[str, str] | None = None,
               strict: bool, owned: bool, threads: int | None, prepare: bool) -> None:
        lowered = lower(network, assignment, algorithm=algorithm, strict=strict,
                        layouts=layouts)  # type: ignore[arg-type]
        original = network.weight_bytes
        if owned:               # the program's steps hold the only references now
            network.release_conv_weights()
            lowered.program.owns_weights = True
        self._start(lowered.program, None, outputs=lowered.outputs, threads=threads,
                    name=network.name, notes=lowered.notes, original_weight_bytes=original,
                    prepare=prepare)

    def _start(self, program: Program, prepared: Mapping[str, Prepared] | None, *,
               outputs: Mapping[str, str] | None, threads: int | None, name: str,
               notes: Sequence[str], original_weight_bytes: int | None, prepare: bool) -> None:
        if threads is not None and not 1 <= threads <= 4096:
            raise ValueError(f"threads must be between 1 and 4096, got {threads}")
        given = dict(prepared or {})
        for step in program.steps:
            if step.kind == "conv" and step.name not in given and "weight" not in step.weights:
                raise ValueError(f"convolution {step.name!r} has neither prepared weights nor "
                                 "its own to prepare")
        outputs = dict(outputs) if outputs is not None else {t: t for t in program.outputs}
        stray = [t for t in outputs.values() if t not in program.outputs]
        if stray:
            raise ValueError(f"not outputs of the program: {', '.join(map(repr, stray))}")
        self.name = name
        self.notes = list(notes)
        self._threads = threads
        self._outputs = outputs
        self._inputs = {t: tuple(program.shapes[t]) for t in program.inputs}
        self._output_shapes = {n: tuple(program.shapes[t]) for n, t in outputs.items()}
        self._assignment = {s.name: s.algorithm.name for s in program.steps
                            if s.kind == "conv" and s.algorithm is not None}
        self._original_bytes = original_weight_bytes if original_weight_bytes is not None \
            else sum(s.original_bytes() for s in program.steps) + held_bytes(program.constants())
        self._predicted = predict(program)
        self._lock = threading.Lock()
        self._executor: Executor | None = Executor(program, given)
        if prepare:
            with blas.threads(threads):
                self._executor.ready()

    # -- what a user needs ----------------------------------------------------------------------
    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape `run` takes (NCHW for images)."""
        return dict(self._inputs)

    @property
    def outputs(self) -> dict[str, tuple[int, ...]]:
        """Output name -> the shape `run` returns it in."""
        return dict(self._output_shapes)

    @property
    def assignment(self) -> dict[str, str]:
        """Convolution -> the algorithm it runs (the plan's, or the default per layer)."""
        return dict(self._assignment)

    @property
    def predicted(self) -> MemoryProfile:
        """The memory model's prediction: ``peak_bytes`` (the footprint: weights, arena,
        inputs, allowance; preparing included), ``arena_bytes``, ``weight_bytes`` ..."""
        return self._predicted

    @property
    def threads(self) -> int | None:
        """The BLAS threads every run is given (None: all cores)."""
        return self._threads

    @property
    def mapped_weight_bytes(self) -> int:
        """Bytes of the weights that are views of a memory-mapped file (a compiled plan's):
        file-backed pages the process shares, not its own memory (0 for a model loaded and
        prepared here)."""
        executor = self.executor
        return mapped_bytes([*(a for p in executor.prepared.values()
                               for a in (p.weights, p.bias) if a is not None),
                             *executor.program.constants()])

    @property
    def original_weight_bytes(self) -> int:
        """The network's weights as loaded (before preparing)."""
        return self._original_bytes

    @property
    def closed(self) -> bool:
        return self._executor is None

    @property
    def executor(self) -> Executor:
        """The executor (its program, prepared weights and arena); SessionClosedError once
        closed."""
        executor = self._executor
        if executor is None:
            raise SessionClosedError(f"the session of {self.name!r} is closed (its weights and "
                                     "arena were released); make a new Session")
        return executor

    # -- running --------------------------------------------------------------------------------
    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs for ``inputs``, always as a dict (output name -> array, NCHW for
        images), even for one output. ``inputs``: an array (a network with one input) or input
        name -> array, checked against `inputs` (names, shapes, numbers; NetworkError, a
        ValueError, saying what is wrong), never written. One run at a time."""
        feeds = check_inputs(self._inputs, self._named(inputs))
        with self._running() as executor:
            result = executor.run(feeds)
        return self.outputs_of(result)

    def _named(self, inputs: Any) -> Mapping[str, Any]:
        if isinstance(inputs, Mapping):
            return inputs
        if len(self._inputs) != 1:
            raise NetworkError(f"{self.name!r} takes {len(self._inputs)} inputs "
                               f"({', '.join(self._inputs)}); give {{name: array}}")
        return {next(iter(self._inputs)): inputs}

    def outputs_of(self, result: RunResult) -> dict[str, np.ndarray]:
        """Output name -> array of an executor's `RunResult`."""
        return {name: result.outputs[tensor] for name, tensor in self._outputs.items()}

    @contextmanager
    def _running(self) -> Iterator[Executor]:
        """The executor, this session's runs serialised and its thread count applied (the
        runner's measured runs go through here too)."""
        with self._lock:
            executor = self.executor
            with blas.threads(self._threads):
                yield executor

    # -- closing --------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the prepared weights and the arena (the program too); a later `run` is
        refused. Waits for a run in progress; closing twice is fine."""
        with self._lock:
            if self._executor is not None:
                self._executor.close()
                self._executor = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"threads={self._threads}"
        return (f"Session({self.name!r}, inputs={self._inputs}, "
                f"outputs={self._output_shapes}, {state})")
