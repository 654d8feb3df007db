"""1x1 convolutions: the input already is the GEMM operand (no lowering at all)."""

from __future__ import annotations

import numpy as np

from ..base import ConvAlgorithm
from ..blas import gemm
from ..geometry import as_matrix
from ..registry import register
from ..spec import ConvSpec


class _PointwiseBase(ConvAlgorithm):
    limits = "kh = kw = 1, no padding; any stride, groups"

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        if (spec.kh, spec.kw) != (1, 1):
            return "conv1x1 needs a 1x1 kernel"
        if any(spec.padding):
            return "conv1x1 needs zero padding"
        return None

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        if spec.stride == (1, 1):
            return {}
        shape = (spec.cg, spec.ho, spec.wo) if self.input_layout == "NCHW" else (
            spec.ho, spec.wo, spec.cg)
        return {"subsampled": shape}

    def _subsample(self, x: np.ndarray, spec: ConvSpec, ws: dict[str, np.ndarray]) -> np.ndarray:
        if spec.stride == (1, 1):
            return x
        sh, sw = spec.stride
        rows, cols = slice(0, spec.ho * sh, sh), slice(0, spec.wo * sw, sw)
        view = x[:, rows, cols] if self.input_layout == "NCHW" else x[rows, cols, :]
        np.copyto(ws["subsampled"], view)
        return ws["subsampled"]


@register
class Conv1x1(_PointwiseBase):
    """conv1x1 (channel-major): out[M x HW] = W[M x C] . In[C x HW]."""

    name = "conv1x1"
    input_layout = output_layout = "NCHW"
    summary = "one GEMM M x HW x C on the input itself"
    workspace_formula = "0 (stride 1); (C/g) * Ho * Wo with stride > 1"
    weight_order = (0, 1, 2, 3, 4)  # a reshape: the weights are kept as they are

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.reshape(spec.groups, spec.mg, spec.cg)

    def _run_group(self, x, w, out, spec, ws) -> None:
        x = self._subsample(x, spec, ws)
        pixels = spec.ho * spec.wo
        gemm(w, as_matrix(x, spec.cg, pixels), as_matrix(out, spec.mg, pixels), beta=1.0)


@register
class Conv1x1Nhwc(_PointwiseBase):
    """conv1x1-nhwc (pixel-major): out[HW x M] = In[HW x C] . W^T[C x M]."""

    name = "conv1x1-nhwc"
    input_layout = output_layout = "NHWC"
    summary = "one GEMM HW x M x C on the input itself"
    workspace_formula = "0 (stride 1); Ho * Wo * (C/g) with stride > 1"
    weight_order = (0, 2, 1, 3, 4)  # (g, cg, mg): W^T

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return w.transpose(self.weight_order).reshape(spec.groups, spec.cg, spec.mg)

    def _run_group(self, x, w, out, spec, ws) -> None:
        x = self._subsample(x, spec, ws)
        pixels = spec.ho * spec.wo
        gemm(as_matrix(x, pixels, spec.cg), w, as_matrix(out, pixels, spec.mg), beta=1.0)
