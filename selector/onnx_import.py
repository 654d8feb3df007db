"""ONNX import: a real model file as a convplan `Network`.

Everything that only depends on constants (weights made by ConstantOfShape, Shape of a tensor
whose shape is known, the arithmetic on such shapes) is folded at import; what is left must be an
operator convplan runs. Batch-norm (and a per-channel Mul/Add by constants) after a convolution
is folded into the convolution's weights. A model that refers to external data files is refused:
a model must never make convplan read other files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from kernels import operators
from kernels.operators import Shape

from .network import Network, NetworkError

#: ONNX files larger than this are refused before parsing (the biggest CNNs are ~0.6 GB).
MAX_ONNX_BYTES = 1 << 30

Layer = dict[str, Any]


class _Importer:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        self.name = name
        self.opset = _opset(model)
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self.layers: list[Layer] = []
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.unsupported: dict[str, int] = {}
        self.renamed: dict[str, str] = {}   # ONNX tensor -> the tensor that carries its value

    # -- tensors -----------------------------------------------------------------------------
    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def const(self, tensor: str, what: str) -> np.ndarray:
        if tensor not in self.consts:
            raise NetworkError(f"{what} must be a constant (an initializer or computed from "
                               f"constants), but {tensor!r} is computed from the input")
        return self.consts[tensor]

    def tensor(self, name: str) -> str:
        return self.renamed.get(name, name)

    def emit(self, op: str, inputs: list[str], outputs: list[str], weights: dict | None = None,
             name: str | None = None, **attrs: Any) -> None:
        """Add one IR layer and infer its output shapes (the check happens here, once)."""
        name = name or outputs[0]
        inputs = [self.tensor(t) for t in inputs]
        try:
            operator = operators.make(op, **attrs)
            operator.check_arity(len(inputs))
            shapes = operator.output_shapes([self.shapes[t] for t in inputs])
        except ValueError as error:
            raise NetworkError(f"node {name!r} ({op}): {error}") from None
        for out, shape in zip(outputs, shapes, strict=True):
            self.shapes[out] = tuple(shape)
        layer: Layer = {"name": name, "op": op, "inputs": inputs}
        if outputs != [name]:
            layer["outputs"] = outputs
        layer.update(attrs)
        self.layers.append(layer)
        if weights:
            self.weights[name] = {k: np.ascontiguousarray(v, dtype=np.float32)
                                  for k, v in weights.items()}

    # -- the walk ----------------------------------------------------------------------------
    def run(self, input_shapes: dict[str, Shape] | None) -> Network:
        graph = self.model.graph
        for init in graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        inputs: dict[str, Shape] = {}
        for value in graph.input:
            if value.name in self.consts:
                continue
            shape = _value_shape(value, (input_shapes or {}).get(value.name))
            inputs[value.name] = shape
            self.shapes[value.name] = shape
        if not inputs:
            raise NetworkError("the model has no input that is not an initializer")
        for node in graph.node:
            self.node(node)
        if self.unsupported:
            listed = ", ".join(f"{op} (x{n})" if n > 1 else op
                               for op, n in sorted(self.unsupported.items()))
            raise NetworkError(f"the model uses operators convplan does not support: {listed}")
        outputs = [o.name for o in graph.output]
        for o in outputs:
            if self.tensor(o) not in self.shapes:
                raise NetworkError(f"model output {o!r} is a constant, not computed from the input")
            if self.tensor(o) != o:     # an output that is an alias keeps its ONNX name
                self.emit("identity", [o], [o], name=o)
        layers = _fold_affine(self.layers, self.weights, set(outputs))
        description = {"name": self.name, "inputs": [{"name": k, "shape": list(v)}
                                                     for k, v in inputs.items()],
                       "layers": layers, "outputs": outputs}
        if not layers:
            raise NetworkError("the model has no operator that depends on its input")
        return Network.from_description(description, self.weights)

    def node(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            key = f"{node.domain}.{op}"
            self.unsupported[key] = self.unsupported.get(key, 0) + 1
            return
        inputs = [i for i in node.input]
        present = [i for i in inputs if i]
        if all(self.is_const(i) for i in present) and op not in _NEVER_FOLD:
            self.fold(node)
            return
        if op == "Shape":
            self.fold_shape(node)
            return
        convert = _CONVERTERS.get(op)
        if convert is None:
            self.unsupported[op] = self.unsupported.get(op, 0) + 1
            return
        if self.unsupported:        # keep walking only to collect every unsupported operator
            for out in node.output:
                self.shapes.setdefault(out, ())
            return
        for i in present:
            if not self.is_const(i) and self.tensor(i) not in self.shapes:
                raise NetworkError(f"node {node.name or node.output[0]!r} ({op}) reads {i!r}, "
                                   "which no earlier node produces (nodes must be in "
                                   "topological order)")
        convert(self, node, _attributes(node))

    def fold(self, node: onnx.NodeProto) -> None:
        """Compute a node whose inputs are all constants, once, at import."""
        op = node.op_type
        attrs = _attributes(node)
        values = [self.consts[i] if i else None for i in node.input]
        if op == "Constant":
            result = [_constant_value(node, attrs)]
        elif op == "ConstantOfShape":
            value = attrs.get("value", np.zeros(1, np.float32))
            result = [np.full(tuple(int(v) for v in values[0]), value.reshape(-1)[0],
                              dtype=value.dtype)]
        elif op == "Identity" or op == "Dropout":
            result = [values[0]]
        else:
            result = _reference_eval(node, values, self.model)
        for out, value in zip(node.output, result, strict=False):
            if out:
                self.consts[out] = np.asarray(value)

    def fold_shape(self, node: onnx.NodeProto) -> None:
        shape = self.shapes.get(self.tensor(node.input[0]))
        if shape is None:
            self.unsupported["Shape"] = self.unsupported.get("Shape", 0) + 1
            return
        attrs = _attributes(node)
        start, end = attrs.get("start", 0), attrs.get("end", None)
        self.consts[node.output[0]] = np.array(shape[slice(start, end)], dtype=np.int64)

    # -- helpers for the converters ----------------------------------------------------------
    def activations(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and not self.is_const(i)]

    def alias(self, node: onnx.NodeProto) -> None:
        """The node's output is its input (Identity, Dropout at inference)."""
        self.renamed[node.output[0]] = self.tensor(node.input[0])

    def shape_of(self, tensor: str) -> Shape:
        return self.shapes[self.tensor(tensor)]


