"""The kn2 family: GEMMs over the un-lowered input, one per kernel tap, then shifted adds.

Each tap (r, s) contributes W[:, :, r, s] . In, displaced by (r*d - pad_top, s*d - pad_left).
They differ in how much of those partial results they hold at once:
kn2row / kn2col all K*K of them, kn2row-as one (M x H*W), kn2row-aa none.
All need stride 1 (with a larger stride they would compute outputs nobody reads).
"""

from __future__ import annotations

from math import ceil

import numpy as np

from ..base import ConvAlgorithm
from ..blas import gemm
from ..geometry import add_window, as_matrix, col_span, row_span, window_index
from ..registry import register
from ..spec import ConvSpec


class _Kn2Base(ConvAlgorithm):
    limits = "stride 1; any padding, dilation, groups"

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        if spec.stride != (1, 1):
            return "the kn2 family needs stride 1"
        return None


@register
class Kn2row(_Kn2Base):
    """kn2row: ONE GEMM of all K*K weight slices stacked, T = Wstack[K*K*M x C] . In[C x H*W],
    then shift-add the K*K partial planes into the output."""

    name = "kn2row"
    input_layout = output_layout = "NCHW"
    summary = "one GEMM K*K*M x HW x C, then K*K shifted adds"
    workspace_formula = "kh * kw * (M/g) * H * W"
    weight_order = (0, 3, 4, 1, 2)  # (g, kh, kw, mg, cg)

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"partials": (spec.kh, spec.kw, spec.mg, spec.h, spec.w)}

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order).reshape(spec.groups, -1, spec.cg)

    def _run_group(self, x, w, out, spec, ws) -> None:
        partials = ws["partials"]
        gemm(w, as_matrix(x, spec.cg, spec.h * spec.w),
             as_matrix(partials, spec.kh * spec.kw * spec.mg, spec.h * spec.w))
        for r in range(spec.kh):
            rows = row_span(spec, r)
            for s in range(spec.kw):
                add_window(out, partials[r, s], rows, col_span(spec, s))


@register
class Kn2col(_Kn2Base):
    """kn2col: the pixel-major form, T = In[H*W x C] . Wstack^T[C x K*K*M], then shift-add."""

    name = "kn2col"
    input_layout = output_layout = "NHWC"
    summary = "one GEMM HW x K*K*M x C, then K*K shifted adds"
    workspace_formula = "H * W * kh * kw * (M/g)"
    weight_order = (0, 2, 3, 4, 1)  # (g, cg, kh, kw, mg)

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"partials": (spec.h, spec.w, spec.kh, spec.kw, spec.mg)}

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order).reshape(spec.groups, spec.cg, -1)

    def _run_group(self, x, w, out, spec, ws) -> None:
        partials = ws["partials"]
        pixels = spec.h * spec.w
        gemm(as_matrix(x, pixels, spec.cg), w,
             as_matrix(partials, pixels, spec.kh * spec.kw * spec.mg))
        for r in range(spec.kh):
            rows = row_span(spec, r)
            for s in range(spec.kw):
                add_window(out, partials[:, :, r, s], rows, col_span(spec, s), channels_last=True)


@register
class Kn2rowAs(_Kn2Base):
    """kn2row-as (accumulate-shift): for each tap, GEMM W_rs[M x C] . In[C x HW] into ONE reused
    M x HW buffer, then add its shifted, clipped window into the output. O(M H W) workspace.

    Grouped layers run a block of groups per tap in one batched GEMM (the buffer then holds the
    block's M/g x HW planes, about `block_bytes`, never fewer than one group's): a depthwise or
    ShuffleNet layer would otherwise make groups x K*K tiny GEMM calls from Python."""

    name = "kn2row-as"
    input_layout = output_layout = "NCHW"
    summary = "per tap: GEMM M x HW x C into one buffer, shifted add"
    workspace_formula = "B * (M/g) * H * W, B = groups per block (1 .. g, ~256 KiB)"
    weight_order = (0, 3, 4, 1, 2)  # (g, kh, kw, mg, cg)
    block_bytes = 256 * 1024

    def group_block(self, spec: ConvSpec) -> int:
        """Groups whose partial planes one batched GEMM fills (1 without groups)."""
        plane = spec.mg * spec.h * spec.w * spec.itemsize
        return min(spec.groups, max(1, self.block_bytes // max(plane, 1)))

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"partial": (self.group_block(spec) * spec.mg, spec.h, spec.w)}

    def calls(self, spec: ConvSpec) -> int:
        """A GEMM and a shifted add per tap, per block of groups and image."""
        return spec.n * ceil(spec.groups / self.group_block(spec)) * spec.kh * spec.kw * 2

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order)

    def _run_image(self, x, w, out, spec, ws) -> None:
        block = self.group_block(spec)
        if block == 1:
            super()._run_image(x, w, out, spec, ws)
            return
        pixels, cg, mg = spec.h * spec.w, spec.cg, spec.mg
        x3 = np.reshape(x, (spec.groups, cg, pixels), copy=False)
        spans = [(r, s, row_span(spec, r), col_span(spec, s))
                 for r in range(spec.kh) for s in range(spec.kw)]
        for g0 in range(0, spec.groups, block):
            g1 = min(g0 + block, spec.groups)
            partial = ws["partial"][:(g1 - g0) * mg]
            p3 = np.reshape(partial, (g1 - g0, mg, pixels), copy=False)
            for r, s, rows, cols in spans:
                if rows.count and cols.count:
                    np.matmul(w[g0:g1, r, s], x3[g0:g1], out=p3)
                    add_window(out[g0 * mg:g1 * mg], partial, rows, cols)

    def _run_group(self, x, w, out, spec, ws) -> None:
        partial = ws["partial"][:spec.mg]
        pixels = spec.h * spec.w
        x2 = as_matrix(x, spec.cg, pixels)
        p2 = as_matrix(partial, spec.mg, pixels)
        for r in range(spec.kh):
            rows = row_span(spec, r)
            if not rows.count:
                continue
            for s in range(spec.kw):
                cols = col_span(spec, s)
                if not cols.count:
                    continue
                gemm(w[r, s], x2, p2)
                add_window(out, partial, rows, cols)


