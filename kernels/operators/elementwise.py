"""Element-wise operators: activations and broadcasting arithmetic. Layout-agnostic.

None of them allocates a temporary the size of its input: every step writes into the output
(which may be the input itself), and hardswish, the one that needs x and f(x) at once, works
through a small fixed-size buffer (its workspace "gate").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import real, shape_of, size
from .registry import register

#: Elements per block of the operators that need a temporary alongside x (hardswish).
BLOCK = 4096


class Unary(Operator):
    """y = f(x), same shape; runs in any layout and may overwrite its input."""

    layouts = ("NCHW", "NHWC")
    inplace = True

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        return [tuple(shapes[0])]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        outs = self._outputs(xs, weights, [x.shape], inplace, out)
        ws = self._workspace(xs, weights, layout, outs, workspace)
        with small_ufunc_buffers():
            self._apply(x, outs[0], ws)
        return outs

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


@register
class Relu(Unary):
    op = "relu"
    summary = "max(x, 0)"

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        np.maximum(x, 0, out=out)


@register
class Clip(Unary):
    op = "clip"
    summary = "min(max(x, min), max); a missing bound is no bound (ReLU6 is clip 0..6)"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"min": None, "max": None}

    def _check_attrs(self) -> None:
        a = self.attrs
        a["min"] = real(a["min"], "clip: min", allow_none=True)
        a["max"] = real(a["max"], "clip: max", allow_none=True)
        if a["min"] is not None and a["max"] is not None and a["min"] > a["max"]:
            raise ValueError(f"clip: min {a['min']} is greater than max {a['max']}")

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        lo, hi = self.attrs["min"], self.attrs["max"]
        if lo is not None and hi is not None:
            np.clip(x, lo, hi, out=out)
        elif lo is not None:
            np.maximum(x, lo, out=out)
        elif hi is not None:
            np.minimum(x, hi, out=out)
        elif out is not x:
            np.copyto(out, x)


@register
class Sigmoid(Unary):
    op = "sigmoid"
    summary = "1 / (1 + exp(-x))"

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        # exp(-x) overflows to inf for very negative x, and 1 / inf = 0 is the right answer.
        with np.errstate(over="ignore"):
            np.negative(x, out=out)
            np.exp(out, out=out)
        np.add(out, 1, out=out)
        np.reciprocal(out, out=out)


@register
class HardSigmoid(Unary):
    op = "hardsigmoid"
    summary = "max(0, min(1, alpha * x + beta)), the piecewise-linear sigmoid of MobileNetV3"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"alpha": 0.2, "beta": 0.5}

    def _check_attrs(self) -> None:
        self.attrs["alpha"] = real(self.attrs["alpha"], "hardsigmoid: alpha")
        self.attrs["beta"] = real(self.attrs["beta"], "hardsigmoid: beta")

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        hard_sigmoid(x, self.attrs["alpha"], self.attrs["beta"], out)


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float, out: np.ndarray) -> None:
    np.multiply(x, alpha, out=out)
    np.add(out, beta, out=out)
    np.clip(out, 0, 1, out=out)


@register
class HardSwish(Unary):
    op = "hardswish"
    summary = "x * hardsigmoid(x) with alpha 1/6, beta 0.5 (MobileNetV3's activation)"

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        return {"gate": (min(size(shapes[0]), BLOCK),)}

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        buffer = ws["gate"]
        for xb, ob in blocks(x, out):
            gate = buffer[:xb.size]
            hard_sigmoid(xb, 1 / 6, 0.5, gate)
            np.multiply(xb, gate, out=ob)


def blocks(x: np.ndarray, out: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Matching flat blocks of at most `BLOCK` elements of ``x`` and ``out`` (same shape), as
    views: C-contiguous arrays are cut directly, others one leading index at a time."""
    if x.flags.c_contiguous and out.flags.c_contiguous:
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)
        for start in range(0, flat_x.size, BLOCK):
            yield flat_x[start:start + BLOCK], flat_out[start:start + BLOCK]
        return
    for i in range(x.shape[0]):
        yield from blocks(x[i], out[i])


