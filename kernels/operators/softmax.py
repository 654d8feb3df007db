"""Softmax along one axis (the classifier's last layer; ONNX opset-13 meaning)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import axis_index, integer
from .registry import register

#: Where a logical (N, C, H, W) axis lives in an NHWC array.
NHWC_AXIS = (0, 3, 1, 2)


def physical_axis(axis: int, layout: Layout, rank: int) -> int:
    """The array axis holding logical ``axis`` (already non-negative) in ``layout``."""
    return NHWC_AXIS[axis] if layout == "NHWC" and rank == 4 else axis


@register
class Softmax(Operator):
    op = "softmax"
    summary = "exp(x - max) / sum(exp(x - max)) along one axis"
    layouts = ("NCHW", "NHWC")
    inplace = True

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"axis": -1}

    def _check_attrs(self) -> None:
        self.attrs["axis"] = integer(self.attrs["axis"], "softmax: axis")

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        axis_index(self.attrs["axis"], len(shape), "softmax: axis")
        return [shape]

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """The maxima, then the sums, along the axis: the input's stored shape with that axis
        kept as 1."""
        shape = tuple(shapes[0])
        if layout == "NHWC" and len(shape) == 4:
            shape = (shape[0], shape[2], shape[3], shape[1])
        axis = physical_axis(axis_index(self.attrs["axis"], len(shape), "softmax: axis"),
                             layout, len(shape))
        return {"reduced": tuple(1 if i == axis else d for i, d in enumerate(shape))}

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """One reduced-size temporary (the maxima, then the sums); everything else in place."""
        x = xs[0]
        axis = physical_axis(axis_index(self.attrs["axis"], x.ndim, "softmax: axis"), layout,
                             x.ndim)
        outs = self._outputs(xs, weights, [x.shape], inplace, out)
        reduced = self._workspace(xs, weights, layout, outs, workspace)["reduced"]
        out = outs[0]
        with small_ufunc_buffers():
            np.max(x, axis=axis, keepdims=True, out=reduced)
            np.subtract(x, reduced, out=out)
            np.exp(out, out=out)
            np.sum(out, axis=axis, keepdims=True, out=reduced)
            np.divide(out, reduced, out=out)
        return outs
