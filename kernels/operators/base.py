"""The interface of every operator other than convolution (pooling, activations, linear ...).

An operator is built from its attributes (validated in the constructor), says what it produces
from its input shapes (`output_shapes`), what weights it takes (`weight_shapes`), which named
temporaries a run needs (`workspace_shapes`) and so how many bytes it allocates beyond its outputs
(`workspace_bytes`, an upper bound the executor's measurement checks), and computes (`run`),
into given output and workspace arrays (an arena's views) or into new ones. Shapes are always
logical NCHW-style shapes; a 4-D activation may be stored in another layout when the operator
lists it in `layouts`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
from numpy.lib.array_utils import byte_bounds

from ..base import UFUNC_BUFSIZE, check_buffer, check_disjoint, run_overhead_bytes, take_workspace
from ..spec import Layout

Shape = tuple[int, ...]


@contextmanager
def small_ufunc_buffers() -> Iterator[None]:
    """NumPy buffers ufunc operands that broadcast or are strided views (8192 elements each by
    default, 32-64 KiB); inside this block the buffers are `UFUNC_BUFSIZE` elements, which the
    allowance in `run_overhead_bytes` covers."""
    previous = np.setbufsize(UFUNC_BUFSIZE)
    try:
        yield
    finally:
        np.setbufsize(previous)


class Operator(ABC):
    """One operator with its attributes. Subclasses register under `op` (see `registry`)."""

    op: ClassVar[str]
    summary: ClassVar[str]
    #: (fewest, most) activation inputs; most = None for any number.
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    #: Layouts a 4-D input may be stored in; the output uses the first input's layout.
    layouts: ClassVar[tuple[Layout, ...]] = ("NCHW",)
    #: The output may overwrite the first input when nothing else needs that input.
    inplace: ClassVar[bool] = False
    #: The output is a view of the first input (reshape, flatten, identity): no allocation.
    view: ClassVar[bool] = False
    #: The widest item the run's ufuncs compute in, if wider than the data's: NumPy's casting
    #: buffers (a float32 operand met by float64 statistics) hold items of that size.
    compute_itemsize: ClassVar[int] = 0

    def __init__(self, **attrs: Any) -> None:
        unknown = set(attrs) - set(self.attribute_defaults())
        if unknown:
            raise ValueError(f"{self.op}: unknown attribute(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.attribute_defaults()) or 'none'}")
        self.attrs = {**self.attribute_defaults(), **attrs}
        self._check_attrs()

    # -- description -----------------------------------------------------------------------
    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        """Every attribute the operator takes, with its default (required ones: no entry)."""
        return {}

    def _check_attrs(self) -> None:
        """Raise ValueError naming the attribute when one is invalid."""
        return None

    def check_arity(self, n_inputs: int) -> None:
        lo, hi = self.arity
        if n_inputs < lo or (hi is not None and n_inputs > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo}-{hi}"
            raise ValueError(f"{self.op} takes {want} input(s), got {n_inputs}")

    # -- shapes ------------------------------------------------------------------------------
    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        """The weight tensors this operator needs for these input shapes (name -> shape)."""
        return {}

    def check_weights(self, shapes: Sequence[Shape], weights: Mapping[str, np.ndarray]) -> None:
        """ValueError naming the weight when one is missing or has the wrong shape."""
        for name, shape in self.weight_shapes(shapes).items():
            if name not in weights:
                raise ValueError(f"{self.op}: weight {name!r} is missing")
            if tuple(weights[name].shape) != tuple(shape):
                raise ValueError(f"{self.op}: weight {name!r} has shape "
                                 f"{tuple(weights[name].shape)}, expected {tuple(shape)}")

    @abstractmethod
    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        """Output shapes for these input shapes; ValueError (saying why) if they do not fit."""

    def can_overwrite(self, shapes: Sequence[Shape]) -> bool:
        """Whether `run` may write the output over xs[0] for these input shapes: only an
        in-place operator whose (single) output has xs[0]'s shape can."""
        if not self.inplace:
            return False
        outputs = self.output_shapes(shapes)
        return len(outputs) == 1 and tuple(outputs[0]) == tuple(shapes[0])

    # -- memory ------------------------------------------------------------------------------
    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """The temporaries `run` needs for these (logical) input shapes stored in ``layout``:
        name -> shape as the run uses it, of the inputs' dtype. A run allocates them unless
        it is given them (``workspace=``)."""
        return {}

    def workspace_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        """Peak bytes `run` allocates beyond its outputs: its `workspace_shapes` (in the layout
        of `layouts` that needs most: callers of this figure do not say which) plus the common
        allowance for ufunc buffers and interpreter objects."""
        temporaries = max(sum(math.prod(s) for s in self.workspace_shapes(shapes, layout)
                              .values()) for layout in self.layouts)
        return temporaries * itemsize + self.overhead_bytes(shapes, itemsize)

    def overhead_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        """What a run into given buffers still allocates: the common allowance for ufunc
        buffers and interpreter objects (`run_overhead_bytes`, in items of the data's size or
        of `compute_itemsize` where that is wider); an operator that keeps more (a table of
        taps) adds it here, where the memory model and the arena read it."""
        return run_overhead_bytes(max(itemsize, self.compute_itemsize))

    # -- running -----------------------------------------------------------------------------
    @abstractmethod
    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Compute the outputs. ``layout`` is how the 4-D inputs are stored (one of `layouts`);
        with ``inplace`` (only when `can_overwrite`) the output is written over xs[0].

        ``out``: the arrays to write the outputs into (stored in ``layout``; in place: [xs[0]]),
        ``workspace``: the buffers of `workspace_shapes`; both checked, and new arrays when not
        given. A view operator writes nothing: it takes neither."""

    def _outputs(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
                 shapes: Sequence[Shape], inplace: bool,
                 out: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """The arrays a run writes its outputs (stored ``shapes``) into: xs[0] in place, else
        ``out`` checked (writeable, C-contiguous, the inputs' dtype, sharing no memory with
        each other, an input or a weight), or new arrays."""
        if inplace:
            if out is not None and (len(out) != 1 or not _same_array(out[0], xs[0])):
                raise ValueError(f"{self.op}: an in-place run writes over its first input, so "
                                 "out must be [xs[0]]")
            return [xs[0]]
        dtype = xs[0].dtype
        if out is None:
            return [np.empty(shape, dtype=dtype) for shape in shapes]
        if len(out) != len(shapes):
            raise ValueError(f"{self.op}: out has {len(out)} arrays, the run writes "
                             f"{len(shapes)}")
        for i, (a, shape) in enumerate(zip(out, shapes, strict=True)):
            check_buffer(a, shape, dtype, f"{self.op}: out[{i}]")
        check_disjoint({f"{self.op}: out[{i}]": a for i, a in enumerate(out)},
                       _read(xs, weights))
        return list(out)

    def _workspace(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
                   layout: Layout, outs: Sequence[np.ndarray],
                   workspace: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The run's `workspace_shapes` buffers: ``workspace`` checked, or new arrays."""
        shapes = self.workspace_shapes([logical_shape(x, layout) for x in xs], layout)
        others = [*_read(xs, weights), *((f"out[{i}]", o) for i, o in enumerate(outs))]
        try:
            return take_workspace(workspace, shapes, xs[0].dtype, others)
        except ValueError as error:
            raise ValueError(f"{self.op}: {error}") from None

    def _writes_nothing(self, out: Sequence[np.ndarray] | None,
                        workspace: Mapping[str, np.ndarray] | None) -> None:
        """A view operator's run: no output arrays or workspace to take."""
        if out is not None or workspace:
            raise ValueError(f"{self.op}: a view operator writes no output and needs no "
                             "workspace; pass neither out nor workspace")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items())
        return f"{type(self).__name__}({args})"


def logical_shape(x: np.ndarray, layout: Layout) -> Shape:
    """The logical (NCHW-order) shape of an input stored in ``layout``."""
    if layout == "NHWC" and x.ndim == 4:
        n, h, w, c = x.shape
        return (n, c, h, w)
    return tuple(x.shape)


def _read(xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray]
          ) -> list[tuple[str, np.ndarray]]:
    return [*((f"input {i}", x) for i, x in enumerate(xs)),
            *((f"weight {name!r}", w) for name, w in weights.items())]


def _same_array(a: object, b: np.ndarray) -> bool:
    """``a`` is ``b``, or a view of exactly its bytes with its shape and strides."""
    return a is b or (isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
                      and a.strides == b.strides and byte_bounds(a) == byte_bounds(b))


__all__ = ["UFUNC_BUFSIZE", "Operator", "Shape", "logical_shape", "small_ufunc_buffers"]
