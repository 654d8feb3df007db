"""Pooling: max and average over kh x kw windows, and the global average before a classifier.

Like the convolution algorithms they never build a padded copy of the input: each kernel tap
updates the outputs whose window sees a real input element through strided views (`geometry`),
so padding simply takes no part in a max or a sum. Shapes follow ONNX and PyTorch, including
ceil_mode (which drops a last window that would start beyond the input and its leading pad).

In NCHW a window is separable: first every kernel column into a (channels, H, Wo) buffer, then
every kernel row from it, so kh + kw passes instead of kh * kw, and the row pass runs over whole
contiguous rows. When the column pass keeps the width (stride 1, "same" padding) each tap is one
flat shifted operation over the block, with the few columns that wrap into the next row saved
and restored around it. Channels go in blocks whose buffer stays within `BLOCK_BYTES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..geometry import Span, span, window_index
from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import flag
from .conv import padding4, pair
from .registry import register

#: Bytes of the column-pass buffer per block of channels (it stays in cache between passes).
BLOCK_BYTES = 256 * 1024


def pooled_size(size: int, kernel: int, stride: int, before: int, after: int, dilation: int,
                ceil_mode: bool) -> int:
    """Output length along one axis (0 when not even one window fits)."""
    reach = size + before + after - dilation * (kernel - 1) - 1
    if reach < 0:
        return 0
    out = (-(-reach // stride) if ceil_mode else reach // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def tap_spans(size: int, out: int, kernel: int, stride: int, before: int,
              dilation: int) -> list[Span]:
    """For each kernel tap, the outputs it reaches inside the real input (and where)."""
    return [span(size, out, stride, k * dilation - before) for k in range(kernel)]


def uncovered(spans: Sequence[Span], out: int) -> int | None:
    """The first output whose window holds no real input element, or None."""
    covered = sorted((s.o0, s.o1) for s in spans if s.count)
    reached = 0
    for o0, o1 in covered:
        if o0 > reached:
            return reached
        reached = max(reached, o1)
    return None if reached >= out else reached


class Pool2d(Operator):
    """Shared attributes and geometry of max and average pooling over a 4-D input."""

    layouts = ("NCHW", "NHWC")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"kernel": None, "stride": 1, "padding": 0, "ceil_mode": False}

    def _check_attrs(self) -> None:
        a, op = self.attrs, self.op
        if a["kernel"] is None:
            raise ValueError(f"{op}: kernel is required")
        a["kernel"] = pair(a["kernel"], f"{op}: kernel")
        a["stride"] = pair(a["stride"], f"{op}: stride")
        if "dilation" in a:
            a["dilation"] = pair(a["dilation"], f"{op}: dilation")
        try:
            a["padding"] = padding4(a["padding"])
        except ValueError as error:
            raise ValueError(f"{op}: {error}") from None
        a["ceil_mode"] = flag(a["ceil_mode"], f"{op}: ceil_mode")

    def _dilation(self) -> tuple[int, int]:
        return self.attrs.get("dilation", (1, 1))

    def spans(self, shape: Shape) -> tuple[list[Span], list[Span], int, int]:
        """Row spans per kernel row, column spans per kernel column, and the output size."""
        if len(shape) != 4:
            raise ValueError(f"{self.op} needs a 4-D (N, C, H, W) input, got shape "
                             f"{tuple(shape)}")
        a = self.attrs
        top, left, bottom, right = a["padding"]
        geometry = []
        for size, k, s, d, before, after, axis in (
                (shape[2], a["kernel"][0], a["stride"][0], self._dilation()[0], top, bottom,
                 "rows"),
                (shape[3], a["kernel"][1], a["stride"][1], self._dilation()[1], left, right,
                 "columns")):
            out = pooled_size(size, k, s, before, after, d, a["ceil_mode"])
            if out < 1:
                raise ValueError(f"{self.op}: the {k}-tap window (dilation {d}) does not fit "
                                 f"in {size} {axis} padded by {before}+{after}")
            spans = tap_spans(size, out, k, s, before, d)
            missing = uncovered(spans, out)
            if missing is not None:
                raise ValueError(f"{self.op}: the window of output {axis[:-1]} {missing} "
                                 f"covers only padding ({size} {axis} padded by "
                                 f"{before}+{after}, kernel {k}, stride {s}, dilation {d})")
            geometry.append((spans, out))
        (rows, ho), (cols, wo) = geometry
        return rows, cols, ho, wo

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        _, _, ho, wo = self.spans(shapes[0])
        n, c = shapes[0][:2]
        return [(n, c, ho, wo)]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        channels_last = layout == "NHWC"
        logical = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if channels_last else x.shape
        rows, cols, ho, wo = self.spans(logical)
        n, c = logical[:2]
        outs = self._outputs(xs, weights, [(n, ho, wo, c) if channels_last else (n, c, ho, wo)],
                             inplace, out)
        ws = self._workspace(xs, weights, layout, outs, workspace)
        with small_ufunc_buffers():
            self._pool(x, outs[0], rows, cols, channels_last, ws)
        return outs

    def _pool(self, x: np.ndarray, out: np.ndarray, rows: list[Span], cols: list[Span],
              channels_last: bool, ws: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- the separable NCHW path -------------------------------------------------------------
    def _buffers(self, shape: Shape) -> tuple[int, int]:
        """(channels per block, columns saved around a flat tap) for an NCHW input."""
        _, c, h, w = shape
        _, cols, _, wo = self.spans(shape)
        block = max(1, min(c, BLOCK_BYTES // (4 * h * wo)))
        counts = [s.count for s in cols if s.count]
        edge = wo - min(counts) if wo == w and self.attrs["stride"][1] == 1 else 0
        return block, edge

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """NCHW: the column pass's "buffer" and, when a tap is one flat operation, the
        "saved" columns around it; NHWC needs none."""
        if layout == "NHWC":
            return {}
        h = shapes[0][2]
        _, _, _, wo = self.spans(shapes[0])
        block, edge = self._buffers(shapes[0])
        return {"buffer": (block * h * wo,), **({"saved": (block * h * edge,)} if edge else {})}

    def _separable(self, x: np.ndarray, out: np.ndarray, rows: list[Span], cols: list[Span],
                   ufunc: np.ufunc, identity: float, ws: dict[str, np.ndarray]) -> None:
        n, c, h, _ = x.shape
        wo = out.shape[3]
        block, edge = self._buffers(x.shape)
        buffer, saved = ws["buffer"], ws.get("saved")
        for i in range(n):
            for c0 in range(0, c, block):
                cb = min(block, c - c0)
                xb, ob = x[i, c0:c0 + cb], out[i, c0:c0 + cb]
                t = buffer[:cb * h * wo].reshape(cb, h, wo)
                t.fill(identity)
                for s in cols:
                    if not s.count:
                        continue
                    if saved is not None:
                        self._flat_tap(xb, t, s, ufunc, saved[:cb * h * edge])
                    else:
                        view = t[:, :, s.out]
                        ufunc(view, xb[:, :, s.inp], out=view)
                ob.fill(identity)
                for r in rows:
                    if r.count:
                        view = ob[:, r.out, :]
                        ufunc(view, t[:, r.inp, :], out=view)

    @staticmethod
    def _flat_tap(xb: np.ndarray, t: np.ndarray, s: Span, ufunc: np.ufunc,
                  saved: np.ndarray) -> None:
        """One column tap when input and buffer rows have one pitch: a single flat operation
        ``t[k] op= x[k + shift]``; the columns outside the tap's span (which would read the
        neighbouring row) are saved before and restored after."""
        cb, h, w = t.shape
        shift = s.i0 - s.o0
        left, right = s.o0, w - s.o1
        keep = [(slice(0, left), left), (slice(s.o1, w), right)]
        offset = 0
        for cols, width in keep:
            if width:
                np.copyto(saved[offset:offset + cb * h * width].reshape(cb, h, width),
                          t[:, :, cols])
            offset += cb * h * width
        flat_t, flat_x = t.reshape(-1), xb.reshape(-1)
        begin, end = s.o0, cb * h * w - right
        dst = flat_t[begin:end]
        ufunc(dst, flat_x[begin + shift:end + shift], out=dst)
        offset = 0
        for cols, width in keep:
            if width:
                np.copyto(t[:, :, cols],
                          saved[offset:offset + cb * h * width].reshape(cb, h, width))
            offset += cb * h * width


def taps(rows: list[Span], cols: list[Span],
         channels_last: bool) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """(output index, input index) of every tap that reaches a real input element."""
    found = []
    for r in rows:
        for c in cols:
            if r.count and c.count:
                found.append(((slice(None), *window_index(r.out, c.out, channels_last)),
                              (slice(None), *window_index(r.inp, c.inp, channels_last))))
    return found


@register
class MaxPool(Pool2d):
    op = "maxpool"
    summary = "largest element of each kh x kw window (padding never wins)"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {**super().attribute_defaults(), "dilation": 1}

    def _pool(self, x: np.ndarray, out: np.ndarray, rows: list[Span], cols: list[Span],
              channels_last: bool, ws: dict[str, np.ndarray]) -> None:
        if not channels_last:
            self._separable(x, out, rows, cols, np.maximum, -np.inf, ws)
            return
        out.fill(-np.inf)
        for o, i in taps(rows, cols, channels_last):
            view = out[o]
            np.maximum(view, x[i], out=view)


@register
class AvgPool(Pool2d):
    op = "avgpool"
    summary = ("mean of each kh x kw window; the divisor counts the real input elements, or "
               "with count_include_pad the window clipped to the padded input")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {**super().attribute_defaults(), "count_include_pad": False}

    def _check_attrs(self) -> None:
        super()._check_attrs()
        self.attrs["count_include_pad"] = flag(self.attrs["count_include_pad"],
                                               "avgpool: count_include_pad")

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """The pooling's buffers, and the divisor: its counts per row and per column, and
        their outer product."""
        _, _, ho, wo = self.spans(shapes[0])
        return {**super().workspace_shapes(shapes, layout), "row_counts": (ho,),
                "col_counts": (wo,), "divisor": (ho, wo)}

    def _counts(self, spans: list[Span], counts: np.ndarray, size: int, before: int,
                after: int, stride: int) -> np.ndarray:
        """How many taps of each output's window the divisor counts along one axis, written
        into ``counts`` (one per output)."""
        counts.fill(0)
        if self.attrs["count_include_pad"]:
            # the padded input as the input: taps landing in the padding count too
            spans = tap_spans(size + before + after, counts.size, len(spans), stride, 0, 1)
        for s in spans:
            counts[s.out] += 1
        return counts

    def _pool(self, x: np.ndarray, out: np.ndarray, rows: list[Span], cols: list[Span],
              channels_last: bool, ws: dict[str, np.ndarray]) -> None:
        a = self.attrs
        top, left, bottom, right = a["padding"]
        h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
        if channels_last:
            out.fill(0)
            for o, i in taps(rows, cols, channels_last):
                view = out[o]
                np.add(view, x[i], out=view)
        else:
            self._separable(x, out, rows, cols, np.add, 0.0, ws)
        row_counts = self._counts(rows, ws["row_counts"], h, top, bottom, a["stride"][0])
        col_counts = self._counts(cols, ws["col_counts"], w, left, right, a["stride"][1])
        divisor = np.multiply.outer(row_counts, col_counts, out=ws["divisor"])
        np.divide(out, divisor[:, :, None] if channels_last else divisor, out=out)


@register
class GlobalAvgPool(Operator):
    op = "globalavgpool"
    summary = "mean over H and W: (N, C, H, W) -> (N, C, 1, 1), before a classifier"
    layouts = ("NCHW", "NHWC")

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        if len(shape) != 4:
            raise ValueError(f"globalavgpool needs a 4-D (N, C, H, W) input, got shape {shape}")
        return [(shape[0], shape[1], 1, 1)]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        axes = (1, 2) if layout == "NHWC" else (2, 3)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        outs = self._outputs(xs, weights, [shape], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        with small_ufunc_buffers():
            np.mean(x, axis=axes, keepdims=True, out=outs[0])
        return outs