_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        out[a.name] = value
    return out


def _constant_value(node: onnx.NodeProto, attrs: dict[str, Any]) -> np.ndarray:
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    if "value" in attrs:
        return np.asarray(attrs["value"])
    raise NetworkError(f"Constant node {node.name or node.output[0]!r} has no value this "
                       "importer reads (sparse or string constants are not supported)")


def _reference_eval(node: onnx.NodeProto, values: list[np.ndarray | None],
                    model: onnx.ModelProto) -> list[np.ndarray]:
    """One constant node computed by onnx's own reference implementation."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(names)
    graph = onnx.helper.make_graph(
        [copy], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                            v.shape)
         for n, v in zip(names, values, strict=True) if v is not None],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o])
    folded = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    try:
        evaluator = ReferenceEvaluator(folded)
        return list(evaluator.run(None, {n: v for n, v in zip(names, values, strict=True)
                                         if v is not None}))
    except Exception as error:  # the reference raises many types; one message for all
        raise NetworkError(f"cannot fold constant node {node.name or node.output[0]!r} "
                           f"({node.op_type}): {error}") from None


def _value_shape(value: onnx.ValueInfoProto, override: Shape | None) -> Shape:
    t = value.type
    if not t.HasField("tensor_type"):
        raise NetworkError(f"input {value.name!r} is not a tensor")
    if t.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)
        raise NetworkError(f"input {value.name!r} is {dtype}; convplan runs float32 models")
    if override is not None:
        return tuple(int(d) for d in override)
    dims = []
    for i, d in enumerate(t.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)      # a symbolic batch: plan for one image
        else:
            raise NetworkError(f"input {value.name!r} has a symbolic dimension {i} "
                               f"({d.dim_param or '?'}); give its shape")
    if not dims:
        raise NetworkError(f"input {value.name!r} has no shape")
    return tuple(dims)


# -- converters: one ONNX operator as IR layers ----------------------------------------------
Converter = Callable[[_Importer, onnx.NodeProto, dict[str, Any]], None]
_CONVERTERS: dict[str, Converter] = {}


def _converts(*ops: str) -> Callable[[Converter], Converter]:
    def decorate(fn: Converter) -> Converter:
        for op in ops:
            _CONVERTERS[op] = fn
        return fn
    return decorate


def _pads(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any], kernel: tuple[int, int],
          strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right], or what auto_pad asks for."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise NetworkError(f"node {node.output[0]!r}: only 2-D {node.op_type} is supported")
        return pads[0], pads[1], pads[2], pads[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    h, w = imp.shape_of(node.input[0])[2:]
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
        raise NetworkError(f"node {node.output[0]!r}: only 2-D {node.op_type} is supported "
                           f"({key}={value})")
    return value[0], value[1]


@_converts("Conv")
def _conv(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    w = imp.const(node.input[1], f"the weights of Conv {node.output[0]!r}")
    if w.ndim != 4:
        raise NetworkError(f"node {node.output[0]!r}: only 2-D Conv is supported "
                           f"(weights of shape {list(w.shape)})")
    kernel = (int(w.shape[2]), int(w.shape[3]))
    strides = _pair_attr(attrs, "strides", node)
    dilations = _pair_attr(attrs, "dilations", node)
    weights = {"weight": w}
    if len(node.input) > 2 and node.input[2]:
        weights["bias"] = imp.const(node.input[2], f"the bias of Conv {node.output[0]!r}")
    imp.emit("conv", [node.input[0]], [node.output[0]], weights, out_channels=int(w.shape[0]),
             kernel=kernel, stride=strides, dilation=dilations,
             padding=_pads(imp, node, attrs, kernel, strides, dilations),
             groups=int(attrs.get("group", 1)), bias="bias" in weights)


@_converts("Relu", "Sigmoid", "HardSwish")
def _unary(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit(node.op_type.lower(), [node.input[0]], [node.output[0]])


@_converts("HardSigmoid")
def _hardsigmoid(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit("hardsigmoid", [node.input[0]], [node.output[0]],
             alpha=float(attrs.get("alpha", 0.2)), beta=float(attrs.get("beta", 0.5)))


@_converts("Clip")
def _clip(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if imp.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        bounds = [float(imp.const(i, "Clip's min and max").reshape(-1)[0]) if i else None
                  for i in list(node.input[1:3]) + [""] * (3 - len(node.input))]
        lo, hi = bounds[0], bounds[1]
    imp.emit("clip", [node.input[0]], [node.output[0]],
             min=None if lo is None else float(lo), max=None if hi is None else float(hi))


@_converts("Identity", "Dropout")
def _identity(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.alias(node)     # at inference Dropout is the identity (a mask output, unused, is dropped)


@_converts("Cast")
def _cast(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("to") != onnx.TensorProto.FLOAT:
        raise NetworkError(f"node {node.output[0]!r}: Cast of an activation to a type other "
                           "than float32 is not supported")
    imp.alias(node)


def _pool_attrs(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, Any]:
    kernel = _pair_attr(attrs, "kernel_shape", node)
    strides = _pair_attr(attrs, "strides", node)
    dilations = _pair_attr(attrs, "dilations", node)
    return {"kernel": kernel, "stride": strides,
            "padding": _pads(imp, node, attrs, kernel, strides, dilations),
            "ceil_mode": bool(attrs.get("ceil_mode", 0))}


@_converts("MaxPool")
def _maxpool(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise NetworkError(f"node {node.output[0]!r}: MaxPool's indices output is not supported")
    if attrs.get("storage_order", 0):
        raise NetworkError(f"node {node.output[0]!r}: MaxPool storage_order=1 is not supported")
    imp.emit("maxpool", [node.input[0]], [node.output[0]], **_pool_attrs(imp, node, attrs),
             dilation=_pair_attr(attrs, "dilations", node))


@_converts("AveragePool")
def _avgpool(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if "dilations" in attrs and tuple(attrs["dilations"]) != (1, 1):
        raise NetworkError(f"node {node.output[0]!r}: dilated AveragePool is not supported")
    imp.emit("avgpool", [node.input[0]], [node.output[0]], **_pool_attrs(imp, node, attrs),
             count_include_pad=bool(attrs.get("count_include_pad", 0)))


@_converts("GlobalAveragePool")
def _gap(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit("globalavgpool", [node.input[0]], [node.output[0]])


@_converts("BatchNormalization")
def _batchnorm(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("training_mode", 0):
        raise NetworkError(f"node {node.output[0]!r}: BatchNormalization in training mode")
    what = f"the statistics of BatchNormalization {node.output[0]!r}"
    gamma, beta, mean, var = (imp.const(i, what).astype(np.float64) for i in node.input[1:5])
    scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    imp.emit("batchnorm", [node.input[0]], [node.output[0]], {"scale": scale, "shift": shift})


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
def _arithmetic(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    op = {"Sum": "add"}.get(node.op_type, node.op_type.lower())
    acts = imp.activations(node)
    consts = [i for i in node.input if i and imp.is_const(i)]
    if op in ("sub", "div") and consts and node.input[0] in consts:
        raise NetworkError(f"node {node.output[0]!r}: {node.op_type} with a constant first "
                           "operand is not supported")
    constant = None
    if consts:
        values = [imp.consts[c].astype(np.float64) for c in consts]
        constant = values[0]
        for v in values[1:]:
            constant = constant + v if op == "add" else constant * v
        if op == "sub":
            constant, op = -constant, "add"
        elif op == "div":
            constant, op = 1.0 / constant, "mul"
    if constant is not None and len(acts) == 1:
        vector = _per_channel(constant, imp.shape_of(acts[0]))
        out_shape = np.broadcast_shapes(imp.shape_of(acts[0]), constant.shape)
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


@_converts("Concat")
def _concat(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if any(imp.is_const(i) for i in node.input if i):
        raise NetworkError(f"node {node.output[0]!r}: Concat of a constant with an activation "
                           "is not supported")
    imp.emit("concat", list(node.input), [node.output[0]], axis=int(attrs["axis"]))


@_converts("Flatten")
def _flatten(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit("flatten", [node.input[0]], [node.output[0]], axis=int(attrs.get("axis", 1)))


def _reshape_to(imp: _Importer, node: onnx.NodeProto, shape: Shape) -> None:
    imp.emit("reshape", [node.input[0]], [node.output[0]], shape=[int(s) for s in shape])


@_converts("Reshape")
def _reshape(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("allowzero", 0):
        raise NetworkError(f"node {node.output[0]!r}: Reshape with allowzero=1 is not supported")
    shape = attrs["shape"] if imp.opset < 5 else imp.const(node.input[1], "Reshape's shape")
    _reshape_to(imp, node, tuple(int(s) for s in shape))


@_converts("Unsqueeze", "Squeeze")
def _squeeze(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = list(imp.shape_of(node.input[0]))
    if imp.opset >= 13 and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in imp.const(node.input[1], f"{node.op_type}'s axes")]
    else:
        axes = [int(a) for a in attrs.get("axes", [])]
    if node.op_type == "Unsqueeze":
        rank = len(shape) + len(axes)
        for a in sorted(a % rank for a in axes):
            shape.insert(a, 1)
    else:
        drop = {a % len(shape) for a in axes} if axes else {i for i, d in enumerate(shape)
                                                            if d == 1}
        shape = [d for i, d in enumerate(shape) if i not in drop]
    _reshape_to(imp, node, tuple(shape))


@_converts("Transpose")
def _transpose(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    perm = attrs.get("perm")
    imp.emit("transpose", [node.input[0]], [node.output[0]],
             perm=None if perm is None else [int(p) for p in perm])


@_converts("Split")
def _split(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axis = int(attrs.get("axis", 0))
    dim = imp.shape_of(node.input[0])[axis]
    if imp.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = [int(s) for s in imp.const(node.input[1], "Split's sizes")]
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        n = int(attrs.get("num_outputs", len(node.output)))
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    imp.emit("split", [node.input[0]], list(node.output), axis=axis, sizes=sizes)


@_converts("Slice")
def _slice(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if imp.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        parts = [imp.const(i, "Slice's starts/ends/axes/steps") if i else None
                 for i in list(node.input[1:5]) + [""] * (5 - len(node.input))]
        starts, ends, axes, steps = parts
    imp.emit("slice", [node.input[0]], [node.output[0]], starts=_ints(starts),
             ends=_ints(ends), axes=_ints(axes), steps=_ints(steps))


def _ints(value: Any) -> list[int] | None:
    return None if value is None else [int(x) for x in np.asarray(value).reshape(-1)]


@_converts("Gemm")
def _gemm(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    b = imp.const(node.input[1], f"Gemm {node.output[0]!r}'s B")
    trans_b = bool(attrs.get("transB", 0))
    n = int(b.shape[0] if trans_b else b.shape[1])
    weights = {"b": b}
    beta = float(attrs.get("beta", 1.0))
    if len(node.input) > 2 and node.input[2]:
        c = imp.const(node.input[2], f"Gemm {node.output[0]!r}'s C")
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            raise NetworkError(f"node {node.output[0]!r}: Gemm's C of shape {list(c.shape)} "
                               "is not a per-output bias")
        weights["c"] = np.broadcast_to(c.reshape(-1), (n,))
    imp.emit("gemm", [node.input[0]], [node.output[0]], weights, out_features=n,
             alpha=float(attrs.get("alpha", 1.0)), beta=beta,
             trans_a=bool(attrs.get("transA", 0)), trans_b=trans_b, bias="c" in weights)


@_converts("MatMul")
def _matmul(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    a, b = node.input[0], node.input[1]
    if imp.is_const(a):
        raise NetworkError(f"node {node.output[0]!r}: MatMul with a constant first operand "
                           "is not supported")
    if imp.is_const(b):
        value = imp.consts[b]
        if value.ndim == 2 and len(imp.shape_of(a)) == 2:
            imp.emit("gemm", [a], [node.output[0]], {"b": value}, out_features=int(value.shape[1]),
                     bias=False)
        else:
            imp.emit("matmul", [a], [node.output[0]], {"constant": value},
                     constant_shape=list(value.shape))
        return
    imp.emit("matmul", [a, b], [node.output[0]])


@_converts("Softmax")
def _softmax(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = imp.shape_of(node.input[0])
    if imp.opset >= 13:
        imp.emit("softmax", [node.input[0]], [node.output[0]], axis=int(attrs.get("axis", -1)))
        return
    axis = int(attrs.get("axis", 1)) % len(shape)
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
def _lrn(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    imp.emit("lrn", [node.input[0]], [node.output[0]], size=int(attrs["size"]),
             alpha=float(attrs.get("alpha", 1e-4)), beta=float(attrs.get("beta", 0.75)),
             bias=float(attrs.get("bias", 1.0)))


# -- folding batch-norm into the convolution before it ------------------------------------------
def _fold_affine(layers: list[Layer], weights: dict[str, dict[str, np.ndarray]],
                 outputs: set[str]) -> list[Layer]:
    """Fold every per-channel affine layer (batchnorm) into the conv (or affine) that alone
    feeds it: w' = w * scale, b' = b * scale + shift. The conv takes over the output's name."""
    consumers: dict[str, int] = {}
    for layer in layers:
        for t in layer["inputs"]:
            consumers[t] = consumers.get(t, 0) + 1
    by_output = {out: layer for layer in layers for out in layer.get("outputs", [layer["name"]])}
    kept: list[Layer] = []
    for layer in layers:
        source = by_output.get(layer["inputs"][0]) if layer["op"] == "batchnorm" else None
        tensor = layer["inputs"][0]
        if (source is None or source["op"] not in ("conv", "batchnorm")
                or consumers.get(tensor, 0) != 1 or tensor in outputs):
            kept.append(layer)
            continue
        scale = weights[layer["name"]]["scale"].astype(np.float64)
        shift = weights[layer["name"]]["shift"].astype(np.float64)
        w = weights[source["name"]]
        if source["op"] == "conv":
            w["weight"] = (w["weight"] * scale[:, None, None, None]).astype(np.float32)
            bias = w.get("bias", np.zeros(len(scale))).astype(np.float64)
            w["bias"] = (bias * scale + shift).astype(np.float32)
            source["bias"] = True
        else:
            w["shift"] = (w["shift"].astype(np.float64) * scale + shift).astype(np.float32)
            w["scale"] = (w["scale"].astype(np.float64) * scale).astype(np.float32)
        out = layer.get("outputs", [layer["name"]])
        source["outputs"] = out
        by_output[out[0]] = source
        del weights[layer["name"]]
    return kept


