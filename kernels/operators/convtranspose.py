"""The transposed convolution (ONNX ConvTranspose, "deconvolution"): the adjoint of a convolution,
as decoders, U-Nets and segmentation heads use it to upsample.

Output size per axis: (in - 1) * stride - pad_begin - pad_end + dilation * (k - 1) + 1
+ output_padding. Weights are ONNX's (C, M/groups, kh, kw): input channel first.

Two algorithms, each with its buffers declared as shapes (the same declaration sizes the arena's
slots and allocates them when none are given):

- ``col2im``: per image and group, one GEMM W^T [M/g*kh*kw x C/g] times x [C/g x H*W] into a
  column matrix, whose kh*kw taps are then added into their strided output windows.
  Workspace: the column matrix, (M/g) kh kw H W elements.
- ``zero-insert``: the input dilated by the stride (zeros between samples) and padded by
  dilation*(k-1) - pad (cropped where that is negative), then an ordinary stride-1
  convolution with the flipped, transposed kernel through a registered convolution algorithm
  (`kernels.conv.default_algorithm`'s choice). Workspace: the zero-inserted image, the inner
  algorithm's prepared weights and its own buffers.

The layer's ``algorithm`` attribute picks one: ``col2im`` by default (5-19x faster on the
decoder layers measured here), ``zero-insert`` where its smaller workspace matters (few input
channels to many outputs). The planner does not choose between them yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..base import TAP_TABLE_BYTES, ConvAlgorithm, Prepared, run_overhead_bytes
from ..blas import gemm
from ..conv import default_algorithm
from ..geometry import span
from ..spec import ConvSpec, Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import choice, integer
from .conv import padding4, pair
from .registry import register

ALGORITHMS = ("col2im", "zero-insert")


@dataclass(frozen=True)
class Transposed:
    """The geometry of one transposed convolution on an NCHW input."""

    n: int
    c: int
    h: int
    w: int
    m: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]      # top, left, bottom, right
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    ho: int
    wo: int

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def mg(self) -> int:
        return self.m // self.groups

    def lead(self, axis: int) -> int:
        """Zero rows (axis 0) or columns (1) before the first sample of the zero-inserted
        input: dilation*(k-1) - pad_begin; negative crops."""
        k = (self.kh, self.kw)[axis]
        return self.dilation[axis] * (k - 1) - self.padding[axis]

    def inner_spec(self, dtype: str) -> ConvSpec:
        """The stride-1, unpadded convolution of one zero-inserted image that gives this
        layer's output (its input is ho + dilation*(kh-1) high)."""
        dh, dw = self.dilation
        return ConvSpec(n=1, c=self.c, h=self.ho + dh * (self.kh - 1),
                        w=self.wo + dw * (self.kw - 1), m=self.m, kh=self.kh, kw=self.kw,
                        dilation=self.dilation, groups=self.groups, dtype=dtype)


