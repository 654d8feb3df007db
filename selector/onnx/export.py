"""One IR layer as ONNX nodes (opset 17, or 20 for a model with a Gelu): how a plan's network is
written back out as a model, and how every operator is checked against ONNX's own reference
implementation.

Each layer becomes the nodes that compute exactly what `kernels.operators` computes, with its
weights (and the constant inputs ONNX wants, such as Reshape's shape) as initializers named
``{prefix}/{name}``. Intermediate tensors of a multi-node layer are named ``{prefix}/...`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convplan.kernels import operators
from convplan.selector.network import Network

OPSET = 17
#: The IR version of ONNX 1.12, the release that introduced opset 17 (readable by onnxruntime).
IR_VERSION = 8
#: Operators ONNX has only from a later opset: a model holding one is written in that opset.
LATER_OPSET = {"gelu": 20}
#: The IR version of the release that introduced each opset written.
IR_VERSIONS = {OPSET: IR_VERSION, 20: 9}


def model_opset(ops: Sequence[str]) -> int:
    """The opset a model of these IR operators is written in: 17, unless one needs later."""
    return max([OPSET, *(LATER_OPSET.get(op, OPSET) for op in ops)])


class _Layer:
    """Collects one layer's nodes and initializers."""

    def __init__(self, op: str, attrs: dict[str, Any], inputs: Sequence[str],
                 outputs: Sequence[str], weights: Mapping[str, np.ndarray], prefix: str,
                 dtype: np.dtype, opset: int, shapes: Sequence[Sequence[int]] | None) -> None:
        self.op, self.attrs, self.inputs, self.outputs = op, attrs, list(inputs), list(outputs)
        self.weights, self.prefix, self.dtype, self.opset = weights, prefix, dtype, opset
        self.shapes = None if shapes is None else [tuple(s) for s in shapes]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str) -> str:
        """The initializer holding weight ``name`` (its own dtype), added once."""
        if name not in self.weights:
            raise ValueError(f"{self.op}: weight {name!r} is missing")
        return self.constant(name, np.asarray(self.weights[name]))

    def constant(self, name: str, value: np.ndarray) -> str:
        full = f"{self.prefix}/{name}"
        if all(t.name != full for t in self.initializers):
            self.initializers.append(numpy_helper.from_array(value, full))
        return full

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.constant(name, np.asarray(values, dtype=np.int64))

    def scalar(self, name: str, value: float) -> str:
        return self.constant(name, np.asarray(value, dtype=self.dtype))

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | None = None,
             **attrs: Any) -> None:
        name = f"{self.prefix}/{op_type}" + (f"_{len(self.nodes)}" if self.nodes else "")
        self.nodes.append(helper.make_node(op_type, list(inputs),
                                           list(self.outputs if outputs is None else outputs),
                                           name=name, **attrs))


Exporter = Callable[[_Layer], None]
_EXPORTERS: dict[str, Exporter] = {}


def _exports(*ops: str) -> Callable[[Exporter], Exporter]:
    def decorate(fn: Exporter) -> Exporter:
        for op in ops:
            _EXPORTERS[op] = fn
        return fn
    return decorate