# -- the entry point --------------------------------------------------------------------------
def load_onnx(source: str | Path | bytes, name: str | None = None,
              input_shapes: dict[str, Shape] | None = None) -> Network:
    """Import an ONNX model (a path or the file's bytes) as a checked `Network`.

    Raises `NetworkError` with one clear message for a corrupt file, external data, or
    operators convplan does not support (all of them, listed).
    """
    if isinstance(source, bytes):
        data, default_name = source, "model"
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise NetworkError(f"cannot read {path}: {error.strerror}") from None
        if size > MAX_ONNX_BYTES:
            raise NetworkError(f"{path} is {size} bytes; the limit is {MAX_ONNX_BYTES}")
        data, default_name = path.read_bytes(), path.stem
    if len(data) > MAX_ONNX_BYTES:
        raise NetworkError(f"the model is {len(data)} bytes; the limit is {MAX_ONNX_BYTES}")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise NetworkError(f"not a valid ONNX file ({type(error).__name__}: {error})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise NetworkError("not a valid ONNX file: it has no graph (truncated or not a model)")
    _refuse_external_data(model)
    network = _Importer(model, name or model.graph.name or default_name).run(input_shapes)
    if not isinstance(source, bytes) and input_shapes is None:
        network.source = Path(source)
    return network


def _refuse_external_data(model: onnx.ModelProto) -> None:
    def tensors(graph: onnx.GraphProto):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from tensors(a.g)
                for g in a.graphs:
                    yield from tensors(g)

    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise NetworkError(f"tensor {tensor.name!r} refers to an external data file; "
                               "convplan only reads self-contained ONNX files")
