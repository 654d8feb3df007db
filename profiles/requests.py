"""What can be measured: one small frozen request per kind of cost, which measures itself (on
this machine, now) and estimates itself (the analytic fallback).

Every request names its cost by ``(kind, key, candidate)``: ``key`` is stable text describing the
problem (for a convolution `ConvSpec.key()`, so identical layers of different networks share one
measurement) and ``candidate`` the way of solving it (an algorithm, a transform, a layout).
Requests are hashable, so a profiler can deduplicate them.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, ClassVar, Protocol

import numpy as np

from convplan.kernels import ConvSpec, operators, registry
from convplan.kernels.layout import check_layout, convert
from convplan.kernels.measure import peak_allocation
from convplan.kernels.operators import Operator
from convplan.kernels.spec import Layout

from . import analytic
from .measurement import Measurement
from .timing import median_time

#: Timed runs at least (after the warm-up), even when the budget is tiny.
MIN_REPEATS = 3
#: Traced runs for the workspace (the minimum is kept, see `peak_allocation`).
TRACED_REPEATS = 2


class CostRequest(Protocol):
    """What the profiler needs of a request."""

    kind: str

    @property
    def key(self) -> str: ...

    @property
    def candidate(self) -> str: ...

    def measure(self, budget_s: float) -> Measurement: ...

    def estimate(self, threads: int = 1) -> Measurement: ...


def timed(fn: Callable[[], object], budget_s: float) -> tuple[float, int, float]:
    """(median seconds, timed repeats, relative interquartile spread) of ``fn`` by
    `median_time`, which reports the median only: the calls are timed here as well."""
    times: list[float] = []

    def recorded() -> None:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)

    median = median_time(recorded, min_repeats=MIN_REPEATS, budget_s=budget_s)
    runs = times[1:]  # the first call is median_time's warm-up
    spread = 0.0
    if len(runs) >= 2 and median > 0:
        q1, _, q3 = statistics.quantiles(runs, n=4)
        spread = max(0.0, (q3 - q1) / median)
    return median, len(runs), spread


def _random(shape: Sequence[int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(tuple(shape), dtype=np.float64).astype(dtype)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape) or "scalar"


@dataclass(frozen=True)
class ConvRequest:
    """One convolution algorithm on one layer spec: input in the algorithm's layout, prepared
    weights, a preallocated output; time of `run`, measured peak workspace."""

    kind: ClassVar[str] = "conv"
    spec: ConvSpec
    algorithm: str

    def __post_init__(self) -> None:
        if not isinstance(self.spec, ConvSpec):
            raise ValueError(f"spec must be a ConvSpec, got {type(self.spec).__name__}")
        registry.get(self.algorithm).require(self.spec)  # unknown or unsupported: ValueError

    @property
    def key(self) -> str:
        return self.spec.key()

    @property
    def candidate(self) -> str:
        return self.algorithm

    def measure(self, budget_s: float) -> Measurement:
        spec, alg = self.spec, registry.get(self.algorithm)
        rng = np.random.default_rng(0)
        x = _random(spec.input_shape(alg.input_layout), spec.dtype, rng)
        prepared = alg.prepare(_random(spec.weight_shape, spec.dtype, rng),
                               _random((spec.m,), spec.dtype, rng), spec)
        out = np.empty(spec.output_shape(alg.output_layout), dtype=spec.dtype)

        def run() -> None:
            alg.run(x, prepared, spec, out=out)

        seconds, repeats, spread = timed(run, budget_s)
        workspace = peak_allocation(run, repeats=TRACED_REPEATS)
        return Measurement(seconds, workspace, "measured", repeats, spread)

    def estimate(self, threads: int = 1) -> Measurement:
        return analytic.conv_estimate(self.spec, self.algorithm, threads)


@dataclass(frozen=True)
class TransformRequest:
    """A layout transform of one 4-D tensor; ``shape`` is its logical (NCHW) shape. Its
    workspace is the copy it makes."""

    kind: ClassVar[str] = "transform"
    shape: tuple[int, ...]
    src: Layout
    dst: Layout
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"a layout transform needs a 4-D shape of positive sizes, "
                             f"got {self.shape}")
        object.__setattr__(self, "shape", shape)
        check_layout(self.src)
        check_layout(self.dst)
        if self.src == self.dst:
            raise ValueError(f"a transform from {self.src} to itself costs nothing")
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    @property
    def key(self) -> str:
        return f"{_shape_text(self.shape)}_{self.dtype}"

    @property
    def candidate(self) -> str:
        return f"{self.src}->{self.dst}"

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * np.dtype(self.dtype).itemsize

    def measure(self, budget_s: float) -> Measurement:
        x = convert(_random(self.shape, self.dtype, np.random.default_rng(0)), "NCHW", self.src)
        x = np.ascontiguousarray(x)
        seconds, repeats, spread = timed(lambda: convert(x, self.src, self.dst), budget_s)
        return Measurement(seconds, self.nbytes, "measured", repeats, spread)

    def estimate(self, threads: int = 1) -> Measurement:
        return analytic.transform_estimate(self.shape, np.dtype(self.dtype).itemsize)


def _freeze(value: Any) -> Any:
    """An attribute value as hashable plain Python (lists and arrays become tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return _freeze(value.tolist())
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class OpRequest:
    """Another operator (pooling, activation, gemm ...) on given input shapes, with its 4-D
    inputs stored in ``layout``; ``attrs`` are its attributes as sorted (name, value) items."""

    kind: ClassVar[str] = "op"
    op: str
    attrs: tuple[tuple[str, Any], ...]
    shapes: tuple[tuple[int, ...], ...]
    layout: Layout = "NCHW"

    def __post_init__(self) -> None:
        attrs = self.attrs.items() if isinstance(self.attrs, Mapping) else self.attrs
        object.__setattr__(self, "attrs", tuple(sorted((str(k), _freeze(v)) for k, v in attrs)))
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))
        check_layout(self.layout)
        operator = self.operator()  # unknown op or bad attributes: ValueError
        operator.check_arity(len(self.shapes))
        operator.output_shapes(list(self.shapes))  # shapes that do not fit: ValueError
        if self.layout not in operator.layouts:
            raise ValueError(f"{self.op} cannot run in {self.layout}; "
                             f"it runs in {', '.join(operator.layouts)}")

    @classmethod
    def of(cls, operator: Operator, shapes: Sequence[Sequence[int]],
           layout: Layout = "NCHW") -> OpRequest:
        """The request for an existing operator instance (its normalised attributes)."""
        return cls(operator.op, tuple(operator.attrs.items()),
                   tuple(tuple(s) for s in shapes), layout)

    def operator(self) -> Operator:
        return operators.make(self.op, **dict(self.attrs))

    @property
    def key(self) -> str:
        attrs = json.dumps(dict(self.attrs), sort_keys=True, separators=(",", ":"), default=repr)
        return f"{self.op}{attrs}_{';'.join(_shape_text(s) for s in self.shapes)}"

    @property
    def candidate(self) -> str:
        return self.layout

    def measure(self, budget_s: float) -> Measurement:
        operator = self.operator()
        rng = np.random.default_rng(0)
        xs = [np.ascontiguousarray(convert(_random(s, "float32", rng), "NCHW", self.layout))
              if len(s) == 4 else _random(s, "float32", rng) for s in self.shapes]
        weights = {name: _random(s, "float32", rng)
                   for name, s in operator.weight_shapes(list(self.shapes)).items()}

        def run() -> list[np.ndarray]:
            return operator.run(xs, weights, self.layout)

        seconds, repeats, spread = timed(run, budget_s)
        # The traced peak includes the outputs the run allocates; the workspace is the rest.
        fresh = sum(y.nbytes for y in run() if not any(np.shares_memory(y, x) for x in xs))
        workspace = max(0, peak_allocation(run, repeats=TRACED_REPEATS) - fresh)
        return Measurement(seconds, workspace, "measured", repeats, spread)

    def estimate(self, threads: int = 1) -> Measurement:
        return analytic.op_estimate(self.operator(), self.shapes, threads)
