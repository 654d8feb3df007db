"""Winograd minimal filtering (Lavin & Gray, 2016) for 3x3 stride-1 convolutions.

F(m x m, 3 x 3) computes an m x m output tile from an alpha x alpha input tile (alpha = m + 2)
with alpha^2 multiplies per channel pair instead of 9 m^2: the weights are transformed once
(U = G g G^T, in `prepare`), each input tile is transformed (V = B^T d B), the alpha^2 products
become alpha^2 independent GEMMs (M x tiles x C, one batched BLAS call), and the result is
transformed back (Y = A^T M A). Fewer FLOPs, looser rounding (see `tolerance`).
"""

from __future__ import annotations

import hashlib
import json
from math import ceil

import numpy as np

from ..base import ConvAlgorithm
from ..blas import gemm, gemm_batched
from ..geometry import copy_window, span
from ..registry import register
from ..spec import ConvSpec

#: Elements per operand NumPy's einsum buffers, for two of the operands of the weight transform
#: (NumPy's NPY_BUFSIZE: einsum does not follow np.setbufsize), measured.
_EINSUM_BUFFER = 8192

_F2 = {
    "BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    "G": [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
    "AT": [[1, 1, 1, 0], [0, 1, -1, -1]],
}
_F4 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
          [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}


class _Winograd(ConvAlgorithm):
    input_layout = output_layout = "NCHW"
    limits = "3x3 kernel, stride 1, dilation 1; any padding, groups"
    tile: int
    matrices: dict[str, list[list[float]]]
    #: About how many bytes of float64 weights and transform `prepare` holds at once (one block
    #: of output channels; at least one channel).
    prepare_block_bytes = 1024 * 1024

    @property
    def alpha(self) -> int:
        return self.tile + 2

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        if (spec.kh, spec.kw) != (3, 3):
            return "Winograd F(m, 3) needs a 3x3 kernel"
        if spec.stride != (1, 1) or spec.dilation != (1, 1):
            return "Winograd needs stride 1 and dilation 1"
        return None

    def _tiles(self, spec: ConvSpec) -> tuple[int, int]:
        return ceil(spec.ho / self.tile), ceil(spec.wo / self.tile)

    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        a, m = self.alpha, self.tile
        th, tw = self._tiles(spec)
        t = th * tw
        return {
            # input tiles, then their transform V; later the output tiles Y
            "tiles": (max(a * a * spec.cg, m * m * spec.mg) * t,),
            # the half-transformed tiles (B^T d, then A^T M)
            "half": (max(a * a * spec.cg, m * a * spec.mg) * t,),
            "products": (a * a, spec.mg, t),
        }

    def prepared_form(self) -> str:
        """The transform U = G g G^T, named by a digest of G (a changed G is another form)."""
        digest = hashlib.sha256(json.dumps(self.matrices["G"]).encode()).hexdigest()[:12]
        return f"winograd F({self.tile}x{self.tile}, 3x3) G sha256:{digest}"

    def prepared_shape(self, spec: ConvSpec) -> tuple[int, ...]:
        """U per group and transformed tap: (groups, alpha * alpha, mg, cg)."""
        return (spec.groups, self.alpha * self.alpha, spec.mg, spec.cg)

    def prepare_block(self, spec: ConvSpec) -> int:
        """Output channels whose weights and transform `prepare` holds at once, in float64."""
        per_channel = (spec.kh * spec.kw + self.alpha**2) * spec.cg * 8
        return min(spec.mg, max(1, self.prepare_block_bytes // per_channel))

    def prepare_extra_bytes(self, spec: ConvSpec) -> int:
        """One block's float64 weights, their float64 transform, einsum's buffers, and G."""
        pairs = self.prepare_block(spec) * spec.cg
        taps = spec.kh * spec.kw
        buffers = 2 * min(taps * pairs, _EINSUM_BUFFER)
        return (pairs * (taps + self.alpha**2) + buffers + self.alpha * 3) * 8

    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        """U = G g G^T in float64, rounded once into the kept array, a block of output channels
        at a time: the float64 temporaries stay near `prepare_block_bytes`, where transforming
        all at once would need 3x the kept bytes."""
        a = self.alpha
        g = np.array(self.matrices["G"], dtype=np.float64)
        u = np.empty((spec.groups, a, a, spec.mg, spec.cg), dtype=spec.dtype)
        block = self.prepare_block(spec)
        transformed = np.empty((a, a, block, spec.cg), dtype=np.float64)
        for group in range(spec.groups):
            for m0 in range(0, spec.mg, block):
                m1 = min(m0 + block, spec.mg)
                part = transformed[:, :, :m1 - m0]
                np.einsum("ar,mcrs,bs->abmc", g, w[group, m0:m1].astype(np.float64), g,
                          out=part)
                u[group, :, :, m0:m1] = part
        return u.reshape(spec.groups, a * a, spec.mg, spec.cg)

    def _run_group(self, x, w, out, spec, ws) -> None:
        a, m = self.alpha, self.tile
        th, tw = self._tiles(spec)
        t = th * tw
        bt = np.asarray(self.matrices["BT"], dtype=spec.dtype)
        at = np.asarray(self.matrices["AT"], dtype=spec.dtype)
        cg, mg = spec.cg, spec.mg
        top, left = spec.padding[0], spec.padding[1]

        # gather the overlapping alpha x alpha input tiles: d[i, j, c, ty, tx]
        d = ws["tiles"][: a * a * cg * t].reshape(a, a, cg, th, tw)
        for i in range(a):
            rows = span(spec.h, th, m, i - top)
            for j in range(a):
                copy_window(d[i, j], x, rows, span(spec.w, tw, m, j - left))
        # V = B^T d B: first along i (one GEMM), then along j (a batched GEMM)
        half = ws["half"][: a * a * cg * t].reshape(a, a * cg * t)
        gemm(bt, d.reshape(a, a * cg * t), half)
        v = d.reshape(a, a, cg * t)
        gemm_batched(bt[None], half.reshape(a, a, cg * t), v)
        # the alpha^2 independent GEMMs: M[k] = U[k] . V[k]
        products = ws["products"]
        gemm_batched(w, v.reshape(a * a, cg, t), products)
        # Y = A^T M A
        half2 = ws["half"][: m * a * mg * t].reshape(m, a * mg * t)
        gemm(at, products.reshape(a, a * mg * t), half2)
        y = ws["tiles"][: m * m * mg * t].reshape(m, m, mg * t)
        gemm_batched(at[None], half2.reshape(m, a, mg * t), y)
        y = y.reshape(m, m, mg, th, tw)
        for i in range(m):
            rows_i = len(range(i, spec.ho, m))
            for j in range(m):
                cols_j = len(range(j, spec.wo, m))
                view = out[:, i::m, j::m]
                np.add(view, y[i, j, :, :rows_i, :cols_j], out=view)


@register
class Winograd2x2(_Winograd):
    """winograd-2x2-3x3: F(2x2, 3x3), 16 multiplies per 4 outputs (2.25x fewer)."""

    name = "winograd-2x2-3x3"
    summary = "F(2x2,3x3): 16 GEMMs M x tiles x C on 4x4 transformed tiles"
    workspace_formula = "(2*16*C/g + 16*M/g) * tiles, tiles = ceil(Ho/2)*ceil(Wo/2)"
    tolerance = 3e-5
    error_neighbourhood = 1
    tile = 2
    matrices = _F2


@register
class Winograd4x4(_Winograd):
    """winograd-4x4-3x3: F(4x4, 3x3), 36 multiplies per 16 outputs (4x fewer), less accurate."""

    name = "winograd-4x4-3x3"
    summary = "F(4x4,3x3): 36 GEMMs M x tiles x C on 6x6 transformed tiles"
    workspace_formula = "(2*max(36*C/g, 24*M/g) + 36*M/g) * tiles, tiles = ceil(Ho/4)*ceil(Wo/4)"
    tolerance = 5e-4
    error_neighbourhood = 3
    tile = 4
    matrices = _F4
