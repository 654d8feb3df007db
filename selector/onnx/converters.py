"""ONNX operators as convplan layers: the one place where an ONNX operator maps to a convplan
operator (`kernels.operators`).

A converter is registered with ``@_converts("OpType")``; it gets the node (its inputs checked,
its attributes checked against the ONNX schema and read as Python values) and emits convplan
layers with `Importer.emit`, which infers and checks their shapes. Adding an operator's import:
a converter here; if models also compute it from constants only, a folder in `folding`; its
export in `export`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto

from convplan.kernels.operators import Shape
from convplan.selector.network import NetworkError

from .folding import refuse_training
from .messages import label, quote, short
from .shapes import (
    axis_index,
    broadcast,
    int_vector,
    permutation,
    reshape_shape,
    slice_index,
    slice_params,
    squeezed,
    unsqueezed,
)

if TYPE_CHECKING:
    from .importer import Importer

Converter = Callable[["Importer", onnx.NodeProto, dict[str, Any]], None]
#: ONNX operator -> its converter.
CONVERTERS: dict[str, Converter] = {}
#: Converters that accept a constant first input (they check the others themselves).
CONSTANT_FIRST = {"Add", "Sum", "Mul", "Sub", "Div", "Concat", "MatMul"}


def _converts(*ops: str) -> Callable[[Converter], Converter]:
    def decorate(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return decorate


def _refuse(node: onnx.NodeProto, why: str) -> NetworkError:
    return NetworkError(f"node {label(node)}: {why}")


def _only_defaults(node: onnx.NodeProto, attrs: dict[str, Any], **defaults: Any) -> None:
    """Attributes convplan does not implement are accepted only with their default value."""
    for key, default in defaults.items():
        if key in attrs and attrs[key] != default:
            raise _refuse(node, f"{key}={short(attrs[key])} is not supported")


def _rank4(imp: Importer, node: onnx.NodeProto) -> Shape:
    shape = imp.shape_of(node.input[0])
    if len(shape) != 4:
        raise _refuse(node, f"only 2-D {node.op_type} (an N, C, H, W input) is supported, the "
                            f"input has shape {short(list(shape))}")
    return shape


_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _pads(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any], kernel: tuple[int, int],
          strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right], or what auto_pad asks for."""
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in _AUTO_PADS:
        raise _refuse(node, f"auto_pad {quote(auto)} is not one of {', '.join(_AUTO_PADS)}")
    if auto == "NOTSET":
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise _refuse(node, f"pads {short(pads)} are not the four of a 2-D "
                                f"{node.op_type}")
        if min(pads) < 0:
            raise _refuse(node, f"pads {short(pads)} are negative")
        return pads[0], pads[1], pads[2], pads[3]
    if "pads" in attrs:
        raise _refuse(node, f"pads and auto_pad={auto} are both given")
    if auto == "VALID":
        return 0, 0, 0, 0
    h, w = _rank4(imp, node)[2:]
    total = []
    for size, k, s, d in zip((h, w), kernel, strides, dilations, strict=True):
        out = math.ceil(size / s)
        total.append(max(0, (out - 1) * s + (k - 1) * d + 1 - size))
    small = [t // 2 for t in total]
    big = [t - t // 2 for t in total]
    if auto == "SAME_UPPER":
        return small[0], small[1], big[0], big[1]
    return big[0], big[1], small[0], small[1]


def _pair_attr(attrs: dict[str, Any], key: str, node: onnx.NodeProto) -> tuple[int, int]:
    value = [int(v) for v in attrs.get(key, [1, 1])]
    if len(value) != 2:
        raise _refuse(node, f"only 2-D {node.op_type} is supported ({key}={short(value)})")
    if min(value) < 1:
        raise _refuse(node, f"{key} {short(value)} must be positive")
    return value[0], value[1]


def _conv1d(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """A 1-D Conv (an N, C, L input: ECA's channel attention) as the 2-D convolution of the
    input viewed as N, C, 1, L with a 1 x k kernel, the output viewed back (reshapes are
    views: no copy)."""
    n, c, length = imp.shape_of(node.input[0])
    w = imp.float_const(node.input[1], f"the weights of Conv {label(node)}")
    if w.ndim != 3:
        raise _refuse(node, f"a 1-D Conv needs weights of rank 3, not shape {list(w.shape)}")
    single = {key: value for key, value in attrs.items() if key in
              ("strides", "dilations", "kernel_shape")}
    pairs = {key: [1, *value] for key, value in single.items()}
    if "pads" in attrs:
        pads = [int(p) for p in attrs["pads"]]
        if len(pads) != 2:
            raise _refuse(node, f"pads {short(pads)} are not the two of a 1-D Conv")
        pairs["pads"] = [0, pads[0], 0, pads[1]]
    flat_in, flat_out = f"{node.output[0]}/as-2d-input", f"{node.output[0]}/as-2d"
    imp.emit("reshape", [node.input[0]], [flat_in], shape=[n, c, 1, length])
    imp.consts[f"{node.input[1]}/as-2d"] = w.reshape(*w.shape[:2], 1, w.shape[2])
    inputs = [flat_in, f"{node.input[1]}/as-2d", *node.input[2:]]
    _conv(imp, onnx.helper.make_node("Conv", inputs, [flat_out], name=node.name),
          {**attrs, **pairs})
    _, m, _, out = imp.shape_of(flat_out)
    imp.emit("reshape", [flat_out], [node.output[0]], shape=[n, m, out])


@_converts("Conv")
def _conv(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if len(imp.shape_of(node.input[0])) == 3:
        _conv1d(imp, node, attrs)
        return
    shape = _rank4(imp, node)
    w = imp.float_const(node.input[1], f"the weights of Conv {label(node)}")
    if w.ndim != 4:
        raise _refuse(node, f"only 2-D Conv is supported (weights of shape {list(w.shape)})")
    kernel = (int(w.shape[2]), int(w.shape[3]))
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
        raise _refuse(node, f"kernel_shape {short(attrs['kernel_shape'])} contradicts the "
                            f"weights of shape {list(w.shape)}")
    groups = int(attrs.get("group", 1))
    if groups < 1 or shape[1] != w.shape[1] * groups:
        raise _refuse(node, f"an input of {shape[1]} channels does not fit weights of shape "
                            f"{list(w.shape)} in {groups} group(s)")
    strides = _pair_attr(attrs, "strides", node)
    dilations = _pair_attr(attrs, "dilations", node)
    weights = {"weight": w}
    if len(node.input) > 2 and node.input[2]:
        weights["bias"] = imp.float_const(node.input[2], f"the bias of Conv {label(node)}")
    imp.emit("conv", [node.input[0]], [node.output[0]], weights, out_channels=int(w.shape[0]),
             kernel=kernel, stride=strides, dilation=dilations,
             padding=_pads(imp, node, attrs, kernel, strides, dilations),
             groups=groups, bias="bias" in weights)


def _transposed_pads(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                     kernel: tuple[int, int], strides: tuple[int, int],
                     dilations: tuple[int, int], extra: tuple[int, int]
                     ) -> tuple[int, int, int, int]:
    """ConvTranspose's pads [top, left, bottom, right]: given, or split from the total padding
    that ONNX's text derives from ``output_shape`` (or, for SAME_*, from input * stride):
    total = stride*(in-1) + output_padding + dilation*(k-1) + 1 - out, the larger half at the
    end for SAME_UPPER, at the start otherwise."""
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in _AUTO_PADS:
        raise _refuse(node, f"auto_pad {quote(auto)} is not one of {', '.join(_AUTO_PADS)}")
    wanted = attrs.get("output_shape")
    if wanted is None and auto in ("NOTSET", "VALID"):
        if auto == "VALID":
            if "pads" in attrs:
                raise _refuse(node, "pads and auto_pad=VALID are both given")
            return 0, 0, 0, 0
        return _pads(imp, node, attrs, kernel, strides, dilations)
    if "pads" in attrs:
        given = "output_shape" if wanted is not None else f"auto_pad={auto}"
        raise _refuse(node, f"pads and {given} are both given")
    h, w = _rank4(imp, node)[2:]
    if wanted is None:
        out = [h * strides[0], w * strides[1]]
    else:
        out = [int(v) for v in wanted]
        if len(out) != 2:
            raise _refuse(node, f"output_shape {short(out)} is not the two spatial sizes of a "
                                "2-D ConvTranspose")
    total = [s * (size - 1) + e + d * (k - 1) + 1 - o
             for size, k, s, d, e, o in zip((h, w), kernel, strides, dilations, extra, out,
                                            strict=True)]
    if min(total) < 0:
        raise _refuse(node, f"an output of {short(out)} from a {h}x{w} input needs negative "
                            f"padding {short(total)}, which is not supported")
    small = [t // 2 for t in total]
    big = [t - t // 2 for t in total]
    if auto == "SAME_UPPER":
        return small[0], small[1], big[0], big[1]
    return big[0], big[1], small[0], small[1]


@_converts("ConvTranspose")
def _convtranspose(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Weights are (C, M/group, kh, kw); output_padding must stay below the stride."""
    shape = _rank4(imp, node)
    w = imp.float_const(node.input[1], f"the weights of ConvTranspose {label(node)}")
    if w.ndim != 4:
        raise _refuse(node, "only 2-D ConvTranspose is supported (weights of shape "
                            f"{list(w.shape)})")
    kernel = (int(w.shape[2]), int(w.shape[3]))
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
        raise _refuse(node, f"kernel_shape {short(attrs['kernel_shape'])} contradicts the "
                            f"weights of shape {list(w.shape)}")
    groups = int(attrs.get("group", 1))
    if groups < 1 or shape[1] != w.shape[0] or shape[1] % groups:
        raise _refuse(node, f"an input of {shape[1]} channels does not fit weights of shape "
                            f"{list(w.shape)} in {groups} group(s)")
    strides = _pair_attr(attrs, "strides", node)
    dilations = _pair_attr(attrs, "dilations", node)
    extra = [int(v) for v in attrs.get("output_padding", [0, 0])]
    if len(extra) != 2:
        raise _refuse(node, f"only 2-D ConvTranspose is supported (output_padding="
                            f"{short(extra)})")
    if min(extra) < 0 or any(e >= s for e, s in zip(extra, strides, strict=True)):
        raise _refuse(node, f"output_padding {short(extra)} must be >= 0 and smaller than "
                            f"the strides {short(list(strides))}")
    weights = {"weight": w}
    if len(node.input) > 2 and node.input[2]:
        weights["bias"] = imp.float_const(node.input[2],
                                          f"the bias of ConvTranspose {label(node)}")
    imp.emit("convtranspose", [node.input[0]], [node.output[0]], weights,
             out_channels=int(w.shape[1]) * groups, kernel=kernel, stride=strides,
             dilation=dilations, output_padding=(extra[0], extra[1]),
             padding=_transposed_pads(imp, node, attrs, kernel, strides, dilations,
                                      (extra[0], extra[1])),
             groups=groups, bias="bias" in weights)


@_converts("Relu", "Sigmoid", "HardSwish", "Erf", "Sqrt")
def _unary(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit(node.op_type.lower(), [node.input[0]], [node.output[0]])


#: The attributes of ONNX activations that map one to one, with ONNX's defaults.
_ACTIVATIONS: dict[str, dict[str, Any]] = {
    "LeakyRelu": {"alpha": 0.01}, "Elu": {"alpha": 1.0},
    "Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    "Gelu": {"approximate": "none"},
}


@_converts(*_ACTIVATIONS)
def _activation(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit(node.op_type.lower(), [node.input[0]], [node.output[0]],
             **{k: attrs.get(k, default) for k, default in _ACTIVATIONS[node.op_type].items()})


@_converts("PRelu")
def _prelu(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """The slope broadcasts to the input (one per channel: (C, 1, 1); checked by the layer)."""
    slope = imp.float_const(node.input[1], f"the slope of PRelu {label(node)}")
    imp.emit("prelu", [node.input[0]], [node.output[0]], {"slope": slope},
             slope_shape=list(slope.shape))


@_converts("Pow")
def _pow(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """A constant scalar exponent (the square of a layer norm written out before opset 17)."""
    if not imp.is_const(node.input[1]):
        raise _refuse(node, "Pow with an exponent computed from the input is not supported")
    exponent = imp.const(node.input[1], "Pow's exponent")
    if exponent.size != 1 or exponent.dtype.kind not in "fiu":
        raise _refuse(node, f"Pow's exponent must be one number, not "
                            f"{exponent.dtype} of shape {list(exponent.shape)}")
    if np.ndim(exponent) > len(imp.shape_of(node.input[0])):
        raise _refuse(node, "Pow's exponent has a higher rank than its base")
    imp.emit("pow", [node.input[0]], [node.output[0]],
             exponent=float(exponent.reshape(-1)[0]))


@_converts("HardSigmoid")
def _hardsigmoid(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit("hardsigmoid", [node.input[0]], [node.output[0]],
             alpha=float(attrs.get("alpha", 0.2)), beta=float(attrs.get("beta", 0.5)))


@_converts("Clip")
def _clip(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if imp.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        bounds = []
        for i in list(node.input[1:3]) + [""] * (3 - len(node.input)):
            if not i:
                bounds.append(None)
                continue
            value = imp.float_const(i, "Clip's min and max")
            if value.size != 1:
                raise _refuse(node, "Clip's min and max must hold one value each")
            bounds.append(float(value.reshape(-1)[0]))
        lo, hi = bounds[0], bounds[1]
    imp.emit("clip", [node.input[0]], [node.output[0]],
             min=None if lo is None else float(lo), max=None if hi is None else float(hi))


@_converts("Identity", "Dropout")
def _identity(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    refuse_training(imp, node)
    if len(node.output) > 1 and node.output[1]:
        imp.unreadable[node.output[1]] = "the mask of a Dropout"
    imp.alias(node)     # at inference Dropout is the identity


@_converts("Cast")
def _cast(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("to") != TensorProto.FLOAT:
        raise _refuse(node, "Cast of an activation to a type other than float32 is not "
                            "supported")
    imp.alias(node)


def _pool_attrs(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, Any]:
    _rank4(imp, node)
    if "kernel_shape" not in attrs:
        raise _refuse(node, "kernel_shape is required")
    kernel = _pair_attr(attrs, "kernel_shape", node)
    strides = _pair_attr(attrs, "strides", node)
    dilations = _pair_attr(attrs, "dilations", node)
    return {"kernel": kernel, "stride": strides,
            "padding": _pads(imp, node, attrs, kernel, strides, dilations),
            "ceil_mode": bool(attrs.get("ceil_mode", 0))}


@_converts("MaxPool")
def _maxpool(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise _refuse(node, "MaxPool's indices output is not supported")
    _only_defaults(node, attrs, storage_order=0)
    imp.emit("maxpool", [node.input[0]], [node.output[0]], **_pool_attrs(imp, node, attrs),
             dilation=_pair_attr(attrs, "dilations", node))


@_converts("AveragePool")
def _avgpool(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if "dilations" in attrs and tuple(attrs["dilations"]) != (1, 1):
        raise _refuse(node, "dilated AveragePool is not supported")
    imp.emit("avgpool", [node.input[0]], [node.output[0]], **_pool_attrs(imp, node, attrs),
             count_include_pad=bool(attrs.get("count_include_pad", 0)))


@_converts("GlobalAveragePool")
def _gap(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _rank4(imp, node)
    imp.emit("globalavgpool", [node.input[0]], [node.output[0]])


@_converts("BatchNormalization")
def _batchnorm(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _only_defaults(node, attrs, training_mode=0, spatial=1)
    if any(node.output[1:]):
        raise _refuse(node, "BatchNormalization's training outputs are not supported")
    if len(node.input) != 5:
        raise _refuse(node, "BatchNormalization needs scale, bias, mean and variance")
    shape = imp.shape_of(node.input[0])
    if len(shape) < 2:
        raise _refuse(node, f"the input of shape {short(list(shape))} has no channel axis")
    what = f"the statistics of BatchNormalization {label(node)}"
    stats = [imp.float_const(i, what, exact=False) for i in node.input[1:5]]
    if any(s.shape != (shape[1],) for s in stats):
        raise _refuse(node, f"the statistics must have shape [{shape[1]}], not "
                            f"{short([list(s.shape) for s in stats])}")
    gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise _refuse(node, "the statistics give a non-finite scale (negative variance?)")
    imp.emit("batchnorm", [node.input[0]], [node.output[0]], {"scale": scale, "shift": shift})


@_converts("LayerNormalization")
def _layernorm(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Over the axes from ``axis`` to the last; scale and bias broadcast to those axes' shape
    (any stash_type: the statistics are float64)."""
    if any(node.output[1:]):
        raise _refuse(node, "LayerNormalization's Mean and InvStdDev outputs are not supported")
    shape = imp.shape_of(node.input[0])
    axis = axis_index(node, int(attrs.get("axis", -1)), len(shape))
    normalized = tuple(shape[axis:])
    weights = {}
    for key, i in (("scale", 1), ("bias", 2)):
        if len(node.input) <= i or not node.input[i]:
            continue
        value = imp.float_const(node.input[i], f"the {key} of LayerNormalization {label(node)}")
        try:
            if np.broadcast_shapes(value.shape, normalized) != normalized:
                raise ValueError
        except ValueError:
            raise _refuse(node, f"the {key} of shape {list(value.shape)} does not broadcast to "
                                f"the normalised shape {list(normalized)}") from None
        weights[key] = np.broadcast_to(value, normalized)
    imp.emit("layernorm", [node.input[0]], [node.output[0]], weights,
             axes=list(range(axis - len(shape), 0)), epsilon=float(attrs.get("epsilon", 1e-5)),
             bias="bias" in weights)


@_converts("InstanceNormalization")
def _instancenorm(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    what = f"the scale and bias of InstanceNormalization {label(node)}"
    weights = {k: imp.float_const(i, what) for k, i in zip(("scale", "bias"), node.input[1:3],
                                                            strict=True)}
    imp.emit("instancenorm", [node.input[0]], [node.output[0]], weights,
             epsilon=float(attrs.get("epsilon", 1e-5)))


def _per_channel(value: np.ndarray, shape: Shape) -> np.ndarray | None:
    """``value`` as a (C,) vector if broadcasting it against ``shape`` is per-channel (axis 1)."""
    if len(shape) < 2 or value.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1):
        return None
    if full[1] not in (1, shape[1]):
        return None
    return np.broadcast_to(value.reshape(-1), (shape[1],)).astype(np.float64)


@_converts("Add", "Sum", "Mul", "Sub", "Div")
def _arithmetic(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if "axis" in attrs:     # before opset 7: broadcasting aligned at an axis
        raise _refuse(node, "broadcasting with an axis attribute (opset < 7) is not supported")
    op = {"Sum": "add"}.get(node.op_type, node.op_type.lower())
    acts = imp.activations(node)
    consts = [i for i in node.input if i and imp.is_const(i)]
    if op in ("sub", "div") and consts and node.input[0] in consts:
        raise _refuse(node, f"{node.op_type} with a constant first operand is not supported")
    constant = None
    if consts:
        values = [imp.float_const(c, f"the constant operand of {label(node)}").astype(np.float64)
                  for c in consts]
        shape = broadcast(node, [v.shape for v in values])
        imp.limits.reserve(f"the constant operand of node {label(node)}", shape, np.float64)
        constant = values[0]
        with np.errstate(all="ignore"):
            for v in values[1:]:
                constant = constant + v if op == "add" else constant * v
            if op == "sub":
                constant, op = -constant, "add"
            elif op == "div":
                constant, op = 1.0 / constant, "mul"
    if constant is not None and len(acts) == 1:
        vector = _per_channel(constant, imp.shape_of(acts[0]))
        out_shape = broadcast(node, [imp.shape_of(acts[0]), constant.shape])
        if constant.size == 1 and out_shape == imp.shape_of(acts[0]):
            value = float(constant.reshape(-1)[0])
            imp.scalars[node.output[0]] = (value, 0.0) if op == "mul" else (1.0, value)
        if vector is not None and out_shape == imp.shape_of(acts[0]):
            one = np.ones_like(vector)
            scale, shift = (vector, 0 * one) if op == "mul" else (one, vector)
            imp.emit("batchnorm", acts, [node.output[0]], {"scale": scale, "shift": shift})
            return
    weights = None
    extra: dict[str, Any] = {}
    if constant is not None:
        weights = {"constant": constant}
        extra["constant_shape"] = list(constant.shape)
    imp.emit(op, acts, [node.output[0]], weights, **extra)


_REDUCTIONS = {"ReduceSum": "reducesum", "ReduceMean": "reducemean", "ReduceMax": "reducemax",
               "ReduceL2": "reducel2"}


@_converts(*_REDUCTIONS)
def _reduce(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Axes as an attribute (ReduceSum before opset 13, the others before 18) or a constant
    input; none or empty means every axis, or with noop_with_empty_axes none (the identity)."""
    axes: list[int] | None = None
    if "axes" in attrs:
        axes = [int(a) for a in attrs["axes"]]
    elif len(node.input) > 1 and node.input[1]:
        axes = int_vector(node, imp.const(node.input[1], f"{node.op_type}'s axes"), "axes")
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            if node.op_type == "ReduceL2":     # the text says the input, the arithmetic |x|
                raise _refuse(node, "ReduceL2 over no axes (noop_with_empty_axes) is not "
                                    "supported")
            imp.alias(node)
            return
        axes = None
    imp.emit(_REDUCTIONS[node.op_type], [node.input[0]], [node.output[0]], axes=axes,
             keepdims=bool(attrs.get("keepdims", 1)))


@_converts("Pad")
def _pad(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Pads as an attribute (before opset 11) or a constant input, with the constant value an
    attribute or an optional input and, from opset 18, the axes they apply to; negative pads
    crop (in constant mode)."""
    rank = len(imp.shape_of(node.input[0]))
    mode = attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise _refuse(node, f"mode {quote(mode)} is not supported (constant, reflect, edge)")
    if imp.opset < 11:
        pads, value = [int(p) for p in attrs.get("pads", [])], float(attrs.get("value", 0.0))
    else:
        pads = int_vector(node, imp.const(node.input[1], "Pad's pads"), "pads")
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            given = imp.const(node.input[2], "Pad's constant_value")
            if given.size != 1:
                raise _refuse(node, "Pad's constant_value must hold one value")
            value = float(given.reshape(-1)[0])
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [axis_index(node, a, rank) for a in
                int_vector(node, imp.const(node.input[3], "Pad's axes"), "axes")]
        if len(set(axes)) != len(axes):
            raise _refuse(node, f"axes {short(axes)} repeat an axis")
    if len(pads) != 2 * len(axes):
        raise _refuse(node, f"{len(pads)} pads do not fit {len(axes)} axes (it needs "
                            f"{2 * len(axes)})")
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    imp.emit("pad", [node.input[0]], [node.output[0]], pads=full, mode=mode, value=value)


@_converts("Resize", "Upsample")
def _resize(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Scales (an attribute of Upsample-7, an input after) or sizes (Resize from opset 11) of H
    and W only. Before Resize-11 the coordinates are asymmetric and nearest takes the floor
    (onnxruntime's rule when upsampling; nearest downsampling there is refused)."""
    shape = _rank4(imp, node)
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise _refuse(node, f"mode {quote(mode)} is not supported (nearest, linear)")
    _only_defaults(node, attrs, antialias=0, keep_aspect_ratio_policy="stretch")
    modern = node.op_type == "Resize" and imp.opset >= 11
    coordinates = attrs.get("coordinate_transformation_mode", "half_pixel") if modern \
        else "asymmetric"
    if coordinates not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        raise _refuse(node, f"coordinate_transformation_mode {quote(coordinates)} is not "
                            "supported")
    nearest = attrs.get("nearest_mode", "round_prefer_floor") if modern else "floor"
    axes = [axis_index(node, a, 4) for a in attrs.get("axes", [0, 1, 2, 3])]
    if len(set(axes)) != len(axes):
        raise _refuse(node, f"axes {short(axes)} repeat an axis")
    scales: list[float] | None = None
    sizes: list[int] | None = None
    if node.op_type == "Upsample" and imp.opset < 9:
        scales = [float(v) for v in attrs.get("scales", [])]
    else:
        index = 1 if not modern else 2
        named = list(node.input) + [""] * 4
        if named[index]:
            value = imp.const(named[index], f"{node.op_type}'s scales")
            if value.size:
                scales = [float(v) for v in value.reshape(-1)]
        if modern and named[3]:
            if scales is not None:
                raise _refuse(node, "both scales and sizes are given")
            sizes = int_vector(node, imp.const(named[3], "Resize's sizes"), "sizes")
    given = scales if scales is not None else sizes
    if given is None:
        raise _refuse(node, "neither scales nor sizes are given")
    if len(given) != len(axes):
        raise _refuse(node, f"{len(given)} scales or sizes for {len(axes)} axes")
    full: list[float] = [1.0, 1.0, 1.0, 1.0] if scales is not None else [float(d) for d in shape]
    for a, v in zip(axes, given, strict=True):
        full[a] = v
    if full[:2] != ([1.0, 1.0] if scales is not None else [float(d) for d in shape[:2]]):
        raise _refuse(node, f"only H and W are resized, not N or C ({short(list(given))})")
    extra: dict[str, Any] = ({"scales": full[2:]} if scales is not None
                             else {"sizes": [int(v) for v in full[2:]]})
    if not modern and mode == "nearest" and min(full[2:]) < 1:
        raise _refuse(node, "nearest downsampling before Resize-11 is not supported")
    imp.emit("resize", [node.input[0]], [node.output[0]], mode=mode, coordinates=coordinates,
             nearest=nearest, **extra)


@_converts("Concat")
def _concat(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if any(imp.is_const(i) for i in node.input if i):
        raise _refuse(node, "Concat of a constant with an activation is not supported")
    rank = len(imp.shape_of(node.input[0]))
    axis = axis_index(node, int(attrs["axis"]), rank)
    imp.emit("concat", [i for i in node.input if i], [node.output[0]], axis=axis)


@_converts("Flatten")
def _flatten(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    rank = len(imp.shape_of(node.input[0]))
    axis = axis_index(node, int(attrs.get("axis", 1)), rank, inclusive=True)
    imp.emit("flatten", [node.input[0]], [node.output[0]], axis=axis)


def _reshape_to(imp: Importer, node: onnx.NodeProto, shape: Sequence[int]) -> None:
    imp.emit("reshape", [node.input[0]], [node.output[0]], shape=[int(s) for s in shape])


@_converts("Reshape")
def _reshape(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _reshape_to(imp, node, reshape_shape(imp, node, attrs, imp.shape_of(node.input[0])))


@_converts("Unsqueeze", "Squeeze")
def _squeeze(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = imp.shape_of(node.input[0])
    axes = None
    if "axes" in attrs:
        axes = [int(a) for a in attrs["axes"]]
    elif len(node.input) > 1 and node.input[1]:
        axes = int_vector(node, imp.const(node.input[1], f"{node.op_type}'s axes"), "axes")
    if node.op_type == "Unsqueeze":
        _reshape_to(imp, node, unsqueezed(node, shape, axes))
    else:
        _reshape_to(imp, node, squeezed(node, shape, axes))


@_converts("Transpose")
def _transpose(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    perm = permutation(node, attrs, len(imp.shape_of(node.input[0])))
    imp.emit("transpose", [node.input[0]], [node.output[0]], perm=perm)


@_converts("Expand")
def _expand(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    target = int_vector(node, imp.const(node.input[1], "Expand's shape"), "the shape")
    shape = broadcast(node, [imp.shape_of(node.input[0]), tuple(target)])
    if shape == imp.shape_of(node.input[0]):      # nothing to broadcast: torch's no-op expand
        imp.emit("identity", [node.input[0]], [node.output[0]])
        return
    imp.emit("expand", [node.input[0]], [node.output[0]], shape=list(target))


@_converts("Tile")
def _tile(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    repeats = int_vector(node, imp.const(node.input[1], "Tile's repeats"), "repeats")
    if all(r == 1 for r in repeats) and len(repeats) == len(imp.shape_of(node.input[0])):
        imp.emit("identity", [node.input[0]], [node.output[0]])
        return
    imp.emit("tile", [node.input[0]], [node.output[0]], repeats=repeats)


@_converts("Split")
def _split(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = imp.shape_of(node.input[0])
    if not shape:
        raise _refuse(node, "Split of a rank-0 tensor")
    axis = axis_index(node, int(attrs.get("axis", 0)), len(shape))
    dim = shape[axis]
    if any(not o for o in node.output):
        raise _refuse(node, "every output of Split must be named")
    n = len(node.output)
    if len(node.input) > 1 and node.input[1]:
        sizes = int_vector(node, imp.const(node.input[1], "Split's sizes"), "split")
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        if "num_outputs" in attrs and int(attrs["num_outputs"]) != n:
            raise _refuse(node, f"num_outputs {short(attrs['num_outputs'])} but {n} outputs")
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    if len(sizes) != n or min(sizes) < 1 or sum(sizes) != dim:
        raise _refuse(node, f"sizes {short(sizes)} do not split a dimension of {dim} into "
                            f"{n} non-empty outputs")
    imp.emit("split", [node.input[0]], list(node.output), axis=axis, sizes=sizes)


@_converts("Slice")
def _slice(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    params = slice_params(imp, node, attrs)
    slice_index(node, params, imp.shape_of(node.input[0]))     # refuses bad axes and steps
    imp.emit("slice", [node.input[0]], [node.output[0]], **params)


@_converts("Gemm")
def _gemm(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    b = imp.float_const(node.input[1], f"Gemm {label(node)}'s B")
    if b.ndim != 2:
        raise _refuse(node, f"Gemm's B must be 2-D, not of shape {list(b.shape)}")
    if imp.is_const(node.input[0]) or len(imp.shape_of(node.input[0])) != 2:
        raise _refuse(node, "Gemm's A must be a 2-D activation")
    trans_b = bool(attrs.get("transB", 0))
    n = int(b.shape[0] if trans_b else b.shape[1])
    weights = {"b": b}
    beta = float(attrs.get("beta", 1.0))
    if len(node.input) > 2 and node.input[2]:
        c = imp.float_const(node.input[2], f"Gemm {label(node)}'s C")
        if c.size not in (1, n) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise _refuse(node, f"Gemm's C of shape {list(c.shape)} is not a per-output bias")
        weights["c"] = np.broadcast_to(c.reshape(-1), (n,))
    imp.emit("gemm", [node.input[0]], [node.output[0]], weights, out_features=n,
             alpha=float(attrs.get("alpha", 1.0)), beta=beta,
             trans_a=bool(attrs.get("transA", 0)), trans_b=trans_b, bias="c" in weights)


@_converts("MatMul")
def _matmul(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    a, b = node.input[0], node.input[1]
    if imp.is_const(a):
        raise _refuse(node, "MatMul with a constant first operand is not supported")
    if imp.is_const(b):
        value = imp.float_const(b, f"MatMul {label(node)}'s B")
        if value.ndim == 2 and len(imp.shape_of(a)) == 2:
            imp.emit("gemm", [a], [node.output[0]], {"b": value}, out_features=int(value.shape[1]),
                     bias=False)
        else:
            imp.emit("matmul", [a], [node.output[0]], {"constant": value},
                     constant_shape=list(value.shape))
        return
    imp.emit("matmul", [a, b], [node.output[0]])


@_converts("Softmax")
def _softmax(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = imp.shape_of(node.input[0])
    if not shape:
        raise _refuse(node, "Softmax of a rank-0 tensor")
    if imp.opset >= 13:
        axis = axis_index(node, int(attrs.get("axis", -1)), len(shape))
        imp.emit("softmax", [node.input[0]], [node.output[0]], axis=axis)
        return
    axis = axis_index(node, int(attrs.get("axis", 1)), len(shape))
    if all(d == 1 for d in shape[axis + 1:]):
        imp.emit("softmax", [node.input[0]], [node.output[0]], axis=axis)
        return
    # Before opset 13, Softmax works on the input flattened to 2-D at ``axis``.
    flat = f"{node.output[0]}/flat"
    rows = int(np.prod(shape[:axis]))
    imp.emit("reshape", [node.input[0]], [flat], shape=[rows, -1])
    imp.emit("softmax", [flat], [flat + "/softmax"], axis=1)
    imp.emit("reshape", [flat + "/softmax"], [node.output[0]], shape=list(shape))


@_converts("LRN")
def _lrn(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit("lrn", [node.input[0]], [node.output[0]], size=int(attrs["size"]),
             alpha=float(attrs.get("alpha", 1e-4)), beta=float(attrs.get("beta", 0.75)),
             bias=float(attrs.get("bias", 1.0)))
