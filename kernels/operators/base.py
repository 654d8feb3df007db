"""The interface of every operator other than convolution (pooling, activations, linear ...).

An operator is built from its attributes (validated in the constructor), says what it produces
from its input shapes (`output_shapes`), what weights it takes (`weight_shapes`), how many bytes a
run allocates beyond its outputs (`workspace_bytes`, an upper bound the executor's measurement
checks), and computes (`run`). Shapes are always logical NCHW-style shapes; a 4-D activation may be
stored in another layout when the operator lists it in `layouts`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from ..base import UFUNC_BUFSIZE, run_overhead_bytes
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
    def workspace_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        """Peak bytes `run` allocates beyond its outputs: its temporaries plus the common
        allowance for ufunc buffers and interpreter objects."""
        return self._temporary_bytes(shapes, itemsize) + run_overhead_bytes(itemsize)

    def _temporary_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        return 0

    # -- running -----------------------------------------------------------------------------
    @abstractmethod
    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False) -> list[np.ndarray]:
        """Compute the outputs. ``layout`` is how the 4-D inputs are stored (one of `layouts`);
        with ``inplace`` (only when `can_overwrite`) the output is written over xs[0]."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items())
        return f"{type(self).__name__}({args})"


__all__ = ["UFUNC_BUFSIZE", "Operator", "Shape", "small_ufunc_buffers"]
