"""Fully connected layers and matrix products, straight into the output through BLAS.

2-D products go through `kernels.blas` like every convolution's GEMMs: one OpenBLAS, one thread
pool (a second library's idle threads spinning beside ours halved the speed at 2 threads).
Transposed operands are passed as transposed, never copied, so trans_a / trans_b cost nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..blas import gemm
from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import flag, integer, real, shape_of
from .registry import register


@register
class Gemm(Operator):
    op = "gemm"
    summary = ("fully connected layer: y = alpha * A' @ B' + beta * c, A the (M, K) activation, "
               "B (K, out_features) or its transpose, c (out_features,)")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"out_features": None, "alpha": 1.0, "beta": 1.0, "trans_a": False,
                "trans_b": False, "bias": True}

    def _check_attrs(self) -> None:
        a = self.attrs
        if a["out_features"] is None:
            raise ValueError("gemm: out_features is required")
        a["out_features"] = integer(a["out_features"], "gemm: out_features", minimum=1)
        a["alpha"] = real(a["alpha"], "gemm: alpha")
        a["beta"] = real(a["beta"], "gemm: beta")
        for name in ("trans_a", "trans_b", "bias"):
            a[name] = flag(a[name], f"gemm: {name}")

    def _mk(self, shape: Shape) -> tuple[int, int]:
        if len(shape) != 2:
            raise ValueError(f"gemm needs a 2-D input (flatten first), got shape {tuple(shape)}")
        m, k = shape
        return (k, m) if self.attrs["trans_a"] else (m, k)

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        _, k = self._mk(shapes[0])
        n = self.attrs["out_features"]
        out: dict[str, Shape] = {"b": (n, k) if self.attrs["trans_b"] else (k, n)}
        if self.attrs["bias"]:
            out["c"] = (n,)
        return out

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        m, _ = self._mk(shapes[0])
        return [(m, self.attrs["out_features"])]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        a = self.attrs
        x = xs[0]
        self.check_weights([x.shape], weights)
        lhs = x.T if a["trans_a"] else x
        rhs = weights["b"].T if a["trans_b"] else weights["b"]
        outs = self._outputs(xs, weights, [(lhs.shape[0], a["out_features"])], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        out = outs[0]
        with small_ufunc_buffers():
            if a["bias"]:
                np.copyto(out, weights["c"])
                if a["beta"] != 1:
                    np.multiply(out, a["beta"], out=out)
        gemm(lhs, rhs, out, alpha=a["alpha"], beta=1.0 if a["bias"] else 0.0)
        return outs


def matmul_shape(a: Shape, b: Shape, op: str = "matmul") -> Shape:
    """The shape of np.matmul(a, b): 1-D operands are promoted to matrices (and the added axis
    dropped again), leading dimensions broadcast."""
    if not a or not b:
        raise ValueError(f"{op}: operands must have rank >= 1, got shapes {a} and {b}")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ValueError(f"{op}: shapes {a} and {b} do not multiply ({a2[-1]} != {b2[-2]})")
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise ValueError(f"{op}: the batch dimensions of {a} and {b} do not broadcast") from None
    out = (*batch, a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = (*out[:-2], out[-1]) if len(b) > 1 else out[:-1]
    return tuple(out)


@register
class MatMul(Operator):
    op = "matmul"
    summary = ("matrix product with NumPy's broadcasting rules: two activations, or an "
               "activation times a constant (weight 'constant', shape constant_shape)")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"constant_shape": None}

    def _check_attrs(self) -> None:
        shape = self.attrs["constant_shape"]
        if shape is not None:
            self.attrs["constant_shape"] = shape_of(shape, "matmul: constant_shape")
            if not self.attrs["constant_shape"]:
                raise ValueError("matmul: constant_shape must have rank >= 1")

    @property
    def arity(self) -> tuple[int, int | None]:  # type: ignore[override]
        return (2, 2) if self.attrs["constant_shape"] is None else (1, 1)

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        shape = self.attrs["constant_shape"]
        return {} if shape is None else {"constant": shape}

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        rhs = shapes[1] if len(shapes) == 2 else self.attrs["constant_shape"]
        return [matmul_shape(tuple(shapes[0]), tuple(rhs))]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        lhs = xs[0]
        rhs = xs[1] if len(xs) == 2 else weights["constant"]
        outs = self._outputs(xs, weights, [matmul_shape(lhs.shape, rhs.shape)], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        if lhs.ndim == rhs.ndim == 2:
            gemm(lhs, rhs, outs[0])
            return outs
        with small_ufunc_buffers():     # batched: NumPy's BLAS (rare in CNNs)
            np.matmul(lhs, rhs, out=outs[0])
        return outs