@register
class ConvTranspose(Operator):
    op = "convtranspose"
    summary = ("2-D transposed convolution; weight (C, M/groups, kh, kw), bias (M,); "
               "algorithm col2im or zero-insert")
    algorithms: ClassVar[tuple[str, ...]] = ALGORITHMS

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"out_channels": None, "kernel": None, "stride": 1, "padding": 0,
                "output_padding": 0, "dilation": 1, "groups": 1, "bias": True,
                "algorithm": "col2im"}

    def _check_attrs(self) -> None:
        a = self.attrs
        if a["out_channels"] is None:
            raise ValueError("convtranspose: out_channels is required")
        a["out_channels"] = integer(a["out_channels"], "convtranspose: out_channels", minimum=1)
        if a["kernel"] is None:
            raise ValueError("convtranspose: kernel is required")
        a["kernel"] = pair(a["kernel"], "convtranspose: kernel")
        a["stride"] = pair(a["stride"], "convtranspose: stride")
        a["dilation"] = pair(a["dilation"], "convtranspose: dilation")
        try:
            a["padding"] = padding4(a["padding"])
        except ValueError as error:
            raise ValueError(f"convtranspose: {error}") from None
        op = a["output_padding"]
        op = (op, op) if isinstance(op, int | np.integer) else op
        if isinstance(op, str | bytes) or len(op) != 2:
            raise ValueError(f"convtranspose: output_padding must be an int or a pair of ints, "
                             f"got {a['output_padding']!r}")
        a["output_padding"] = tuple(integer(v, "convtranspose: output_padding", minimum=0)
                                    for v in op)
        if any(extra >= stride for extra, stride in zip(a["output_padding"], a["stride"],
                                                          strict=True)):
            # output_padding picks among the output sizes a stride maps onto one input size;
            # more would be output no input reaches (onnxruntime refuses it too).
            raise ValueError(f"convtranspose: output_padding {a['output_padding']} must be "
                             f"smaller than the stride {a['stride']} on each axis")
        a["groups"] = integer(a["groups"], "convtranspose: groups", minimum=1)
        if a["out_channels"] % a["groups"]:
            raise ValueError(f"convtranspose: out_channels {a['out_channels']} is not "
                             f"divisible by groups {a['groups']}")
        if not isinstance(a["bias"], bool | np.bool_):
            raise ValueError(f"convtranspose: bias must be a bool, got {a['bias']!r}")
        a["bias"] = bool(a["bias"])
        choice(a["algorithm"], "convtranspose: algorithm", ALGORITHMS)

    # -- shapes --------------------------------------------------------------------------------
    def geometry(self, shape: Shape) -> Transposed:
        """The layer's geometry for an NCHW input ``shape``; ValueError when it does not fit."""
        if len(shape) != 4:
            raise ValueError(f"convtranspose needs a 4-D (N, C, H, W) input, got shape "
                             f"{tuple(shape)}")
        a = self.attrs
        n, c, h, w = (int(d) for d in shape)
        if c % a["groups"]:
            raise ValueError(f"convtranspose: {c} input channels are not divisible by groups "
                             f"{a['groups']}")
        (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
        top, left, bottom, right = a["padding"]
        oph, opw = a["output_padding"]
        ho = (h - 1) * sh - top - bottom + dh * (kh - 1) + 1 + oph
        wo = (w - 1) * sw - left - right + dw * (kw - 1) + 1 + opw
        if ho < 1 or wo < 1:
            raise ValueError(f"convtranspose: padding {a['padding']} leaves no output of a "
                             f"{h}x{w} input (output {ho}x{wo})")
        return Transposed(n, c, h, w, a["out_channels"], kh, kw, (sh, sw), (top, left, bottom,
                          right), (oph, opw), (dh, dw), a["groups"], ho, wo)

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        g = self.geometry(shapes[0])
        out: dict[str, Shape] = {"weight": (g.c, g.mg, g.kh, g.kw)}
        if self.attrs["bias"]:
            out["bias"] = (g.m,)
        return out

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        g = self.geometry(shapes[0])
        return [(g.n, g.m, g.ho, g.wo)]

    # -- algorithms and memory -----------------------------------------------------------------
    def algorithm_for(self, shapes: Sequence[Shape], itemsize: int = 4) -> str:
        """The algorithm a run uses (the attribute; one place to ask, for a later choice by
        the planner)."""
        return str(self.attrs["algorithm"])

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        return self.algorithm_workspace_shapes(self.algorithm_for(shapes), shapes)

    def algorithm_workspace_shapes(self, algorithm: str, shapes: Sequence[Shape],
                                   dtype: str = "float32") -> dict[str, Shape]:
        """The buffers ``algorithm`` needs for these input shapes (reused across images)."""
        g = self.geometry(shapes[0])
        if algorithm == "col2im":
            return {"columns": (g.mg * g.kh * g.kw, g.h * g.w)}
        inner = g.inner_spec(dtype)
        algo = _inner_algorithm(inner)
        # The flipped weights are never the caller's array: the prepared form is always a copy.
        out: dict[str, Shape] = {"inserted": (1, g.c, inner.h, inner.w),
                                 "prepared": algo.prepared_shape(inner)}
        out.update({f"inner/{name}": shape
                    for name, shape in algo.workspace_shapes(inner).items()})
        return out

    def algorithm_overhead_bytes(self, algorithm: str, shapes: Sequence[Shape],
                                 itemsize: int) -> int:
        """The common allowance (one: zero-insert's inner convolution runs within it), plus
        the inner algorithm's table of taps when it keeps one."""
        total = run_overhead_bytes(itemsize)
        if algorithm == "zero-insert":
            inner = self.geometry(shapes[0]).inner_spec(_dtype(itemsize))
            if _inner_algorithm(inner).tabulates_taps:
                total += inner.kh * inner.kw * TAP_TABLE_BYTES
        return total

    def algorithm_workspace_bytes(self, algorithm: str, shapes: Sequence[Shape],
                                  itemsize: int) -> int:
        """What ``algorithm`` allocates beyond the output: its buffers and its overhead."""
        buffers = self.algorithm_workspace_shapes(algorithm, shapes, _dtype(itemsize))
        return (sum(math.prod(s) for s in buffers.values()) * itemsize
                + self.algorithm_overhead_bytes(algorithm, shapes, itemsize))

    def overhead_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        return self.algorithm_overhead_bytes(self.algorithm_for(shapes, itemsize), shapes,
                                             itemsize)

    def workspace_bytes(self, shapes: Sequence[Shape], itemsize: int) -> int:
        return self.algorithm_workspace_bytes(self.algorithm_for(shapes, itemsize), shapes,
                                              itemsize)

    # -- running -------------------------------------------------------------------------------
    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        if layout != "NCHW" or inplace:
            raise ValueError("convtranspose runs in NCHW, out of place")
        g = self.geometry(x.shape)
        self.check_weights([x.shape], weights)
        if not x.flags.c_contiguous:
            raise ValueError("convtranspose: the input must be C-contiguous")
        w = weights["weight"]
        bias = weights.get("bias")
        for what, a in (("weight", w), ("bias", bias)):
            if a is not None and (a.dtype != x.dtype or not a.flags.c_contiguous):
                raise ValueError(f"convtranspose: the {what} must be C-contiguous "
                                 f"{x.dtype}, got {a.dtype}")
        y = self._outputs(xs, weights, [(g.n, g.m, g.ho, g.wo)], inplace, out)[0]
        ws = self._workspace(xs, weights, layout, [y], workspace)
        with small_ufunc_buffers():
            if self.algorithm_for([x.shape], x.itemsize) == "col2im":
                _col2im(x, w, bias, y, g, ws["columns"])
            else:
                _zero_insert(x, w, bias, y, g, ws)
        return [y]


def _dtype(itemsize: int) -> str:
    return "float32" if itemsize == 4 else "float64"


def _inner_algorithm(spec: ConvSpec) -> ConvAlgorithm:
    """The convolution zero-insert runs: the project's default choice for that spec. Its
    prepared form must be a reordering, which zero-insert writes straight into its buffer."""
    algo = default_algorithm(spec)
    if algo.weight_order is None:
        raise ValueError(f"convtranspose: zero-insert cannot run {algo.name}, which "
                         "transforms its weights")
    return algo


def _col2im(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, y: np.ndarray,
            g: Transposed, columns: np.ndarray) -> None:
    """Each image and group: columns = W_g^T x_g, then every tap's rows of ``columns`` added
    into the output window that tap reaches (input i lands on i*stride + r*dilation - pad)."""
    cg, mg = g.cg, g.mg
    taps = columns.reshape(mg, g.kh, g.kw, g.h, g.w)
    rows = [span(g.ho, g.h, g.stride[0], r * g.dilation[0] - g.padding[0])
            for r in range(g.kh)]
    cols = [span(g.wo, g.w, g.stride[1], s * g.dilation[1] - g.padding[1])
            for s in range(g.kw)]
    for i in range(g.n):
        if bias is None:
            y[i].fill(0)
        else:
            np.copyto(y[i], bias[:, None, None])
        for group in range(g.groups):
            xg = x[i, group * cg:(group + 1) * cg].reshape(cg, g.h * g.w)
            wg = w[group * cg:(group + 1) * cg].reshape(cg, mg * g.kh * g.kw)
            gemm(wg.T, xg, columns)
            yg = y[i, group * mg:(group + 1) * mg]
            for r, rs in enumerate(rows):
                for s, cs in enumerate(cols):
                    if rs.count and cs.count:
                        window = yg[:, rs.inp, cs.inp]
                        np.add(window, taps[:, r, s, rs.out, cs.out], out=window)


def _zero_insert(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, y: np.ndarray,
                 g: Transposed, ws: Mapping[str, np.ndarray]) -> None:
    """Each image dilated by the stride into ``inserted`` (zeros elsewhere), then convolved
    with the flipped kernel, input and output channels swapped per group."""
    inner = g.inner_spec(x.dtype.name)
    algo = _inner_algorithm(inner)
    # (C, mg, kh, kw) -> (g, mg, cg, kh, kw) flipped: the inner convolution's grouped weights.
    flipped = w.reshape(g.groups, g.cg, g.mg, g.kh, g.kw).transpose(0, 2, 1, 3, 4)[..., ::-1,
                                                                                   ::-1]
    kept = ws["prepared"]
    grouped = flipped.shape
    np.copyto(kept.reshape([grouped[a] for a in algo.weight_order]),
              flipped.transpose(algo.weight_order))
    prepared = Prepared(algo.name, inner.weight_shape, g.groups, _read_only(kept),
                        None if bias is None else _read_only(bias))
    inserted = ws["inserted"]
    rows = span(inner.h, g.h, g.stride[0], g.lead(0))
    cols = span(inner.w, g.w, g.stride[1], g.lead(1))
    inner_ws = {name[len("inner/"):]: a for name, a in ws.items() if name.startswith("inner/")}
    for i in range(g.n):
        inserted.fill(0)
        inserted[0][:, rows.inp, cols.inp] = x[i][:, rows.out, cols.out]
        algo.run(inserted, prepared, inner, out=y[i:i + 1], workspace=inner_ws)


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view