@register
class Kn2rowAa(_Kn2Base):
    """kn2row-aa (accumulate-accumulate): each tap's GEMM accumulates (beta = 1) straight into
    the output at its displaced position; no M x HW temporary exists.

    When the output is as wide as the input (``same`` padding) the displaced window of a block of
    rows is one flat strided matrix, so each tap is one GEMM per row block. Its row-edge
    wrap-around (the left/right columns of inner rows would read the neighbouring input row) is
    cancelled by saving those few output columns before the GEMM and restoring them after:
    O(M * rows_per_block * |column shift|) bytes. Otherwise each output row is its own GEMM.
    Rows are processed in blocks of about `block_bytes` of output so a block stays in cache
    across all K*K taps: the paper's locality edge. 1 MiB measured best (with 4 MiB) on the
    paper's layers, 1.2-1.6x faster than 256 KiB, and keeps the edge buffer small.
    """

    name = "kn2row-aa"
    tabulates_taps = True
    input_layout = output_layout = "NCHW"
    summary = "per tap: GEMM accumulates (beta=1) into the displaced output window"
    workspace_formula = "(M/g) * (R - 1) * max column shift, R = rows per block (a few KiB)"
    block_bytes = 1024 * 1024
    channels_last = False
    weight_order = (0, 3, 4, 1, 2)  # (g, kh, kw, mg, cg)

    def block_rows(self, spec: ConvSpec) -> int:
        """Output rows per block (1 when input and output rows differ in length)."""
        if spec.w != spec.wo:
            return 1
        row = spec.mg * spec.wo * spec.itemsize
        return max(1, min(spec.ho, ceil(self.block_bytes / row)))

    def _wrap(self, spec: ConvSpec) -> int:
        return max(spec.wo - col_span(spec, s).count for s in range(spec.kw))

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        rows, wrap = self.block_rows(spec) - 1, self._wrap(spec)
        if not (rows and wrap):
            return {}
        return {"edges": (rows, wrap, spec.mg) if self.channels_last else (spec.mg, rows, wrap)}

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order)

    def _run_group(self, x, w, out, spec, ws) -> None:
        wi, wo = spec.w, spec.wo
        last = self.channels_last
        pixels_in, pixels_out = spec.h * wi, spec.ho * wo
        x_flat = as_matrix(x, pixels_in, spec.cg) if last else as_matrix(x, spec.cg, pixels_in)
        out_flat = (as_matrix(out, pixels_out, spec.mg) if last
                    else as_matrix(out, spec.mg, pixels_out))
        edges = ws.get("edges")
        block = self.block_rows(spec)
        spans = [(r, s, row_span(spec, r), col_span(spec, s))
                 for r in range(spec.kh) for s in range(spec.kw)]
        for top in range(0, spec.ho, block):
            bottom = min(top + block, spec.ho)
            for r, s, rows, cols in spans:
                ya, yb = max(top, rows.o0), min(bottom, rows.o1)
                if ya >= yb or not cols.count:
                    continue
                x0, x1 = cols.o0, cols.o1
                length = (yb - ya - 1) * wo + (x1 - x0)
                o = slice(ya * wo + x0, ya * wo + x0 + length)
                i_start = (rows.i0 + ya - rows.o0) * wi + cols.i0
                i = slice(i_start, i_start + length)
                inner = yb - ya - 1  # rows whose edges the flat window wraps over
                left, right = x0, wo - x1
                # out[ya+1:yb, :x0] and out[ya:yb-1, x1:] (spatially) receive wrapped input
                saved = []
                if inner and left:
                    saved.append((window_index(slice(ya + 1, yb), slice(0, x0), last),
                                  window_index(slice(0, inner), slice(0, left), last)))
                if inner and right:
                    saved.append((window_index(slice(ya, yb - 1), slice(x1, wo), last),
                                  window_index(slice(0, inner), slice(left, left + right), last)))
                for place, keep in saved:
                    np.copyto(edges[keep], out[place])
                if last:
                    gemm(x_flat[i], w[r, s], out_flat[o], beta=1.0)
                else:
                    gemm(w[r, s], x_flat[:, i], out_flat[:, o], beta=1.0)
                for place, keep in saved:
                    np.copyto(out[place], edges[keep])


@register
class Kn2rowAaNhwc(Kn2rowAa):
    """kn2row-aa in the pixel-major layout: out[pixels, M] += In[displaced pixels, C] . W_rs^T."""

    name = "kn2row-aa-nhwc"
    input_layout = output_layout = "NHWC"
    summary = "kn2row-aa, pixel-major: GEMM HW x M x C per tap into the displaced output rows"
    channels_last = True
    weight_order = (0, 3, 4, 2, 1)  # (g, kh, kw, cg, mg)