class Broadcasting(Operator):
    """An arithmetic operator over activations with NumPy/ONNX multidirectional broadcasting,
    and an optional constant operand (weight "constant", shape ``constant_shape``) applied last.

    With the output written over xs[0] (when it has xs[0]'s shape) nothing is allocated.
    """

    inplace = True
    ufunc: np.ufunc
    #: (fewest, most) activations when there is no constant.
    activations: tuple[int, int | None] = (2, None)

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"constant_shape": None}

    def _check_attrs(self) -> None:
        shape = self.attrs["constant_shape"]
        if shape is not None:
            self.attrs["constant_shape"] = shape_of(shape, f"{self.op}: constant_shape")

    @property
    def arity(self) -> tuple[int, int | None]:  # type: ignore[override]
        lo, hi = self.activations
        if self.attrs["constant_shape"] is None:
            return lo, hi
        return lo - 1, None if hi is None else hi - 1

    @property
    def layouts(self) -> tuple[Layout, ...]:  # type: ignore[override]
        """A constant of more than one element has a logical (NCHW) shape: with NHWC storage
        it would broadcast against the wrong axes, so only then is NCHW required."""
        shape = self.attrs["constant_shape"]
        if shape is None or size(shape) == 1:
            return ("NCHW", "NHWC")
        return ("NCHW",)

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        shape = self.attrs["constant_shape"]
        return {} if shape is None else {"constant": shape}

    def _operand_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        operands = [tuple(s) for s in shapes]
        if self.attrs["constant_shape"] is not None:
            operands.append(self.attrs["constant_shape"])
        return operands

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        operands = self._operand_shapes(shapes)
        try:
            return [tuple(np.broadcast_shapes(*operands))]
        except ValueError:
            raise ValueError(f"{self.op}: operand shapes "
                             f"{', '.join(map(str, operands))} do not broadcast") from None

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        operands = list(xs)
        if self.attrs["constant_shape"] is not None:
            operands.append(weights["constant"])
        if layout == "NHWC" and any(x.ndim == 4 for x in xs):
            operands = [physical_nhwc(a, stored=i < len(xs)) for i, a in enumerate(operands)]
        shape = np.broadcast_shapes(*(a.shape for a in operands))
        outs = self._outputs(xs, weights, [shape], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        out = outs[0]
        with small_ufunc_buffers():
            self.ufunc(operands[0], operands[1], out=out)
            for operand in operands[2:]:
                self.ufunc(out, operand, out=out)
        return outs


def physical_nhwc(a: np.ndarray, stored: bool) -> np.ndarray:
    """An operand of an NHWC computation as it broadcasts physically: 4-D activations are
    already stored NHWC; lower-rank tensors have logical shapes, so they are viewed as 4-D
    (leading ones) and transposed. A view, never a copy."""
    if a.ndim > 4:
        raise ValueError(f"an NHWC computation cannot take a rank-{a.ndim} operand")
    if stored and a.ndim == 4:
        return a
    return a.reshape((1,) * (4 - a.ndim) + a.shape).transpose(0, 2, 3, 1)


@register
class Add(Broadcasting):
    op = "add"
    summary = "sum of two or more activations (residual connections), plus an optional constant"
    ufunc = np.add


@register
class Mul(Broadcasting):
    op = "mul"
    summary = "product of two or more activations (attention gates), times an optional constant"
    ufunc = np.multiply


@register
class Sub(Broadcasting):
    op = "sub"
    summary = "a - b: two activations, or an activation minus a constant (input normalisation)"
    ufunc = np.subtract
    activations = (2, 2)


@register
class Div(Broadcasting):
    op = "div"
    summary = "a / b: two activations, or an activation over a constant (input normalisation)"
    ufunc = np.divide
    activations = (2, 2)

