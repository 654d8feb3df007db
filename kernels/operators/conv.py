"""The convolution operator: attributes, shapes and weights of a network's conv layer.

Which algorithm computes it is the plan's choice; `spec` gives the `ConvSpec` every algorithm
takes, and `run` (used only when no algorithm was chosen) uses `kernels.conv.default_algorithm`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..conv import default_algorithm
from ..layout import convert
from ..spec import ConvSpec, Layout, normalize_padding
from .base import Operator, Shape
from .registry import register


def pair(value: Any, what: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of positive ints."""
    if isinstance(value, int | np.integer):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return a, b


def padding4(value: Any) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right) from an int, a pair or four values, all >= 0."""
    try:
        pads = normalize_padding(value)
    except TypeError:
        raise ValueError(f"padding must be an int, a pair or four ints, got {value!r}") from None
    if min(pads) < 0:
        raise ValueError(f"padding must not be negative, got {value!r}")
    return pads


@register
class Conv(Operator):
    op = "conv"
    summary = "2-D convolution (cross-correlation); weight (M, C/groups, kh, kw), bias (M,)"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"out_channels": None, "kernel": None, "stride": 1, "padding": 0, "dilation": 1,
                "groups": 1, "bias": True}

    def _check_attrs(self) -> None:
        a = self.attrs
        m = a["out_channels"]
        if not isinstance(m, int | np.integer) or isinstance(m, bool) or m < 1:
            raise ValueError(f"conv: out_channels must be a positive int, got {m!r}")
        if a["kernel"] is None:
            raise ValueError("conv: kernel is required")
        a["kernel"] = pair(a["kernel"], "conv: kernel")
        a["stride"] = pair(a["stride"], "conv: stride")
        a["dilation"] = pair(a["dilation"], "conv: dilation")
        a["padding"] = padding4(a["padding"])
        g = a["groups"]
        if not isinstance(g, int | np.integer) or isinstance(g, bool) or g < 1:
            raise ValueError(f"conv: groups must be a positive int, got {g!r}")
        if m % g:
            raise ValueError(f"conv: out_channels {m} is not divisible by groups {g}")
        a["bias"] = bool(a["bias"])

    def spec(self, shape: Shape, dtype: str = "float32") -> ConvSpec:
        """The ConvSpec of this layer for an NCHW input ``shape``."""
        if len(shape) != 4:
            raise ValueError(f"conv needs a 4-D (N, C, H, W) input, got shape {tuple(shape)}")
        a = self.attrs
        n, c, h, w = shape
        if c % a["groups"]:
            raise ValueError(f"conv: {c} input channels are not divisible by groups "
                             f"{a['groups']}")
        kh, kw = a["kernel"]
        return ConvSpec(n=n, c=c, h=h, w=w, m=a["out_channels"], kh=kh, kw=kw,
                        stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                        groups=a["groups"], dtype=dtype)

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        spec = self.spec(shapes[0])
        out = {"weight": spec.weight_shape}
        if self.attrs["bias"]:
            out["bias"] = (spec.m,)
        return out

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        return [self.spec(shapes[0]).output_shape("NCHW")]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Prepares the weights on every call: its memory is the algorithm's, and ``workspace``
        (none declared) must be empty; ``out`` is written into."""
        x = xs[0]
        spec = self.spec(x.shape, x.dtype.name)
        outs = self._outputs(xs, weights, [spec.output_shape("NCHW")], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        algorithm = default_algorithm(spec)
        prepared = algorithm.prepare(weights["weight"], weights.get("bias"), spec)
        x_in = convert(x, "NCHW", algorithm.input_layout)
        if algorithm.output_layout == "NCHW":
            return [algorithm.run(x_in, prepared, spec, out=outs[0])]
        return [convert(algorithm.run(x_in, prepared, spec), algorithm.output_layout, "NCHW",
                        out=outs[0])]
