"""MEC (Cho & Brand, 2017): lower the input along one spatial axis only, O(K C H W) workspace.

L[x, h, s, c] holds, for every output column x, the kw input columns under it, for all rows.
Output row y is then one GEMM with the contiguous window of L that starts at row y*stride:
Wo x (kh*kw*C), leading dimension H*kw*C. The Ho GEMMs are one strided-batched BLAS call.
"""

from __future__ import annotations

import numpy as np

from ..base import ConvAlgorithm
from ..blas import gemm_batched
from ..geometry import Span, col_span
from ..registry import register
from ..spec import ConvSpec


class _MecBase(ConvAlgorithm):
    limits = "vertical dilation 1; any stride, padding, horizontal dilation, groups"

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        if spec.dilation[0] != 1:
            return "MEC's row windows are contiguous only without vertical dilation"
        return None

    @staticmethod
    def lowered_rows(spec: ConvSpec) -> int:
        """Padded input rows any output row reads."""
        return (spec.ho - 1) * spec.stride[0] + spec.kh

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        return {"lowered": (spec.wo, self.lowered_rows(spec), spec.kw, spec.cg)}

    def _lower(self, x: np.ndarray, lowered: np.ndarray, spec: ConvSpec,
               channels_last: bool) -> None:
        top = spec.padding[0]
        h0, h1 = min(top, lowered.shape[1]), min(top + spec.h, lowered.shape[1])
        lowered[:, :h0] = 0
        lowered[:, h1:] = 0
        rows = Span(h0, h1, h0 - top, 1)
        for s in range(spec.kw):
            cols = col_span(spec, s)
            dst = lowered[:, :, s]  # (Wo, rows, C)
            if cols.count and rows.count:
                src = x[rows.inp, cols.inp, :] if channels_last else x[:, rows.inp, cols.inp]
                src = src.transpose(1, 0, 2) if channels_last else src.transpose(2, 1, 0)
                np.copyto(dst[cols.out, rows.out], src)
            dst[:cols.o0, rows.out] = 0
            dst[cols.o1:, rows.out] = 0

    def _windows(self, lowered: np.ndarray, spec: ConvSpec) -> np.ndarray:
        """(Ho, Wo, kh*kw*C) view: the L window of every output row, without copying."""
        row = spec.kw * spec.cg
        item = lowered.itemsize
        return np.lib.stride_tricks.as_strided(
            lowered, shape=(spec.ho, spec.wo, spec.kh * row),
            strides=(spec.stride[0] * row * item, lowered.strides[0], item), writeable=False)


@register
class MecCol(_MecBase):
    """mec-col: channel-major MEC, out[:, y, :] (M x Wo) = W[M x K*K*C] . L_y^T."""

    name = "mec-col"
    input_layout = output_layout = "NCHW"
    summary = "lower along columns (Wo x H*kw*C), Ho GEMMs M x Wo x K*K*C"
    workspace_formula = "Wo * ((Ho-1)*stride + kh) * kw * (C/g)"
    weight_order = (0, 1, 3, 4, 2)  # (g, mg, kh, kw, cg): (r, s, c) order

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order).reshape(spec.groups, spec.mg, -1)

    def _run_group(self, x, w, out, spec, ws) -> None:
        lowered = ws["lowered"]
        self._lower(x, lowered, spec, channels_last=False)
        windows = self._windows(lowered, spec).transpose(0, 2, 1)  # (Ho, K, Wo)
        gemm_batched(w[None], windows, out.transpose(1, 0, 2), beta=1.0)


@register
class MecRow(_MecBase):
    """mec-row: pixel-major MEC, out[y] (Wo x M) = L_y[Wo x K*K*C] . W^T."""

    name = "mec-row"
    input_layout = output_layout = "NHWC"
    summary = "lower along columns (Wo x H*kw*C), Ho GEMMs Wo x M x K*K*C"
    workspace_formula = "Wo * ((Ho-1)*stride + kh) * kw * (C/g)"
    weight_order = (0, 3, 4, 2, 1)  # (g, kh, kw, cg, mg): (r, s, c) x m

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order).reshape(spec.groups, -1, spec.mg)

    def _run_group(self, x, w, out, spec, ws) -> None:
        lowered = ws["lowered"]
        self._lower(x, lowered, spec, channels_last=True)
        gemm_batched(self._windows(lowered, spec), w[None], out, beta=1.0)
