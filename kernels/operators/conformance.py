"""The conformance checks every operator must pass, shipped with the package (beside the
algorithm checks of `convplan.kernels.checks`) so an operator added outside convplan can run
them:

    from convplan.kernels.operators.conformance import OperatorCase, check_operator_cases
    check_operator_cases(MyOperator, [OperatorCase({"alpha": 0.5}, [(1, 3, 8, 8)])])

Operators differ in their attributes, so there is no fixed corpus: `check_operator` checks one
instance on one list of input shapes, `check_operator_cases` a list of cases. The contracts
checked are the ones the executor and the planner rely on:

- `output_shapes` is what `run` returns (count and shapes); outputs are C-contiguous, of the
  input dtype; an out-of-place run leaves its inputs as they were;
- a view operator's outputs share the first input's memory; any other operator's outputs share
  no memory with its inputs (the executor reuses an input's buffer once it is dead);
- with NHWC storage (when the operator lists it and some input is 4-D) the answer is the NCHW
  one transposed, within the workspace;
- in place (when `can_overwrite`) the answer equals the out-of-place one, written over the first
  input, within the workspace;
- `workspace_bytes` is a tight upper bound of what a run allocates beyond its outputs
  (tracemalloc: measured <= predicted <= 1.25 x measured + 64 KiB). Not for `conv`: its memory
  is the chosen algorithm's, which `convplan.kernels.checks.check_workspace` checks;
- a run into given arrays (``out=`` and the ``workspace=`` of `workspace_shapes`, filled with
  NaN), in each layout and in place, equals the run that allocates them bit for bit, returns
  the given output arrays themselves and allocates no more than `run_overhead_bytes` plus
  `GIVEN_BUFFERS_SLACK` (not for `conv`); outputs or workspaces of the wrong count, names,
  shape, dtype or contiguity, or sharing memory with an input, are refused with a ValueError.

Values: these checks compare runs of the operator with each other, not with the truth. The
truth needs an independent oracle, which kernels (NumPy only) cannot ship for every operator:
pass ``references`` (label -> function of the inputs and weights returning the expected outputs,
e.g. a float64 NumPy implementation); the test suite passes ONNX's reference evaluator,
onnxruntime and brute-force oracles. A failed check raises `ConformanceError` naming the
operator (with its attributes), the shapes and the dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import GIVEN_BUFFERS_SLACK, WORKSPACE_SLACK, ConformanceError
from ..layout import convert
from ..measure import peak_allocation
from ..spec import Layout
from . import registry
from .base import Operator, Shape

#: A value oracle: (inputs, weights) -> the expected outputs, NCHW.
Reference = Callable[[list[np.ndarray], dict[str, np.ndarray]], Sequence[np.ndarray]]

#: Relative agreement asked of NHWC runs and of references, per dtype.
TOLERANCE = {"float32": 1e-5, "float64": 1e-11}

#: Operators whose run allocates what their algorithm declares, not `workspace_bytes`.
ALGORITHM_MEMORY = frozenset({"conv"})


@dataclass
class OperatorCase:
    """Attributes, the (logical, NCHW) input shapes and the dtype an operator is checked on."""

    attrs: dict[str, Any]
    shapes: list[Shape]
    dtype: str = "float32"
    #: Operand keys (input indices, weight names) drawn away from zero (divisors).
    nonzero: set[Hashable] = field(default_factory=set)


def operator_data(operator: Operator, shapes: Sequence[Shape], dtype: str = "float32",
                  seed: int = 0, nonzero: Iterable[Hashable] = ()
                  ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Standard-normal inputs and weights; operands in ``nonzero`` have |a| in [0.5, 2.5]."""
    rng = np.random.default_rng(seed)
    keep_off_zero = set(nonzero)

    def array(shape: Shape, key: Hashable) -> np.ndarray:
        a = rng.standard_normal(shape)
        if key in keep_off_zero:
            a = np.sign(a + 1e-9) * (0.5 + np.abs(a) % 2)
        return a.astype(dtype)

    xs = [array(tuple(s), i) for i, s in enumerate(shapes)]
    weights = {k: array(tuple(s), k) for k, s in operator.weight_shapes(list(shapes)).items()}
    return xs, weights


