"""Index arithmetic shared by every algorithm: which outputs a kernel tap touches, and where."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import ConvSpec


@dataclass(frozen=True)
class Span:
    """Outputs ``o0 <= o < o1`` read input ``i0 + (o - o0) * stride``; all others read padding."""

    o0: int
    o1: int
    i0: int
    stride: int

    @property
    def count(self) -> int:
        return self.o1 - self.o0

    @property
    def out(self) -> slice:
        return slice(self.o0, self.o1)

    @property
    def inp(self) -> slice:
        if self.count == 0:
            return slice(0, 0)
        return slice(self.i0, self.i0 + (self.count - 1) * self.stride + 1, self.stride)


def span(in_size: int, out_size: int, stride: int, offset: int) -> Span:
    """Outputs o with ``0 <= o * stride + offset < in_size``, as a `Span` (possibly empty)."""
    o0 = max(0, -(offset // stride))
    o1 = min(out_size, (in_size - 1 - offset) // stride + 1)
    if o1 <= o0:
        return Span(0, 0, 0, stride)
    return Span(o0, o1, o0 * stride + offset, stride)


def row_span(spec: ConvSpec, r: int) -> Span:
    """Output rows that kernel row ``r`` reads from real (unpadded) input rows."""
    return span(spec.h, spec.ho, spec.stride[0], r * spec.dilation[0] - spec.padding[0])


def col_span(spec: ConvSpec, s: int) -> Span:
    """Output columns that kernel column ``s`` reads from real (unpadded) input columns."""
    return span(spec.w, spec.wo, spec.stride[1], s * spec.dilation[1] - spec.padding[1])


def window_index(rows: slice, cols: slice, channels_last: bool) -> tuple[slice, slice, slice]:
    """Index of a spatial window in a (C, H, W) array, or in an (H, W, C) one."""
    everything = slice(None)
    return (rows, cols, everything) if channels_last else (everything, rows, cols)


def copy_window(dst: np.ndarray, src: np.ndarray, rows: Span, cols: Span,
                channels_last: bool = False) -> None:
    """Fill ``dst`` with the input window a tap reads, zeros where that window is padding.

    ``dst`` is (C, rows, cols) and ``src`` (C, H, W), or both channels-last. This is how every
    patch-building algorithm builds its patches: no padded copy of the input is ever made.
    """
    if rows.count and cols.count:
        np.copyto(dst[window_index(rows.out, cols.out, channels_last)],
                  src[window_index(rows.inp, cols.inp, channels_last)])
    everything = slice(None)
    for r, c in ((slice(0, rows.o0), everything), (slice(rows.o1, None), everything),
                 (rows.out, slice(0, cols.o0)), (rows.out, slice(cols.o1, None))):
        dst[window_index(r, c, channels_last)] = 0


def add_window(dst: np.ndarray, src: np.ndarray, rows: Span, cols: Span,
               channels_last: bool = False) -> None:
    """``dst[outputs the tap reaches] += src[the input positions they read]``, in place."""
    if rows.count and cols.count:
        view = dst[window_index(rows.out, cols.out, channels_last)]
        np.add(view, src[window_index(rows.inp, cols.inp, channels_last)], out=view)


def as_matrix(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``x`` viewed as a rows x cols matrix; an error (never a copy) when no such view exists."""
    return np.reshape(x, (rows, cols), copy=False)
