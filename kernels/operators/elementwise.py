"""Element-wise operators: activations and broadcasting arithmetic. Layout-agnostic.

None of them allocates a temporary the size of its input: every step writes into the output
(which may be the input itself), and the ones that need x and f(x) at once (hardswish, the
leaky and exponential units, PRelu, erf and GELU) work through small fixed-size buffers (their
workspaces), one block of the input at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import choice, real, shape_of, size
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
class Sqrt(Unary):
    op = "sqrt"
    summary = "the square root (NaN below 0): layer norms written out before ONNX had one"

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        with np.errstate(invalid="ignore"):
            np.sqrt(x, out=out)


@register
class Pow(Unary):
    op = "pow"
    summary = ("x ** exponent for a constant exponent (x * x for 2: the variance of a layer "
               "norm written out)")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"exponent": None}

    def _check_attrs(self) -> None:
        if self.attrs["exponent"] is None:
            raise ValueError("pow: exponent is required")
        self.attrs["exponent"] = real(self.attrs["exponent"], "pow: exponent")

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        exponent = self.attrs["exponent"]
        with np.errstate(all="ignore"):
            if exponent == 2:
                np.square(x, out=out)
            else:
                np.power(x, np.asarray(exponent, x.dtype), out=out)


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


def index_blocks(shape: Shape, limit: int) -> Iterator[tuple[slice, ...]]:
    """Indices (one slice per axis, so every axis stays) cutting an array of ``shape`` into
    blocks of at most ``limit`` elements in C order: whole trailing axes, and a run of indices
    of the axis before them."""
    inner, axis = 1, len(shape)
    while axis > 0 and inner * shape[axis - 1] <= limit:
        axis -= 1
        inner *= shape[axis]
    if axis == 0:
        yield tuple(slice(None) for _ in shape)
        return
    axis -= 1
    step = max(1, limit // inner)
    rest = (slice(None),) * (len(shape) - axis - 1)
    for lead in np.ndindex(*shape[:axis]):
        for start in range(0, shape[axis], step):
            yield (*(slice(i, i + 1) for i in lead),
                   slice(start, min(start + step, shape[axis])), *rest)



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



# -- activations working through blocks ------------------------------------------------------------
class Blocked(Unary):
    """An activation computed one block of at most `BLOCK` elements at a time through
    ``buffers`` block-sized workspaces ("block0", "block1" ...)."""

    buffers: ClassVar[int] = 1

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        block = (min(size(shapes[0]), BLOCK),)
        return {f"block{i}": block for i in range(self.buffers)}

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        for xb, ob in blocks(x, out):
            self._block(xb, ob, [ws[f"block{i}"][:xb.size] for i in range(self.buffers)])

    def _block(self, x: np.ndarray, out: np.ndarray, buffers: list[np.ndarray]) -> None:
        """``out`` = f(``x``) for one flat block (``out`` may be ``x``)."""
        raise NotImplementedError


@register
class LeakyRelu(Blocked):
    op = "leakyrelu"
    summary = "x for x >= 0, alpha * x below (CSPNet's activation)"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"alpha": 0.01}

    def _check_attrs(self) -> None:
        self.attrs["alpha"] = real(self.attrs["alpha"], "leakyrelu: alpha")

    def _block(self, x: np.ndarray, out: np.ndarray, buffers: list[np.ndarray]) -> None:
        """max(x, alpha x) when alpha <= 1, else min(x, alpha x): each picks x for x >= 0."""
        scaled = buffers[0]
        np.multiply(x, self.attrs["alpha"], out=scaled)
        (np.maximum if self.attrs["alpha"] <= 1 else np.minimum)(x, scaled, out=out)


def exponential_unit(x: np.ndarray, out: np.ndarray, alpha: float, gate: np.ndarray) -> None:
    """out = x for x > 0, alpha * (exp(x) - 1) below: max(x, 0) + alpha * expm1(min(x, 0))
    (expm1: exp(x) - 1 without the cancellation near 0)."""
    np.minimum(x, 0, out=gate)
    np.expm1(gate, out=gate)
    np.multiply(gate, alpha, out=gate)
    np.maximum(x, 0, out=out)
    np.add(out, gate, out=out)


@register
class Elu(Blocked):
    op = "elu"
    summary = "x for x > 0, alpha * (exp(x) - 1) below"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"alpha": 1.0}

    def _check_attrs(self) -> None:
        self.attrs["alpha"] = real(self.attrs["alpha"], "elu: alpha")

    def _block(self, x: np.ndarray, out: np.ndarray, buffers: list[np.ndarray]) -> None:
        exponential_unit(x, out, self.attrs["alpha"], buffers[0])


@register
class Selu(Blocked):
    op = "selu"
    summary = "gamma * elu(x, alpha), with ONNX's self-normalising defaults"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        # ONNX's defaults (float32 values of the SELU paper's constants)
        return {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}

    def _check_attrs(self) -> None:
        self.attrs["alpha"] = real(self.attrs["alpha"], "selu: alpha")
        self.attrs["gamma"] = real(self.attrs["gamma"], "selu: gamma")

    def _block(self, x: np.ndarray, out: np.ndarray, buffers: list[np.ndarray]) -> None:
        exponential_unit(x, out, self.attrs["alpha"], buffers[0])
        np.multiply(out, self.attrs["gamma"], out=out)


#: erf(x) = x * P(x^2) / Q(x^2) for |x| <= ERF_CLAMP, coefficients in ascending powers. A
#: least-squares fit of the relative error against `math.erf` on (0, 4] (x * P - erf * Q,
#: reweighted by 1 / Q), made for convplan: 2.2e-9 relative in exact arithmetic; evaluated in
#: float32 it is within 6 ulp of float32's erf (tests/kernels/test_activations.py). Beyond 4,
#: erf rounds to +-1 in float32 (1 - erf(4) = 1.5e-8 < half an ulp of 1).
ERF_P = (1.1283791685905444, 0.18521264139108787, 0.0543327624721553, 0.0038520301931382586,
         0.0003802624773119103, 4.7012469011166514e-06, -1.3285206351242212e-08)
ERF_Q = (1.0, 0.4974738361430915, 0.11397526214289139, 0.015468999571701988,
         0.0013089665439764242, 6.326987155590952e-05)
ERF_CLAMP = 4.0


def polynomial(t: np.ndarray, coefficients: Sequence[float], out: np.ndarray) -> None:
    """out = sum of coefficients[i] * t ** i (Horner's scheme), in t's dtype."""
    out.fill(coefficients[-1])
    for a in reversed(coefficients[:-1]):
        np.multiply(out, t, out=out)
        np.add(out, a, out=out)


def erf_block(x: np.ndarray, out: np.ndarray, buffers: Sequence[np.ndarray]) -> None:
    """out = erf(x) for one block, through three block buffers; ``out`` may be ``x``, and
    ``x`` may be the first buffer."""
    clamped, t, p = buffers[:3]
    np.clip(x, -ERF_CLAMP, ERF_CLAMP, out=clamped)
    np.square(clamped, out=t)
    polynomial(t, ERF_P, p)
    polynomial(t, ERF_Q, out)       # x is not read again: clamped holds it
    np.multiply(p, clamped, out=p)
    np.divide(p, out, out=out)
    np.clip(out, -1, 1, out=out)


@register
class Erf(Blocked):
    op = "erf"
    summary = "the error function, to float32's precision (a rational approximation)"
    buffers = 3

    def _block(self, x: np.ndarray, out: np.ndarray, buffers: list[np.ndarray]) -> None:
        erf_block(x, out, buffers)


#: sqrt(2 / pi), and the cubic term's factor of GELU's tanh form.
TANH_GELU_SCALE, TANH_GELU_CUBIC = math.sqrt(2 / math.pi), 0.044715


@register
class Gelu(Blocked):
    op = "gelu"
    summary = ("x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), or with approximate 'tanh' "
               "0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (ConvNeXt's activation)")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"approximate": "none"}

    def _check_attrs(self) -> None:
        self.attrs["approximate"] = choice(self.attrs["approximate"], "gelu: approximate",
                                           ("none", "tanh"))

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        """Four blocks for the erf form (erf's three and its result), one for tanh's."""
        block = (min(size(shapes[0]), BLOCK),)
        count = 4 if self.attrs["approximate"] == "none" else 1
        return {f"block{i}": block for i in range(count)}

    def _apply(self, x: np.ndarray, out: np.ndarray, ws: dict[str, np.ndarray]) -> None:
        buffers = list(ws.values())
        for xb, ob in blocks(x, out):
            bs = [b[:xb.size] for b in buffers]
            if self.attrs["approximate"] == "none":
                scaled, result = bs[0], bs[3]
                np.multiply(xb, 1 / math.sqrt(2), out=scaled)
                erf_block(scaled, result, bs)
            else:
                result = bs[0]
                np.square(xb, out=result)
                np.multiply(result, TANH_GELU_CUBIC, out=result)
                np.add(result, 1, out=result)
                np.multiply(result, xb, out=result)
                np.multiply(result, TANH_GELU_SCALE, out=result)
                np.tanh(result, out=result)
            np.add(result, 1, out=result)
            np.multiply(result, xb, out=result)
            np.multiply(result, 0.5, out=ob)


@register
class PRelu(Operator):
    op = "prelu"
    summary = ("x for x >= 0, slope * x below, the learned slope broadcasting to x (one per "
               "channel: shape (C, 1, 1))")
    layouts = ("NCHW", "NHWC")
    inplace = True

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"slope_shape": None}

    def _check_attrs(self) -> None:
        if self.attrs["slope_shape"] is None:
            raise ValueError("prelu: slope_shape is required")
        self.attrs["slope_shape"] = shape_of(self.attrs["slope_shape"], "prelu: slope_shape")

    def weight_shapes(self, shapes: Sequence[Shape]) -> dict[str, Shape]:
        return {"slope": self.attrs["slope_shape"]}

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape, slope = tuple(shapes[0]), self.attrs["slope_shape"]
        try:
            fits = np.broadcast_shapes(shape, slope) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"prelu: the slope of shape {slope} does not broadcast to the "
                             f"input's {shape}")
        return [shape]

    def workspace_shapes(self, shapes: Sequence[Shape], layout: Layout = "NCHW"
                         ) -> dict[str, Shape]:
        return {"gate": (min(size(shapes[0]), BLOCK),)}

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """max(x, 0) + slope * min(x, 0), one block of whole trailing axes at a time (the
        slope broadcast to the block: a view)."""
        x = xs[0]
        slope = weights["slope"]
        if layout == "NHWC" and x.ndim == 4:
            slope = physical_nhwc(slope, stored=False)
        slope = np.broadcast_to(slope, x.shape)
        outs = self._outputs(xs, weights, [x.shape], inplace, out)
        buffer = self._workspace(xs, weights, layout, outs, workspace)["gate"]
        with small_ufunc_buffers():
            for index in index_blocks(x.shape, BLOCK):
                xb, ob = x[index], outs[0][index]
                gate = buffer[:xb.size].reshape(xb.shape)
                np.minimum(xb, 0, out=gate)
                np.multiply(gate, slope[index], out=gate)
                np.maximum(xb, 0, out=ob)
                np.add(ob, gate, out=ob)
        return outs