def measured_workspace(operator: Operator, xs: Sequence[np.ndarray],
                       weights: Mapping[str, np.ndarray], layout: Layout = "NCHW",
                       inplace: bool = False) -> int:
    """Peak bytes a run allocates beyond its outputs (a view or in-place output is none):
    tracemalloc, the minimum of three runs after a warm-up. An in-place run overwrites
    ``xs[0]`` every time."""
    def run() -> list[np.ndarray]:
        return operator.run(list(xs), weights, layout, inplace)

    outputs = run()  # warm lazily created objects
    fresh = 0 if operator.view or inplace else sum(o.nbytes for o in outputs)
    del outputs
    return peak_allocation(run) - fresh


def mismatch(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> str | None:
    """Why ``actual`` is not ``expected`` within ``tolerance`` (relative, with the largest
    magnitude as the scale for values near zero), or None when it is."""
    if actual.shape != expected.shape:
        return f"shape {actual.shape}, expected {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    try:
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)
    except AssertionError as error:
        return " ".join(str(error).split())
    return None


def nhwc_applies(operator: Operator, shapes: Sequence[Shape]) -> bool:
    """Whether the operator runs these shapes with its 4-D inputs stored NHWC."""
    return ("NHWC" in operator.layouts and any(len(s) == 4 for s in shapes)
            and all(len(s) <= 4 for s in shapes))


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return convert(x, "NCHW", "NHWC") if x.ndim == 4 else x


def _from_nhwc(x: np.ndarray) -> np.ndarray:
    return convert(x, "NHWC", "NCHW") if x.ndim == 4 else x


