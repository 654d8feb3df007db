"""Normalisation layers in their inference form: batch-norm folded to a per-channel affine map,
and AlexNet's local response normalisation across channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import integer, real
from .registry import register


@register
class BatchNorm(Operator):
    op = "batchnorm"
    summary = ("inference batch-norm as y = x * scale[c] + shift[c] over axis 1 (the importer "
               "folds mean, variance and epsilon into scale and shift)")
    layouts = ("NCHW", "NHWC")
    inplace = True

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        channels = self.output_shapes(shapes)[0][1]
        return {"scale": (channels,), "shift": (channels,)}

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        if len(shape) < 2:
            raise ValueError(f"batchnorm needs an input of rank >= 2 (N, C, ...), got shape "
                             f"{shape}")
        return [shape]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        scale, shift = weights["scale"], weights["shift"]
        if not (layout == "NHWC" and x.ndim == 4):
            # channel axis 1: (C,) viewed as (C, 1, ..., 1)
            trailing = (1,) * (x.ndim - 2)
            scale, shift = scale.reshape(-1, *trailing), shift.reshape(-1, *trailing)
        outs = self._outputs(xs, weights, [x.shape], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        with small_ufunc_buffers():
            np.multiply(x, scale, out=outs[0])
            np.add(outs[0], shift, out=outs[0])
        return outs


@register
class LRN(Operator):
    op = "lrn"
    summary = ("local response normalisation across channels (AlexNet, GoogLeNet): "
               "y = x / (bias + alpha / size * sum of x^2 over nearby channels) ^ beta")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"size": None, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}

    def _check_attrs(self) -> None:
        a = self.attrs
        if a["size"] is None:
            raise ValueError("lrn: size is required")
        a["size"] = integer(a["size"], "lrn: size", minimum=1)
        for name in ("alpha", "beta", "bias"):
            a[name] = real(a[name], f"lrn: {name}")

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        if len(shape) != 4:
            raise ValueError(f"lrn needs a 4-D (N, C, H, W) input, got shape {shape}")
        return [shape]

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        _, _, h, w = shapes[0]
        return {"square": (h, w)}

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The window sum accumulates in the output itself: each input channel's square (one
        H x W buffer, the workspace "square") is added to every output channel whose window
        holds it."""
        a = self.attrs
        x = xs[0]
        n, c, _, _ = x.shape
        below, above = (a["size"] - 1) // 2, a["size"] // 2  # floor and ceil of (size-1)/2
        outs = self._outputs(xs, weights, [x.shape], inplace, out)
        square = self._workspace(xs, weights, layout, outs, workspace)["square"]
        out = outs[0]
        out.fill(0)
        with small_ufunc_buffers():
            for i in range(n):
                for j in range(c):
                    np.square(x[i, j], out=square)
                    # channel j lies in the window of channels j - above .. j + below
                    window = out[i, max(0, j - above):min(c, j + below + 1)]
                    np.add(window, square, out=window)
            np.multiply(out, a["alpha"] / a["size"], out=out)
            np.add(out, a["bias"], out=out)
            np.power(out, -a["beta"], out=out)
            np.multiply(out, x, out=out)
        return outs
