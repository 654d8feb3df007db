"""`direct`: the plainest formulation, one small contraction per kernel tap."""

from __future__ import annotations

import numpy as np

from ..base import ConvAlgorithm
from ..blas import gemm
from ..geometry import as_matrix, col_span, row_span
from ..registry import register
from ..spec import ConvSpec


@register
class Direct(ConvAlgorithm):
    """Sum over the kh*kw taps of W[:, :, r, s] times the input window that tap reads.

    Each tap copies its (strided) input window and multiplies it by an M x C weight slice.
    The readable baseline every other algorithm is a re-arrangement of.
    """

    name = "direct"
    input_layout = output_layout = "NCHW"
    summary = "per tap: copy the input window, (M x C) GEMM, add into the output"
    workspace_formula = "(C/g + M/g) * Ho * Wo"
    weight_order = (0, 3, 4, 1, 2)  # (g, kh, kw, mg, cg)

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"window": (spec.cg, spec.ho * spec.wo), "product": (spec.mg, spec.ho * spec.wo)}

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order)

    def _run_group(self, x, w, out, spec, ws) -> None:
        for r in range(spec.kh):
            rows = row_span(spec, r)
            for s in range(spec.kw):
                cols = col_span(spec, s)
                pixels = rows.count * cols.count
                if not pixels:
                    continue
                window = ws["window"][:, :pixels].reshape(spec.cg, rows.count, cols.count)
                np.copyto(window, x[:, rows.inp, cols.inp])
                product = ws["product"][:, :pixels]
                gemm(w[r, s], as_matrix(window, spec.cg, pixels), product)
                view = out[:, rows.out, cols.out]
                np.add(view, product.reshape(spec.mg, rows.count, cols.count), out=view)