class _Checker:
    """One operator on one case: runs it, and names it in every failure."""

    def __init__(self, operator: Operator, shapes: Sequence[Shape], dtype: str) -> None:
        self.operator = operator
        self.shapes = [tuple(s) for s in shapes]
        self.dtype = dtype
        self.itemsize = np.dtype(dtype).itemsize

    def fail(self, what: str) -> ConformanceError:
        return ConformanceError(f"{self.operator!r} on {self.shapes} ({self.dtype}): {what}")

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False, **given: Any) -> list[np.ndarray]:
        """The operator's run (``given``: its out= and workspace=); an exception on shapes it
        accepts is a failed check."""
        try:
            return list(self.operator.run(list(xs), weights, layout, inplace, **given))
        except Exception as error:
            how = (f"{layout}{', in place' if inplace else ''}"
                   f"{', into given arrays' if given else ''}")
            raise self.fail(f"accepts the shapes, but a run ({how}) failed: {error!r}") from None

    def refuses(self, what: str, call: Callable[[], object]) -> None:
        """``call`` raises a ValueError (any other outcome is a failed check)."""
        try:
            call()
        except ValueError:
            return
        except Exception as error:
            raise self.fail(f"{what} raised {error!r}, not a ValueError") from None
        raise self.fail(f"accepted {what}")

    def given_buffers(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
                      fresh: Sequence[np.ndarray], layout: Layout, inplace: bool,
                      memory: bool) -> None:
        """A run into given out= / workspace= arrays: ``fresh``'s bits, in those arrays, with
        nothing allocated beyond the allowance."""
        op = self.operator
        how = f"a run into given arrays{' in NHWC' if layout == 'NHWC' else ''}" \
              f"{' in place' if inplace else ''}"
        workspace = {name: np.full(shape, np.nan, dtype=self.dtype)
                     for name, shape in op.workspace_shapes(self.shapes, layout).items()}
        xs = list(xs)
        if inplace:
            xs[0] = xs[0].copy()
            outs: list[np.ndarray] | None = [xs[0]]
        elif op.view:
            outs = None
        else:
            outs = [np.full(y.shape, np.nan, dtype=self.dtype) for y in fresh]
        result = self.run(xs, weights, layout, inplace, out=outs, workspace=workspace)
        if outs is not None and (len(result) != len(outs)
                                 or any(r is not o for r, o in zip(result, outs, strict=True))):
            raise self.fail(f"{how} returned other arrays than the given ones")
        if any(not np.array_equal(r, f, equal_nan=True)
               for r, f in zip(result, fresh, strict=True)):
            raise self.fail(f"{how} differs from a run that allocates its arrays")
        if not memory:
            return
        del result
        allowed = op.overhead_bytes(self.shapes, self.itemsize) + GIVEN_BUFFERS_SLACK
        measured = peak_allocation(
            lambda: op.run(xs, weights, layout, inplace, out=outs, workspace=workspace))
        if measured > allowed:
            raise self.fail(f"{how} allocated {measured} bytes, over the {allowed} allowed "
                            "beyond them")

    def given_refused(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
                      fresh: Sequence[np.ndarray]) -> None:
        """Wrong output or workspace arrays are refused with a ValueError, never written."""
        op, dtype = self.operator, np.dtype(self.dtype)
        workspace = {name: np.empty(shape, dtype=dtype)
                     for name, shape in op.workspace_shapes(self.shapes).items()}
        if op.view:
            self.refuses("out for a view operator",
                         lambda: op.run(list(xs), weights, out=[np.empty_like(fresh[0])]))
            return
        outs = [np.empty(y.shape, dtype=dtype) for y in fresh]
        other = np.dtype("float64" if dtype == np.float32 else "float32")

        def run(out: Sequence[np.ndarray], ws: Mapping[str, np.ndarray] = workspace,
                inputs: Sequence[np.ndarray] = xs, inplace: bool = False) -> object:
            return op.run(list(inputs), weights, "NCHW", inplace, out=out, workspace=ws)

        first = outs[0]
        self.refuses("an out of the wrong dtype",
                     lambda: run([first.astype(other), *outs[1:]]))
        self.refuses("an out of the wrong shape",
                     lambda: run([np.empty((*first.shape, 2), dtype), *outs[1:]]))
        strided = np.empty((*first.shape, 2), dtype)[..., 0]
        if not strided.flags.c_contiguous:     # a single element is contiguous whatever strides
            self.refuses("an out that is not C-contiguous", lambda: run([strided, *outs[1:]]))
        self.refuses("an out with one array too many",
                     lambda: run([*outs, np.empty_like(first)]))
        shared = np.empty(max(xs[0].size, first.size), dtype=dtype)
        aliased = shared[:xs[0].size].reshape(xs[0].shape)
        np.copyto(aliased, xs[0])
        self.refuses("an out sharing memory with an input",
                     lambda: run([shared[:first.size].reshape(first.shape), *outs[1:]],
                                 inputs=[aliased, *xs[1:]]))
        self.refuses("a workspace with an extra buffer",
                     lambda: run(outs, {**workspace, "extra": np.empty(1, dtype)}))
        for name in workspace:
            fewer = {k: v for k, v in workspace.items() if k != name}
            retyped = {**workspace, name: workspace[name].astype(other)}
            self.refuses(f"a workspace without {name!r}", lambda ws=fewer: run(outs, ws))
            self.refuses(f"a workspace {name!r} of the wrong dtype",
                         lambda ws=retyped: run(outs, ws))
        if op.can_overwrite(self.shapes):
            self.refuses("an in-place run given an out other than its input",
                         lambda: run([xs[0].copy()], inputs=[xs[0].copy(), *xs[1:]],
                                     inplace=True))

    def workspace(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
                  layout: Layout, inplace: bool, tight: bool) -> None:
        predicted = self.operator.workspace_bytes(self.shapes, self.itemsize)
        measured = measured_workspace(self.operator, xs, weights, layout, inplace)
        how = f"a run{' in NHWC' if layout == 'NHWC' else ''}{' in place' if inplace else ''}"
        if measured > predicted:
            raise self.fail(f"{how} allocated {measured} bytes, over the declared workspace "
                            f"of {predicted}")
        if tight and predicted > 1.25 * measured + WORKSPACE_SLACK:
            raise self.fail(f"declared workspace {predicted} bytes is far above the "
                            f"{measured} {how} allocates")


