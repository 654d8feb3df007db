"""Normalisation layers in their inference form: batch-norm folded to a per-channel affine map,
AlexNet's local response normalisation across channels, and the normalisations that compute
their statistics at run time (layer norm: ConvNeXt's, over channels or the last axes; instance
norm: style-transfer and some segmentation networks)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..base import UFUNC_BUFSIZE
from ..spec import Layout
from .base import Operator, Shape, logical_shape, small_ufunc_buffers
from .checks import axis_index, flag, int_list, integer, real, size
from .elementwise import physical_nhwc
from .reduce import BLOCK, float64_sums, square_sums, stored_axes, sums_shape
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


class Normalization(Operator):
    """(x - mean) / sqrt(var + epsilon) with the mean and variance over `normalized` axes, then
    * scale (+ bias), the weights spanning `weight_axes` (broadcast over the others).

    The statistics are float64 (`reduce.sums_shape` workspaces, one per normalised group): the
    mean first, then x - mean written into the output (which may be x itself), the variance
    summed from the output's squares in float64 blocks (`reduce.square_sums`), so nothing the
    size of the input is allocated. In NHWC the logical axes map to the stored ones and the
    weights are viewed transposed."""

    layouts = ("NCHW", "NHWC")
    inplace = True
    compute_itemsize = 8        # x - mean and y / std meet the float64 statistics

    def overhead_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        """The common allowance in float64 items, and one more float64 ufunc buffer: a
        reduction over a strided middle axis with a cast (NHWC over W) holds a fourth
        (measured 2.2 KB over three on 1x56x56x96)."""
        return super().overhead_bytes(shapes, itemsize) + UFUNC_BUFSIZE * self.compute_itemsize

    def normalized(self, rank: int) -> tuple[int, ...]:
        """The normalised axes of a rank-``rank`` input, non-negative and sorted."""
        raise NotImplementedError

    def weight_axes(self, rank: int) -> tuple[int, ...]:
        """The axes the scale and bias span, sorted."""
        raise NotImplementedError

    def has_bias(self) -> bool:
        return True

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        self.normalized(len(shape))         # raises for axes out of range
        return [shape]

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        shape = self.output_shapes(shapes)[0]
        spanned = tuple(shape[a] for a in self.weight_axes(len(shape)))
        return {"scale": spanned, **({"bias": spanned} if self.has_bias() else {})}

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """The float64 mean and variance of each group, and a block of float64 squares and
        of their partial sums."""
        shape = tuple(shapes[0])
        groups = size(shape) // size([shape[a] for a in self.normalized(len(shape))])
        block = sums_shape(min(size(shape), BLOCK))
        return {"mean": sums_shape(groups), "var": sums_shape(groups), "squares": block,
                "partial": block}

    def _weight(self, w: np.ndarray, shape: Shape, layout: Layout) -> np.ndarray:
        """A weight over `weight_axes` as it broadcasts to the input stored in ``layout``."""
        rank = len(shape)
        spanned = self.weight_axes(rank)
        w = w.reshape(tuple(shape[a] if a in spanned else 1 for a in range(rank)))
        return physical_nhwc(w, stored=False) if layout == "NHWC" and rank == 4 else w

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        shape = logical_shape(x, layout)
        outs = self._outputs(xs, weights, [x.shape], inplace, out)
        ws = self._workspace(xs, weights, layout, outs, workspace)
        y = outs[0]
        axes = stored_axes(self.normalized(len(shape)), layout, x.ndim)
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        count = math.prod(x.shape[a] for a in axes)
        mean, var = float64_sums(ws["mean"], kept), float64_sums(ws["var"], kept)
        block = min(x.size, BLOCK)
        with small_ufunc_buffers():
            np.add.reduce(x, axis=axes, keepdims=True, dtype=np.float64, out=mean)
            np.divide(mean, count, out=mean)
            np.subtract(x, mean, out=y, casting="same_kind")
            square_sums(y, axes, var, float64_sums(ws["squares"], (block,)),
                        float64_sums(ws["partial"], (block,)))
            np.divide(var, count, out=var)
            np.add(var, self.attrs["epsilon"], out=var)
            np.sqrt(var, out=var)
            np.divide(y, var, out=y, casting="same_kind")
            np.multiply(y, self._weight(weights["scale"], shape, layout), out=y)
            if self.has_bias():
                np.add(y, self._weight(weights["bias"], shape, layout), out=y)
        return outs


@register
class LayerNorm(Normalization):
    op = "layernorm"
    summary = ("(x - mean) / sqrt(var + epsilon) * scale + bias over some axes (ONNX "
               "LayerNormalization: the last ones; ConvNeXt's channels-last norm: the "
               "channels), scale and bias spanning those axes")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"axes": [-1], "epsilon": 1e-5, "bias": True}

    def _check_attrs(self) -> None:
        a = self.attrs
        a["axes"] = int_list(a["axes"], "layernorm: axes")
        a["epsilon"] = real(a["epsilon"], "layernorm: epsilon")
        if a["epsilon"] < 0:
            raise ValueError(f"layernorm: epsilon must not be negative, got {a['epsilon']}")
        a["bias"] = flag(a["bias"], "layernorm: bias")

    def normalized(self, rank: int) -> tuple[int, ...]:
        axes = [axis_index(a, rank, "layernorm: axis") for a in self.attrs["axes"]]
        if len(set(axes)) != len(axes):
            raise ValueError(f"layernorm: axes {list(self.attrs['axes'])} name an axis twice")
        return tuple(sorted(axes))

    def weight_axes(self, rank: int) -> tuple[int, ...]:
        return self.normalized(rank)

    def has_bias(self) -> bool:
        return bool(self.attrs["bias"])


@register
class InstanceNorm(Normalization):
    op = "instancenorm"
    summary = ("(x - mean) / sqrt(var + epsilon) * scale[c] + bias[c], the statistics over the "
               "spatial axes of each image and channel")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"epsilon": 1e-5}

    def _check_attrs(self) -> None:
        self.attrs["epsilon"] = real(self.attrs["epsilon"], "instancenorm: epsilon")
        if self.attrs["epsilon"] < 0:
            raise ValueError("instancenorm: epsilon must not be negative, got "
                             f"{self.attrs['epsilon']}")

    def normalized(self, rank: int) -> tuple[int, ...]:
        if rank < 3:
            raise ValueError(f"instancenorm needs an input of rank >= 3 (N, C, D1, ...), got "
                             f"rank {rank}")
        return tuple(range(2, rank))

    def weight_axes(self, rank: int) -> tuple[int, ...]:
        return (1,)
