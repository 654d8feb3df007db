"""Padding (ONNX Pad): TF-style "same" padding written as its own node before a convolution
(timm's tf_* models), and the reflection padding of style-transfer and super-resolution nets.

The output is written region by region straight from the input: along each axis the output
is the leading pad, the input and the trailing pad, and every combination of those segments is
one block copy (the pads' sources are the input's edge row, broadcast, or its mirrored rows, a
strided view) or one fill with the constant. Nothing is allocated beyond the output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, logical_shape, small_ufunc_buffers
from .checks import choice, int_list, real
from .registry import register

#: The logical (N, C, H, W) axis each axis of an NHWC array holds.
STORED_NHWC = (0, 2, 3, 1)
MODES = ("constant", "reflect", "edge")
#: One segment of an output axis: (the output's slice, the input's slice or None for the fill).
Segment = tuple[slice, slice | None]


def segments(dim: int, before: int, after: int, mode: str) -> list[Segment]:
    """The non-empty segments of one axis of ``dim`` padded by ``before`` and ``after`` (a
    negative pad, constant mode only, crops)."""
    if before < 0 or after < 0:
        start, stop = max(0, -before), dim - max(0, -after)
        lead, trail = max(0, before), max(0, after)
        out = [(slice(0, lead), None)] if lead else []
        out.append((slice(lead, lead + stop - start), slice(start, stop)))
        if trail:
            out.append((slice(lead + stop - start, lead + stop - start + trail), None))
        return out
    out: list[Segment] = []
    if before:
        source = {"constant": None, "edge": slice(0, 1),
                  "reflect": slice(before, 0, -1)}[mode]       # rows before, ..., 1
        out.append((slice(0, before), source))
    out.append((slice(before, before + dim), slice(0, dim)))
    if after:
        stop = dim - 2 - after
        source = {"constant": None, "edge": slice(dim - 1, dim),
                  "reflect": slice(dim - 2, stop if stop >= 0 else None, -1)}[mode]
        out.append((slice(before + dim, before + dim + after), source))
    return out


@register
class Pad(Operator):
    op = "pad"
    summary = ("pads every axis: with a constant (negative pads crop: NASNet's shift by one), "
               "the input's mirror image (reflect: the edge not repeated) or its edge repeated")
    layouts = ("NCHW", "NHWC")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"pads": None, "mode": "constant", "value": 0.0}

    def _check_attrs(self) -> None:
        a = self.attrs
        if a["pads"] is None:
            raise ValueError("pad: pads is required")
        a["pads"] = int_list(a["pads"], "pad: pads")
        if len(a["pads"]) % 2:
            raise ValueError(f"pad: pads {list(a['pads'])} must hold a begin and an end for "
                             "every axis")
        a["mode"] = choice(a["mode"], "pad: mode", MODES)
        value = a["value"]      # -inf too: TF-style same padding before a max pool
        if isinstance(value, float | np.floating) and math.isinf(value):
            a["value"] = float(value)
        else:
            a["value"] = real(value, "pad: value")

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        pads = self.attrs["pads"]
        rank = len(shape)
        if len(pads) != 2 * rank:
            raise ValueError(f"pad: {len(pads)} pads do not fit a rank-{rank} input (it needs "
                             f"{2 * rank})")
        if min(pads) < 0 and self.attrs["mode"] != "constant":
            raise ValueError(f"pad: negative pads {list(pads)} (cropping) are only supported in "
                             "constant mode")
        if self.attrs["mode"] == "reflect":
            for axis, d in enumerate(shape):
                if max(pads[axis], pads[axis + rank]) > d - 1:
                    raise ValueError(f"pad: reflect pads of axis {axis} ({pads[axis]}, "
                                     f"{pads[axis + rank]}) must be smaller than its size {d}")
        out = tuple(d + pads[i] + pads[i + rank] for i, d in enumerate(shape))
        if min(out, default=1) < 1 or any(d + min(pads[i], 0) + min(pads[i + rank], 0) < 1
                                          for i, d in enumerate(shape)):
            raise ValueError(f"pad: pads {list(pads)} crop all of an axis of shape {shape}")
        return [out]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        logical = self.output_shapes([logical_shape(x, layout)])[0]
        rank = x.ndim
        # the logical axis each stored axis holds
        axes = STORED_NHWC if layout == "NHWC" and rank == 4 else tuple(range(rank))
        stored = tuple(logical[a] for a in axes)
        outs = self._outputs(xs, weights, [stored], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        y = outs[0]
        pads, mode = self.attrs["pads"], self.attrs["mode"]
        per_axis = [segments(x.shape[i], pads[a], pads[a + rank], mode)
                    for i, a in enumerate(axes)]
        with small_ufunc_buffers():
            for combination in itertools.product(*per_axis):
                target = y[tuple(s[0] for s in combination)]
                sources = [s[1] for s in combination]
                if any(s is None for s in sources):
                    target.fill(self.attrs["value"])
                else:
                    np.copyto(target, x[tuple(sources)])
        return outs
