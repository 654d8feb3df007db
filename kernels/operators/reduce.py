"""Reductions over a set of axes (ONNX ReduceMean, ReduceSum, ReduceMax, ReduceL2): the
squeeze-and-excitation block's mean over H and W, and the mean-pooling heads.

Sums accumulate in float64 (the input is float32 in every network): a float32 sum over the
outer axes of an array (H and W of an NHWC activation, C of an NCHW one) is added one row at a
time, and drifts by up to n * eps (measured 7e-5 relative over 1024 rows), where float64 stays
exact to float32's rounding. The accumulator is a workspace the size of the output, declared
in elements of the run's dtype (`sums_shape`: two float32 per float64). The maximum needs none.

In NHWC a 4-D input is reduced over its stored axes (the logical axes mapped through the
layout), straight into the output as it is stored, so no layout copy is made for the squeeze-
and-excitation block of an NHWC network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, logical_shape, small_ufunc_buffers
from .checks import axis_index, flag, int_list, size
from .elementwise import index_blocks
from .registry import register
from .softmax import physical_axis

#: Elements per block of the squares a sum of squares adds up (ReduceL2, LayerNormalization).
BLOCK = 4096


def sums_shape(count: int) -> Shape:
    """A workspace holding ``count`` float64 sums, in elements of a float32 run."""
    return (2 * count,)


def float64_sums(buffer: np.ndarray, shape: Shape) -> np.ndarray:
    """The float64 array of ``shape`` a `sums_shape` workspace holds: the float32 buffer's bytes
    (a float64 run, which only the conformance checks make, uses its first half)."""
    flat = buffer.reshape(-1)
    sums = flat.view(np.float64) if flat.dtype == np.float32 else flat
    return sums[:math.prod(shape)].reshape(shape)


def stored_axes(axes: Sequence[int], layout: Layout, rank: int) -> tuple[int, ...]:
    """The array axes holding logical ``axes`` (non-negative) of an input stored in ``layout``."""
    return tuple(sorted(physical_axis(a, layout, rank) for a in axes))


def square_sums(x: np.ndarray, axes: tuple[int, ...], sums: np.ndarray, squares: np.ndarray,
                partial: np.ndarray) -> None:
    """``sums`` (float64, x's shape with ``axes`` kept as 1) = the sum of x ** 2 over ``axes``:
    each block's squares made in float64 in ``squares``, its sums over ``axes`` in ``partial``
    (both float64 buffers of `BLOCK` elements), added to the sums they belong to."""
    sums.fill(0)
    for index in index_blocks(x.shape, BLOCK):
        block = x[index]
        square = squares[:block.size].reshape(block.shape)
        np.square(block, out=square, dtype=np.float64)
        kept = tuple(1 if i in axes else d for i, d in enumerate(block.shape))
        part = partial[:size(kept)].reshape(kept)
        np.add.reduce(square, axis=axes, keepdims=True, out=part)
        target = sums[tuple(slice(0, 1) if i in axes else s for i, s in enumerate(index))]
        np.add(target, part, out=target)


class Reduce(Operator):
    """Shared attributes, shapes and storage of the reductions: ``axes`` (None: every axis;
    negative ones count from the end) and ``keepdims`` (reduced axes stay as 1)."""

    layouts = ("NCHW", "NHWC")
    #: Whether the run needs the float64 sums (all but the maximum).
    sums: ClassVar[bool] = True

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"axes": None, "keepdims": True}

    def _check_attrs(self) -> None:
        a = self.attrs
        if a["axes"] is not None:
            a["axes"] = int_list(a["axes"], f"{self.op}: axes")
        a["keepdims"] = flag(a["keepdims"], f"{self.op}: keepdims")

    def reduced(self, rank: int) -> tuple[int, ...]:
        """The reduced axes of a rank-``rank`` input, non-negative and sorted."""
        if self.attrs["axes"] is None:
            return tuple(range(rank))
        axes = [axis_index(a, rank, f"{self.op}: axis") for a in self.attrs["axes"]]
        if len(set(axes)) != len(axes):
            raise ValueError(f"{self.op}: axes {list(self.attrs['axes'])} name an axis twice")
        return tuple(sorted(axes))

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        if not shape:
            raise ValueError(f"{self.op} needs an input of rank >= 1")
        axes = self.reduced(len(shape))
        if self.attrs["keepdims"]:
            return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """The float64 "sums", one per output element (`sums_shape`)."""
        return {"sums": sums_shape(size(self.output_shapes(shapes)[0]))} if self.sums else {}

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        shape = logical_shape(x, layout)
        logical = self.output_shapes([shape])[0]
        nhwc_out = layout == "NHWC" and len(logical) == 4
        stored = (logical[0], logical[2], logical[3], logical[1]) if nhwc_out else logical
        outs = self._outputs(xs, weights, [stored], inplace, out)
        ws = self._workspace(xs, weights, layout, outs, workspace)
        axes = self.reduced(len(shape))
        # the output seen with the stored input's axes (reduced ones as 1): a view
        target = outs[0].transpose(0, 3, 1, 2) if nhwc_out else outs[0]
        if not self.attrs["keepdims"]:
            target = np.expand_dims(target, axes)
        if layout == "NHWC" and x.ndim == 4:
            target = target.transpose(0, 2, 3, 1)
        paxes = stored_axes(axes, layout, x.ndim)
        with small_ufunc_buffers():
            if self.sums:
                sums = float64_sums(ws["sums"], target.shape)
                self._reduce(x, paxes, target, sums, ws)
            else:
                self._reduce(x, paxes, target, None, ws)
        return outs

    def _reduce(self, x: np.ndarray, axes: tuple[int, ...], target: np.ndarray,
                sums: np.ndarray | None, ws: dict[str, np.ndarray]) -> None:
        """Reduce ``x`` over its (stored) ``axes`` into ``target`` (x's rank, those axes 1),
        through the float64 ``sums`` of target's shape when the operator needs them."""
        raise NotImplementedError


@register
class ReduceSum(Reduce):
    op = "reducesum"
    summary = "sum over some axes (all by default), accumulated in float64"

    def _reduce(self, x: np.ndarray, axes: tuple[int, ...], target: np.ndarray,
                sums: np.ndarray | None, ws: dict[str, np.ndarray]) -> None:
        assert sums is not None
        np.add.reduce(x, axis=axes, keepdims=True, dtype=np.float64, out=sums)
        np.copyto(target, sums, casting="same_kind")


@register
class ReduceMean(Reduce):
    op = "reducemean"
    summary = ("mean over some axes (all by default), accumulated in float64: the squeeze-and-"
               "excitation block's mean over H and W, mean-pooling heads")

    def _reduce(self, x: np.ndarray, axes: tuple[int, ...], target: np.ndarray,
                sums: np.ndarray | None, ws: dict[str, np.ndarray]) -> None:
        assert sums is not None
        np.add.reduce(x, axis=axes, keepdims=True, dtype=np.float64, out=sums)
        np.divide(sums, math.prod(x.shape[a] for a in axes), out=target, casting="same_kind")


@register
class ReduceMax(Reduce):
    op = "reducemax"
    summary = "largest element over some axes (all by default); NaN wins"
    sums = False

    def _reduce(self, x: np.ndarray, axes: tuple[int, ...], target: np.ndarray,
                sums: np.ndarray | None, ws: dict[str, np.ndarray]) -> None:
        np.maximum.reduce(x, axis=axes, keepdims=True, out=target)


@register
class ReduceL2(Reduce):
    op = "reducel2"
    summary = "sqrt of the sum of squares over some axes (all by default), in float64"

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """The sums, and a block of float64 squares and of their partial sums."""
        block = sums_shape(min(size(shapes[0]), BLOCK))
        return {**super().workspace_shapes(shapes, layout), "squares": block, "partial": block}

    def _reduce(self, x: np.ndarray, axes: tuple[int, ...], target: np.ndarray,
                sums: np.ndarray | None, ws: dict[str, np.ndarray]) -> None:
        assert sums is not None
        count = min(x.size, BLOCK)
        square_sums(x, axes, sums, float64_sums(ws["squares"], (count,)),
                    float64_sums(ws["partial"], (count,)))
        np.sqrt(sums, out=sums)
        np.copyto(target, sums, casting="same_kind")
