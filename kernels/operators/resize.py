"""Resizing H and W (ONNX Resize and Upsample): the decoders of segmentation networks (FCN,
DeepLabV3, U-Nets) and feature pyramids (HRNet) upsample by nearest neighbour or bilinear
interpolation, with the coordinate conventions PyTorch exports.

Separable and row by row: each output row is its source rows (one for nearest, two for linear),
each copied into a contiguous input-row buffer (N, C, W_in: `np.take` would copy a strided one
itself) and interpolated along W into row buffers (N, C, W_out), so the workspace is a few rows
whatever the scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, logical_shape, small_ufunc_buffers
from .checks import choice, int_list
from .registry import register

MODES = ("nearest", "linear")
#: ONNX's coordinate_transformation_mode values convplan implements (not TensorFlow's
#: tf_crop_and_resize and tf_half_pixel_for_nn, deprecated since opset 13).
COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coordinate(index: int, out_size: int, in_size: int, scale: float, mode: str,
                      dtype: np.dtype) -> np.floating:
    """Where output ``index`` lies in the input, in the activations' dtype (float32, as
    onnxruntime computes it for float32 models). Scalars: a run allocates no array for it."""
    t = dtype.type
    x, half = t(index), t(0.5)
    if mode == "half_pixel":
        return (x + half) / t(scale) - half
    if mode == "pytorch_half_pixel":
        return (x + half) / t(scale) - half if out_size > 1 else t(0)
    if mode == "align_corners":
        return x * t((in_size - 1) / (out_size - 1)) if out_size > 1 else t(0)
    return x / t(scale)                             # asymmetric


def nearest_index(coordinate: np.floating, in_size: int, rounding: str) -> int:
    """The input index a coordinate picks, within the input."""
    c = float(coordinate)
    if rounding == "floor":
        index = math.floor(c)
    elif rounding == "ceil":
        index = math.ceil(c)
    elif c - math.floor(c) == 0.5:
        index = math.floor(c) if rounding == "round_prefer_floor" else math.ceil(c)
    else:
        index = math.floor(c + 0.5)
    return min(max(index, 0), in_size - 1)


def linear_tap(coordinate: np.floating, in_size: int) -> tuple[int, int, np.floating]:
    """(lower index, upper index, weight of the upper), clamped to the input as ONNX's linear
    mode does."""
    clamped = min(max(coordinate, coordinate.dtype.type(0)), coordinate.dtype.type(in_size - 1))
    lower = math.floor(clamped)
    return lower, min(lower + 1, in_size - 1), clamped - clamped.dtype.type(lower)


@register
class Resize(Operator):
    op = "resize"
    summary = ("resizes H and W by nearest neighbour or bilinear interpolation, by scales "
               "(output floor(size * scale)) or to sizes, with ONNX's coordinate modes")
    layouts = ("NCHW", "NHWC")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"scales": None, "sizes": None, "mode": "nearest",
                "coordinates": "half_pixel", "nearest": "round_prefer_floor"}

    def _check_attrs(self) -> None:
        self._tie_free: set[tuple[int, int, int, int]] = set()
        a = self.attrs
        if (a["scales"] is None) == (a["sizes"] is None):
            raise ValueError("resize: give exactly one of scales and sizes")
        if a["scales"] is not None:
            scales = a["scales"]
            if isinstance(scales, str | bytes) or not isinstance(scales, Sequence) \
                    or len(scales) != 2 or any(isinstance(s, bool) or not isinstance(
                        s, int | float) or not math.isfinite(s) or s <= 0 for s in scales):
                raise ValueError(f"resize: scales must be two positive numbers (H, W), got "
                                 f"{scales!r}")
            a["scales"] = (float(scales[0]), float(scales[1]))
        else:
            a["sizes"] = int_list(a["sizes"], "resize: sizes", minimum=1)
            if len(a["sizes"]) != 2:
                raise ValueError(f"resize: sizes must be two (H, W), got {list(a['sizes'])}")
        a["mode"] = choice(a["mode"], "resize: mode", MODES)
        a["coordinates"] = choice(a["coordinates"], "resize: coordinates", COORDINATES)
        a["nearest"] = choice(a["nearest"], "resize: nearest", NEAREST)

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        if len(shape) != 4:
            raise ValueError(f"resize needs a 4-D (N, C, H, W) input, got shape {shape}")
        n, c, h, w = shape
        if self.attrs["sizes"] is not None:
            oh, ow = self.attrs["sizes"]
        else:
            sh, sw = self.attrs["scales"]
            oh, ow = math.floor(h * sh), math.floor(w * sw)
            if oh < 1 or ow < 1:
                raise ValueError(f"resize: scales {self.attrs['scales']} make an empty output "
                                 f"of {h}x{w}")
        if self.attrs["mode"] == "nearest" and (h, w, oh, ow) not in self._tie_free:
            self._refuse_ties(shape, (n, c, oh, ow))
            self._tie_free.add((h, w, oh, ow))     # checked once, not on every run
        return [(n, c, oh, ow)]

    def _refuse_ties(self, shape: Shape, out: Shape) -> None:
        """Refuse a nearest resize whose source coordinate for some output row or column
        sits on a rounding boundary that float32 and exact arithmetic decide differently
        (sizes 2 from 7 with asymmetric coordinates: 1 / (2/7) is 3.5, or 3.4999998):
        engines then disagree, and convplan cannot promise either answer."""
        scales = self._scales(shape, out)
        for axis, what in ((2, "row"), (3, "column")):
            size, length = shape[axis], out[axis]
            for i in range(length):
                picked = {nearest_index(source_coordinate(
                    i, length, size, scales[axis - 2], self.attrs["coordinates"], np.dtype(t)),
                    size, self.attrs["nearest"]) for t in (np.float32, np.float64)}
                if len(picked) > 1:
                    raise ValueError(
                        f"resize: output {what} {i} of {length} (input {size}) falls on a "
                        f"rounding tie of nearest mode {self.attrs['nearest']!r} with "
                        f"{self.attrs['coordinates']!r} coordinates, which float32 and exact "
                        "arithmetic round to different inputs (engines disagree); refused")

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """An input row (N, C, W_in), output rows (N, C, W_out: one for nearest, three for
        linear), and the taps of the output columns ("taps", in float32 elements: one index
        (8 bytes) per column for nearest; two and a weight for linear)."""
        n, c, _, ow = self.output_shapes(shapes)[0]
        nearest = self.attrs["mode"] == "nearest"
        rows = {f"row{i}": (n, c, ow) for i in range(1 if nearest else 3)}
        return {"source": (n, c, shapes[0][3]), **rows, "taps": (2 * ow if nearest else 5 * ow,)}

    def _scales(self, shape: Shape, out: Shape) -> tuple[float, float]:
        """The scales the coordinates use: the given ones, else output over input."""
        if self.attrs["scales"] is not None:
            return self.attrs["scales"]
        return out[2] / shape[2], out[3] / shape[3]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        shape = logical_shape(x, layout)
        logical = self.output_shapes([shape])[0]
        nhwc = layout == "NHWC"
        n, c, oh, ow = logical
        outs = self._outputs(xs, weights, [(n, oh, ow, c) if nhwc else logical], inplace, out)
        ws = self._workspace(xs, weights, layout, outs, workspace)
        # both seen as (N, C, H, W): views
        xv = x.transpose(0, 3, 1, 2) if nhwc else x
        yv = outs[0].transpose(0, 3, 1, 2) if nhwc else outs[0]
        a = self.attrs
        sh, sw = self._scales(shape, logical)
        h, w = shape[2], shape[3]
        mode, dtype = a["coordinates"], x.dtype

        def row_at(i: int) -> np.floating:
            return source_coordinate(i, oh, h, sh, mode, dtype)

        # the columns' taps, written into the "taps" workspace (indices viewed as intp)
        taps = ws["taps"].reshape(-1)
        indices = taps[:(4 if dtype == np.float32 else 2) * ow].view(np.intp)
        source = ws["source"]
        with small_ufunc_buffers():
            if a["mode"] == "nearest":
                wi = indices[:ow]
                for j in range(ow):
                    wi[j] = nearest_index(source_coordinate(j, ow, w, sw, mode, dtype), w,
                                          a["nearest"])
                row, previous = ws["row0"], -1
                for i in range(oh):
                    r = nearest_index(row_at(i), h, a["nearest"])
                    if r != previous:
                        np.copyto(source, xv[:, :, r, :])
                        np.take(source, wi, axis=-1, out=row, mode="clip")
                        previous = r
                    np.copyto(yv[:, :, i, :], row)
                return outs
            w0, w1 = indices[:ow], indices[ow:2 * ow]
            fw = taps[indices.size * indices.itemsize // taps.itemsize:][:ow]
            for j in range(ow):
                w0[j], w1[j], fw[j] = linear_tap(source_coordinate(j, ow, w, sw, mode, dtype), w)
            scratch = ws["row1"]

            def along_w(r: int, dest: np.ndarray) -> None:
                """dest = input row r interpolated along W, through the scratch row."""
                np.copyto(source, xv[:, :, r, :])
                np.take(source, w0, axis=-1, out=scratch, mode="clip")
                np.take(source, w1, axis=-1, out=dest, mode="clip")
                np.subtract(dest, scratch, out=dest)
                np.multiply(dest, fw, out=dest)
                np.add(dest, scratch, out=dest)

            # the two source rows interpolated along W, kept while output rows still use them
            low, high = ws["row0"], ws["row2"]
            low_row = high_row = -1
            for i in range(oh):
                h0, h1, fh = linear_tap(row_at(i), h)
                if h0 != low_row:
                    if h0 == high_row:
                        low, high, low_row, high_row = high, low, high_row, low_row
                    else:
                        along_w(h0, low)
                        low_row = h0
                target = yv[:, :, i, :]
                if h1 == h0 or fh == 0:
                    np.copyto(target, low)
                    continue
                if h1 != high_row:
                    along_w(h1, high)
                    high_row = h1
                np.subtract(high, low, out=scratch)
                np.multiply(scratch, fh, out=scratch)
                np.add(low, scratch, out=target)
        return outs
