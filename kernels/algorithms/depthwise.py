"""Depthwise convolution (groups = C = M): no GEMM, a per-tap multiply-add vectorised over
channels and pixels."""

from __future__ import annotations

import numpy as np

from ..base import ConvAlgorithm
from ..geometry import col_span, row_span
from ..registry import register
from ..spec import ConvSpec


@register
class Depthwise(ConvAlgorithm):
    """out[c] += w[c, r, s] * (input window of tap (r, s))[c], a block of channels at a time so
    the product buffer stays small (about `block_bytes`)."""

    name = "depthwise"
    tabulates_taps = True
    input_layout = output_layout = "NCHW"
    summary = "per tap: channel-wise multiply-add of the shifted plane"
    workspace_formula = "min(C, 256 KiB / (Ho*Wo*itemsize)) * Ho * Wo"
    limits = "groups = C = M; any stride, padding, dilation"
    block_bytes = 256 * 1024
    weight_order = (0, 1, 2, 3, 4)  # a reshape: the weights are kept as they are

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        if not (spec.groups == spec.c == spec.m):
            return "depthwise needs groups = input channels = output channels"
        return None

    def channel_block(self, spec: ConvSpec) -> int:
        plane = spec.ho * spec.wo * spec.itemsize
        return min(spec.c, max(1, self.block_bytes // plane))

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"product": (self.channel_block(spec), spec.ho, spec.wo)}

    def calls(self, spec: ConvSpec) -> int:
        """A multiply and an add per tap, per block of channels and image."""
        return spec.n * -(-spec.c // self.channel_block(spec)) * spec.kh * spec.kw * 2

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.reshape(spec.c, spec.kh, spec.kw)

    def _run_image(self, x, w, out, spec, ws) -> None:
        product = ws["product"]
        block = product.shape[0]
        spans = [(r, s, row_span(spec, r), col_span(spec, s))
                 for r in range(spec.kh) for s in range(spec.kw)]
        for c0 in range(0, spec.c, block):
            c1 = min(c0 + block, spec.c)
            for r, s, rows, cols in spans:
                if not (rows.count and cols.count):
                    continue
                tmp = product[:c1 - c0, :rows.count, :cols.count]
                np.multiply(x[c0:c1, rows.inp, cols.inp], w[c0:c1, r, s, None, None], out=tmp)
                view = out[c0:c1, rows.out, cols.out]
                np.add(view, tmp, out=view)