def check_operator(operator: Operator, shapes: Sequence[Shape], dtype: str = "float32",
                   seed: int = 0, *, nonzero: Iterable[Hashable] = (),
                   references: Mapping[str, Reference] | None = None,
                   tolerance: float | None = None) -> list[np.ndarray]:
    """Every contract of the module docstring for ``operator`` on inputs of ``shapes`` (logical
    NCHW) and ``dtype``, drawn from ``seed`` (`operator_data`); each of ``references`` must
    agree with the run within ``tolerance`` (default `TOLERANCE`, which NHWC runs always
    meet). The NCHW outputs.

    Shapes the operator rejects (`check_arity`, `output_shapes`) raise its ValueError: the case
    is invalid, not the operator. A broken contract raises `ConformanceError`."""
    c = _Checker(operator, shapes, dtype)
    tol = TOLERANCE[np.dtype(dtype).name]
    operator.check_arity(len(c.shapes))
    expected_shapes = [tuple(s) for s in operator.output_shapes(c.shapes)]
    xs, weights = operator_data(operator, c.shapes, dtype, seed, nonzero)

    # shapes, dtype, contiguity; the inputs left alone; no aliasing but a view's
    copies = [x.copy() for x in xs]
    ys = c.run(copies, weights)
    if [y.shape for y in ys] != expected_shapes:
        raise c.fail(f"run returned shapes {[y.shape for y in ys]}, output_shapes says "
                     f"{expected_shapes}")
    for i, y in enumerate(ys):
        if y.dtype != np.dtype(dtype):
            raise c.fail(f"output {i} has dtype {y.dtype}, expected {dtype}")
        if not y.flags.c_contiguous:
            raise c.fail(f"output {i} is not C-contiguous")
    if not all(np.array_equal(x, copy, equal_nan=True) for x, copy in zip(xs, copies,
                                                                          strict=True)):
        raise c.fail("an out-of-place run changed its input")
    if operator.view:
        if not all(np.shares_memory(y, copies[0]) for y in ys):
            raise c.fail("a view operator's output does not share the input's memory")
    elif any(np.shares_memory(y, x) for y in ys for x in copies):
        raise c.fail("an output shares memory with an input (only a view operator's may)")

    # values: each reference, within the tolerance
    for label, reference in (references or {}).items():
        expected = list(reference([x.copy() for x in xs], weights))
        if len(expected) != len(ys):
            raise c.fail(f"{len(ys)} outputs, {label} gives {len(expected)}")
        for i, (y, ref) in enumerate(zip(ys, expected, strict=True)):
            why = mismatch(y, np.asarray(ref).astype(dtype, copy=False),
                           tol if tolerance is None else tolerance)
            if why:
                raise c.fail(f"output {i} differs from {label}: {why}")

    memory = operator.op not in ALGORITHM_MEMORY

    # NHWC storage: the NCHW answer, transposed
    nhwc: list[np.ndarray] = []
    if nhwc_applies(operator, c.shapes):
        nhwc = c.run([_to_nhwc(x) for x in xs], weights, "NHWC")
        if len(nhwc) != len(ys):
            raise c.fail(f"{len(nhwc)} outputs in NHWC, {len(ys)} in NCHW")
        for i, (y, z) in enumerate(zip(ys, nhwc, strict=True)):
            why = mismatch(_from_nhwc(z), y, tol)
            if why:
                raise c.fail(f"output {i} in NHWC is not the NCHW one transposed: {why}")
        if memory:
            c.workspace([_to_nhwc(x) for x in xs], weights, "NHWC", False, tight=False)

    # in place: the same answer, written over the first input
    if operator.can_overwrite(c.shapes):
        first = xs[0].copy()
        out = c.run([first, *xs[1:]], weights, inplace=True)
        if len(out) != 1 or not np.shares_memory(out[0], first):
            raise c.fail("an in-place run did not write its output over the first input")
        if not np.array_equal(out[0], ys[0], equal_nan=True):
            raise c.fail("an in-place run differs from the out-of-place one")
        if not np.array_equal(first, ys[0], equal_nan=True):
            raise c.fail("an in-place run left the first input without the result")
        if memory:
            c.workspace([xs[0].copy(), *xs[1:]], weights, "NCHW", True, tight=False)

    # workspace: a tight upper bound of an out-of-place NCHW run
    if memory:
        c.workspace(xs, weights, "NCHW", False, tight=True)

    # into given arrays: the same bits, in those arrays, allocating only the allowance
    c.given_buffers(xs, weights, ys, "NCHW", False, memory)
    if nhwc:
        c.given_buffers([_to_nhwc(x) for x in xs], weights, nhwc, "NHWC", False, memory)
    if operator.can_overwrite(c.shapes):
        c.given_buffers(xs, weights, ys, "NCHW", True, memory)
    c.given_refused(xs, weights, ys)
    return ys


def check_operator_cases(operator: str | type[Operator], cases: Iterable[OperatorCase],
                         seed: int = 0) -> int:
    """`check_operator` on each case, the operator built from the case's attributes (by op
    name through the registry, or from a class); the number of cases checked."""
    count = 0
    for case in cases:
        instance = (registry.make(operator, **case.attrs) if isinstance(operator, str)
                    else operator(**case.attrs))
        check_operator(instance, case.shapes, case.dtype, seed + count, nonzero=case.nonzero)
        count += 1
    return count


__all__ = ["ALGORITHM_MEMORY", "GIVEN_BUFFERS_SLACK", "TOLERANCE", "ConformanceError",
           "OperatorCase", "Reference",
           "check_operator", "check_operator_cases", "measured_workspace", "mismatch",
           "nhwc_applies", "operator_data"]