def layer_to_onnx(op: str, attrs: Mapping[str, Any], inputs: list[str], outputs: list[str],
                  weights: Mapping[str, np.ndarray], prefix: str, *,
                  dtype: str | np.dtype = "float32", opset: int | None = None,
                  shapes: Sequence[Sequence[int]] | None = None
                  ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The ONNX nodes computing IR layer ``op`` from ``inputs`` into ``outputs``, and the
    initializers of its weights and constants. ``attrs`` are validated (and normalised) as
    `kernels.operators.make` does; ``dtype`` is the activations' (for Clip's bounds);
    ``opset`` the model's (default: the one `model_opset` gives this operator); ``shapes``
    the inputs' (needed only where ONNX's form depends on the rank: a layer norm over axes
    counted from the front)."""
    if op not in _EXPORTERS:
        raise ValueError(f"no ONNX export for operator {op!r}")
    operator = operators.make(op, **attrs)
    opset = model_opset([op]) if opset is None else opset
    if opset < model_opset([op]):
        raise ValueError(f"{op} needs opset {model_opset([op])}, the model is opset {opset}")
    layer = _Layer(op, dict(operator.attrs), inputs, outputs, weights, prefix, np.dtype(dtype),
                   opset, shapes)
    _EXPORTERS[op](layer)
    return layer.nodes, layer.initializers


# -- convolution, pooling, normalisation ---------------------------------------------------------
def _window(attrs: Mapping[str, Any], dilation: bool = True) -> dict[str, Any]:
    out = {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["stride"]),
           "pads": list(attrs["padding"])}  # (top, left, bottom, right) is ONNX's order too
    if dilation:
        out["dilations"] = list(attrs["dilation"])
    return out


@_exports("conv")
def _conv(layer: _Layer) -> None:
    a = layer.attrs
    inputs = [layer.inputs[0], layer.weight("weight")]
    if a["bias"]:
        inputs.append(layer.weight("bias"))
    layer.node("Conv", inputs, **_window(a), group=a["groups"])


@_exports("convtranspose")
def _convtranspose(layer: _Layer) -> None:
    a = layer.attrs
    inputs = [layer.inputs[0], layer.weight("weight")]
    if a["bias"]:
        inputs.append(layer.weight("bias"))
    layer.node("ConvTranspose", inputs, **_window(a), group=a["groups"],
               output_padding=list(a["output_padding"]))


@_exports("maxpool")
def _maxpool(layer: _Layer) -> None:
    a = layer.attrs
    layer.node("MaxPool", layer.inputs, **_window(a), ceil_mode=int(a["ceil_mode"]))


@_exports("avgpool")
def _avgpool(layer: _Layer) -> None:
    a = layer.attrs
    layer.node("AveragePool", layer.inputs, **_window(a, dilation=False),
               ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))


@_exports("globalavgpool")
def _globalavgpool(layer: _Layer) -> None:
    layer.node("GlobalAveragePool", layer.inputs)


@_exports("batchnorm")
def _batchnorm(layer: _Layer) -> None:
    """BatchNormalization with mean 0, variance 1 and epsilon 0 is x * scale + shift exactly
    (x / sqrt(1) = x), for any rank, which Mul/Add constants could not be without the rank."""
    scale = np.asarray(layer.weights["scale"])
    zeros, ones = np.zeros_like(scale), np.ones_like(scale)
    layer.node("BatchNormalization",
               [layer.inputs[0], layer.weight("scale"), layer.weight("shift"),
                layer.constant("mean", zeros), layer.constant("var", ones)], epsilon=0.0)


@_exports("layernorm")
def _layernorm(layer: _Layer) -> None:
    """LayerNormalization normalises the trailing axes from ``axis``: other axes are moved to
    the front first (Transpose), the order of the normalised ones kept, and moved back."""
    a = layer.attrs
    inputs = [layer.weight("scale"), *([layer.weight("bias")] if a["bias"] else [])]
    trailing = sorted(a["axes"]) == list(range(-len(a["axes"]), 0))
    if trailing:
        layer.node("LayerNormalization", [layer.inputs[0], *inputs], axis=-len(a["axes"]),
                   epsilon=a["epsilon"])
        return
    if layer.shapes is None:
        raise ValueError("layernorm over axes counted from the front needs the input's shape")
    rank = len(layer.shapes[0])
    axes = operators.make("layernorm", **a).normalized(rank)
    perm = [i for i in range(rank) if i not in axes] + list(axes)
    inverse = [perm.index(i) for i in range(rank)]
    moved, normed = f"{layer.prefix}/moved", f"{layer.prefix}/normed"
    layer.node("Transpose", [layer.inputs[0]], [moved], perm=perm)
    layer.node("LayerNormalization", [moved, *inputs], [normed], axis=rank - len(axes),
               epsilon=a["epsilon"])
    layer.node("Transpose", [normed], perm=inverse)


@_exports("instancenorm")
def _instancenorm(layer: _Layer) -> None:
    layer.node("InstanceNormalization",
               [layer.inputs[0], layer.weight("scale"), layer.weight("bias")],
               epsilon=layer.attrs["epsilon"])


@_exports("pad")
def _pad(layer: _Layer) -> None:
    a = layer.attrs
    layer.node("Pad", [layer.inputs[0], layer.ints("pads", a["pads"]),
                       layer.scalar("value", a["value"])], mode=a["mode"])


@_exports("resize")
def _resize(layer: _Layer) -> None:
    """Resize with scales [1, 1, sh, sw] or sizes [N, C, h, w] (which need the input's N and
    C), an empty roi."""
    a = layer.attrs
    roi = layer.constant("roi", np.zeros(0, np.float32))
    if a["scales"] is not None:
        inputs = [layer.inputs[0], roi,
                  layer.constant("scales", np.asarray([1, 1, *a["scales"]], np.float32))]
    else:
        if layer.shapes is None:
            raise ValueError("resize to sizes needs the input's shape")
        n, c = layer.shapes[0][:2]
        inputs = [layer.inputs[0], roi, "", layer.ints("sizes", [n, c, *a["sizes"]])]
    layer.node("Resize", inputs, mode=a["mode"], coordinate_transformation_mode=a["coordinates"],
               nearest_mode=a["nearest"])


@_exports("lrn")
def _lrn(layer: _Layer) -> None:
    a = layer.attrs
    layer.node("LRN", layer.inputs, size=a["size"], alpha=a["alpha"], beta=a["beta"],
               bias=a["bias"])


@_exports("softmax")
def _softmax(layer: _Layer) -> None:
    layer.node("Softmax", layer.inputs, axis=layer.attrs["axis"])


# -- reductions ----------------------------------------------------------------------------------
_REDUCE = {"reducesum": ("ReduceSum", 13), "reducemean": ("ReduceMean", 18),
           "reducemax": ("ReduceMax", 18), "reducel2": ("ReduceL2", 18)}


@_exports(*_REDUCE)
def _reduce(layer: _Layer) -> None:
    """Axes as an input from the opset that made them one (13 for ReduceSum, 18 for the
    others), an attribute before; none for every axis."""
    op_type, since = _REDUCE[layer.op]
    axes = layer.attrs["axes"]
    keepdims = int(layer.attrs["keepdims"])
    if axes is None:
        layer.node(op_type, layer.inputs, keepdims=keepdims)
    elif layer.opset >= since:
        layer.node(op_type, [layer.inputs[0], layer.ints("axes", axes)], keepdims=keepdims)
    else:
        layer.node(op_type, layer.inputs, axes=list(axes), keepdims=keepdims)


# -- element-wise -------------------------------------------------------------------------------
_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "hardswish": "HardSwish",
          "identity": "Identity", "erf": "Erf", "sqrt": "Sqrt"}


@_exports(*_UNARY)
def _unary(layer: _Layer) -> None:
    layer.node(_UNARY[layer.op], layer.inputs)


@_exports("hardsigmoid")
def _hardsigmoid(layer: _Layer) -> None:
    layer.node("HardSigmoid", layer.inputs, alpha=layer.attrs["alpha"], beta=layer.attrs["beta"])


@_exports("leakyrelu", "elu")
def _alpha_unit(layer: _Layer) -> None:
    layer.node({"leakyrelu": "LeakyRelu", "elu": "Elu"}[layer.op], layer.inputs,
               alpha=layer.attrs["alpha"])


@_exports("pow")
def _pow(layer: _Layer) -> None:
    layer.node("Pow", [layer.inputs[0], layer.scalar("exponent", layer.attrs["exponent"])])


@_exports("selu")
def _selu(layer: _Layer) -> None:
    layer.node("Selu", layer.inputs, alpha=layer.attrs["alpha"], gamma=layer.attrs["gamma"])


@_exports("gelu")
def _gelu(layer: _Layer) -> None:
    layer.node("Gelu", layer.inputs, approximate=layer.attrs["approximate"])


@_exports("prelu")
def _prelu(layer: _Layer) -> None:
    layer.node("PRelu", [layer.inputs[0], layer.weight("slope")])


@_exports("clip")
def _clip(layer: _Layer) -> None:
    lo, hi = layer.attrs["min"], layer.attrs["max"]
    inputs = [layer.inputs[0], "" if lo is None else layer.scalar("min", lo)]
    if hi is not None:
        inputs.append(layer.scalar("max", hi))
    layer.node("Clip", inputs if inputs[-1] else inputs[:1])


_BINARY = {"add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div"}


@_exports(*_BINARY)
def _binary(layer: _Layer) -> None:
    """A left-to-right chain of binary nodes, the constant last: the order `run` uses."""
    operands = list(layer.inputs)
    if layer.attrs["constant_shape"] is not None:
        operands.append(layer.weight("constant"))
    current = operands[0]
    for i, operand in enumerate(operands[1:], start=1):
        last = i == len(operands) - 1
        out = layer.outputs if last else [f"{layer.prefix}/partial{i}"]
        layer.node(_BINARY[layer.op], [current, operand], out)
        current = out[0]


# -- linear -------------------------------------------------------------------------------------
@_exports("gemm")
def _gemm(layer: _Layer) -> None:
    a = layer.attrs
    inputs = [layer.inputs[0], layer.weight("b")]
    if a["bias"]:
        inputs.append(layer.weight("c"))
    layer.node("Gemm", inputs, alpha=a["alpha"], beta=a["beta"], transA=int(a["trans_a"]),
               transB=int(a["trans_b"]))


@_exports("matmul")
def _matmul(layer: _Layer) -> None:
    inputs = list(layer.inputs)
    if layer.attrs["constant_shape"] is not None:
        inputs.append(layer.weight("constant"))
    layer.node("MatMul", inputs)


# -- shapes -------------------------------------------------------------------------------------
@_exports("concat")
def _concat(layer: _Layer) -> None:
    layer.node("Concat", layer.inputs, axis=layer.attrs["axis"])


@_exports("split")
def _split(layer: _Layer) -> None:
    a = layer.attrs
    layer.node("Split", [layer.inputs[0], layer.ints("split", a["sizes"])], axis=a["axis"])


@_exports("flatten")
def _flatten(layer: _Layer) -> None:
    layer.node("Flatten", layer.inputs, axis=layer.attrs["axis"])


@_exports("reshape")
def _reshape(layer: _Layer) -> None:
    layer.node("Reshape", [layer.inputs[0], layer.ints("shape", layer.attrs["shape"])],
               allowzero=0)


@_exports("transpose")
def _transpose(layer: _Layer) -> None:
    perm = layer.attrs["perm"]
    layer.node("Transpose", layer.inputs, **({} if perm is None else {"perm": list(perm)}))


@_exports("expand")
def _expand(layer: _Layer) -> None:
    layer.node("Expand", [layer.inputs[0], layer.ints("shape", layer.attrs["shape"])])


@_exports("tile")
def _tile(layer: _Layer) -> None:
    layer.node("Tile", [layer.inputs[0], layer.ints("repeats", layer.attrs["repeats"])])


@_exports("slice")
def _slice(layer: _Layer) -> None:
    a = layer.attrs
    inputs = [layer.inputs[0], layer.ints("starts", a["starts"]), layer.ints("ends", a["ends"])]
    if a["axes"] is not None or a["steps"] is not None:
        axes = a["axes"] if a["axes"] is not None else range(len(a["starts"]))
        inputs.append(layer.ints("axes", list(axes)))
    if a["steps"] is not None:
        inputs.append(layer.ints("steps", a["steps"]))
    layer.node("Slice", inputs)


# -- a whole model of one layer -------------------------------------------------------------------
def single_layer_model(op: str, attrs: Mapping[str, Any], input_shapes: Sequence[Sequence[int]],
                       weights: Mapping[str, np.ndarray],
                       dtype: str | np.dtype = "float32") -> onnx.ModelProto:
    """A checked ONNX model computing one layer: inputs ``x0, x1, ...`` of these (NCHW)
    shapes and ``dtype``, outputs ``y0, y1, ...``."""
    operator = operators.make(op, **attrs)
    shapes = [tuple(int(d) for d in s) for s in input_shapes]
    output_shapes = operator.output_shapes(shapes)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [f"x{i}" for i in range(len(shapes))]
    outputs = [f"y{i}" for i in range(len(output_shapes))]
    nodes, initializers = layer_to_onnx(op, operator.attrs, inputs, outputs, weights, op,
                                        dtype=dtype, shapes=shapes)
    return _checked_model(nodes, initializers, f"single {op}",
                          dict(zip(inputs, shapes, strict=True)),
                          dict(zip(outputs, output_shapes, strict=True)), elem,
                          model_opset([op]))


def _checked_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto],
                   name: str, inputs: Mapping[str, Sequence[int]],
                   outputs: Mapping[str, Sequence[int]], elem: int,
                   opset: int) -> onnx.ModelProto:
    """A model of these nodes in ``opset``, with typed inputs and outputs, checked."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in outputs.items()],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="convplan")
    model.ir_version = IR_VERSIONS[opset]
    # Not full_check: ONNX's shape inference for opset < 22 pools with plain ceil in ceil_mode,
    # keeping a last window that starts beyond the padding, which onnxruntime, the reference
    # evaluator and PyTorch (and opset 22's inference) all drop.
    onnx.checker.check_model(model)
    return model


# -- a whole network ------------------------------------------------------------------------------
def network_to_onnx(network: Network) -> onnx.ModelProto:
    """``network`` (description and weights) as an ONNX model with the same tensor names."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype("float32"))
    opset = model_opset([node.op for node in network.nodes])
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    for node in network.nodes:
        n, i = layer_to_onnx(node.op, node.operator.attrs, node.inputs, node.outputs,
                             node.weights, node.name, opset=opset,
                             shapes=[network.shapes[t] for t in node.inputs])
        nodes += n
        initializers += i
    return _checked_model(nodes, initializers, network.name, network.inputs,
                          {k: network.shapes[k] for k in network.outputs}, elem, opset)
