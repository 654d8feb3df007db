"""Patch-building algorithms: build the whole patch matrix, then one GEMM (im2col, im2row)."""

from __future__ import annotations

import numpy as np

from ..base import ConvAlgorithm
from ..blas import gemm
from ..geometry import as_matrix, col_span, copy_window, row_span
from ..registry import register
from ..spec import ConvSpec


@register
class Im2col(ConvAlgorithm):
    """im2col: P[(c, r, s), (y, x)] (K*K*C x Ho*Wo), then out = W[M x K*K*C] . P.

    The classical method (Caffe's): fastest GEMM shape, O(K^2 C Ho Wo) workspace. Padding is
    written as zeros straight into P, so no padded copy of the input is made.
    """

    name = "im2col"
    input_layout = output_layout = "NCHW"
    summary = "patch matrix (K*K*C x Ho*Wo), one GEMM M x HoWo x K*K*C"
    workspace_formula = "(C/g) * kh * kw * Ho * Wo"
    weight_order = (0, 1, 2, 3, 4)  # a reshape: the weights are kept as they are

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"patches": (spec.cg, spec.kh, spec.kw, spec.ho, spec.wo)}

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.reshape(spec.groups, spec.mg, spec.cg * spec.kh * spec.kw)

    def _run_group(self, x, w, out, spec, ws) -> None:
        patches = ws["patches"]
        for r in range(spec.kh):
            rows = row_span(spec, r)
            for s in range(spec.kw):
                copy_window(patches[:, r, s], x, rows, col_span(spec, s))
        k = spec.cg * spec.kh * spec.kw
        gemm(w, as_matrix(patches, k, spec.ho * spec.wo),
             as_matrix(out, spec.mg, spec.ho * spec.wo), beta=1.0)


@register
class Im2row(ConvAlgorithm):
    """im2row: P[(y, x), (r, s, c)] (Ho*Wo x K*K*C), then out = P . W^T, pixel-major (NHWC)."""

    name = "im2row"
    input_layout = output_layout = "NHWC"
    summary = "patch matrix (Ho*Wo x K*K*C), one GEMM HoWo x M x K*K*C"
    workspace_formula = "Ho * Wo * kh * kw * (C/g)"
    weight_order = (0, 3, 4, 2, 1)  # (g, kh, kw, cg, mg): the K*K*C x M right-hand operand

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"patches": (spec.ho, spec.wo, spec.kh, spec.kw, spec.cg)}

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order).reshape(spec.groups, -1, spec.mg)

    def _run_group(self, x, w, out, spec, ws) -> None:
        patches = ws["patches"]
        for r in range(spec.kh):
            rows = row_span(spec, r)
            for s in range(spec.kw):
                copy_window(patches[:, :, r, s], x, rows, col_span(spec, s), channels_last=True)
        pixels = spec.ho * spec.wo
        gemm(as_matrix(patches, pixels, spec.kh * spec.kw * spec.cg), w,
             as_matrix(out, pixels, spec.mg), beta=1.0)
