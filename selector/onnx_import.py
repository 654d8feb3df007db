"""ONNX import: a real model file as a convplan `Network`.

Everything that only depends on constants (weights made by ConstantOfShape, Shape of a tensor
whose shape is known, the arithmetic on such shapes) is folded at import, by this module's own
NumPy code for a fixed list of operators, each output's size computed and checked against the
limits before it is allocated; what is left must be an operator convplan runs. Batch-norm (and a
per-channel Mul/Add by constants) after a convolution is folded into the convolution's weights.

A file is untrusted: every node is checked against its operator's ONNX schema (input and output
counts, required attributes, attribute types) before it is read; sparse tensors, subgraphs
(If, Loop, Scan) and tensors that refer to external data files are refused before anything could
read them (a model must never make convplan read other files); every failure is one short
`NetworkError` that names the node.
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.defs
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, numpy_helper

from convplan.kernels import operators
from convplan.kernels.operators import Shape

from .network import LimitError, Limits, Network, NetworkError

#: ONNX files larger than this are refused before parsing (the biggest CNNs are ~0.6 GB).
MAX_ONNX_BYTES = 1 << 30
#: Default limit of one tensor (an activation, an initializer or a folded constant): 256 Mi
#: float32 elements.
MAX_TENSOR_BYTES = 1 << 30
#: Default limit of all the constants an import holds (initializers, constants and everything
#: folded from them) and of the weights the network keeps (VGG-19's are ~550 MB).
MAX_WEIGHT_BYTES = 1 << 30
#: The most dimensions a tensor may have (NumPy's own limit is 64).
MAX_RANK = 32
#: Values and names echoed in a message are cut to this many characters.
ECHO_CHARS = 100

Layer = dict[str, Any]

#: The tensor element types convplan reads.
_DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.INT8: np.dtype(np.int8),
    TensorProto.INT16: np.dtype(np.int16), TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64), TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.UINT16: np.dtype(np.uint16), TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.UINT64: np.dtype(np.uint64), TensorProto.BOOL: np.dtype(np.bool_),
}
#: Where a tensor without raw_data keeps its values (one entry per element).
_TYPED_FIELD = {TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data",
                TensorProto.INT64: "int64_data", TensorProto.UINT32: "uint64_data",
                TensorProto.UINT64: "uint64_data"}
_ADDRESS = re.compile(r"\s*(object )?at 0x[0-9a-fA-F]+")


def _short(value: Any) -> str:
    """``value`` for a message: its repr (a string as it is), no heap address, at most
    ECHO_CHARS characters."""
    if isinstance(value, np.ndarray):
        text = f"array of shape {list(value.shape)}"
    else:
        text = value if isinstance(value, str) else repr(value)
    text = _ADDRESS.sub("", text)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 3] + "..."


def _q(name: str) -> str:
    return repr(_short(name))


def _label(node: onnx.NodeProto) -> str:
    """How a message names a node: 'name' (OpType)."""
    name = node.name or (node.output[0] if len(node.output) else "") or "?"
    return f"{_q(name)} ({_short(node.op_type)})"


def _type_name(enum: Any, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return f"type {value}"


class _Importer:
    def __init__(self, model: onnx.ModelProto, name: str, max_tensor_bytes: int,
                 max_weight_bytes: int) -> None:
        self.model = model
        self.name = name
        self.opset = _opset(model)
        self.max_tensor_bytes = max_tensor_bytes
        self.max_weight_bytes = max_weight_bytes
        self.const_bytes = 0            # every constant held so far
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self.layers: list[Layer] = []
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.unsupported: dict[str, int] = {}
        self.renamed: dict[str, str] = {}   # ONNX tensor -> the tensor that carries its value
        self.placeholders: set[str] = set()  # outputs of nodes skipped after an unsupported one
        self.unreadable: dict[str, str] = {}  # outputs convplan does not compute -> why

    # -- limits ------------------------------------------------------------------------------
    def reserve(self, what: str, shape: Sequence[int], dtype: Any, *, view: bool = False) -> None:
        """Check a constant of this shape and type against the limits before it is made
        (a view costs nothing more)."""
        shape = [int(d) for d in shape]
        if len(shape) > MAX_RANK:
            raise NetworkError(f"{what} would have rank {len(shape)}; at most {MAX_RANK}")
        if min(shape, default=0) < 0:
            raise NetworkError(f"{what} would have a negative dimension {_short(shape)}")
        count = math.prod(shape)
        nbytes = count * np.dtype(dtype).itemsize
        if nbytes > self.max_tensor_bytes:
            raise LimitError(f"{what} would hold {count} elements ({nbytes} bytes); one tensor "
                             f"may have at most {self.max_tensor_bytes} bytes")
        if view:
            return
        if self.const_bytes + nbytes > self.max_weight_bytes:
            raise LimitError(f"{what}: the model's constants would exceed "
                             f"{self.max_weight_bytes} bytes (the weight limit)")
        self.const_bytes += nbytes

    def decode(self, tensor: TensorProto, what: str) -> np.ndarray:
        """A TensorProto as an array: its type, dims and data lengths checked, and its size
        against the limits, before anything is decoded."""
        dtype = _DTYPES.get(tensor.data_type)
        if dtype is None:
            raise NetworkError(f"{what} has element type "
                               f"{_type_name(TensorProto.DataType, tensor.data_type)}, which "
                               "convplan does not read")
        dims = [int(d) for d in tensor.dims]
        self.reserve(what, dims, dtype)
        count = math.prod(dims)
        if tensor.HasField("segment"):
            raise NetworkError(f"{what} is a segment of a tensor (not supported)")
        if tensor.HasField("raw_data"):
            have, want = len(tensor.raw_data), count * dtype.itemsize
        else:
            have = len(getattr(tensor, _TYPED_FIELD.get(tensor.data_type, "int32_data")))
            want = count
        if have != want or len(tensor.string_data):
            raise NetworkError(f"{what} declares shape {_short(dims)} but holds {have} "
                               f"{'bytes' if tensor.HasField('raw_data') else 'values'}, "
                               f"not {want}")
        try:
            return np.asarray(numpy_helper.to_array(tensor)).astype(dtype, copy=False)
        except (ValueError, TypeError) as error:
            raise NetworkError(f"{what} cannot be decoded: {_short(str(error))}") from None

    def check_activation(self, tensor: str, shape: Shape, where: str) -> None:
        if len(shape) > MAX_RANK:
            raise NetworkError(f"{where}: {_q(tensor)} would have rank {len(shape)}; at most "
                               f"{MAX_RANK}")
        if min(shape, default=1) < 1:
            raise NetworkError(f"{where}: {_q(tensor)} would have shape {_short(list(shape))} "
                               "(empty)")
        nbytes = 4 * math.prod(shape)
        if nbytes > self.max_tensor_bytes:
            raise LimitError(f"{where}: {_q(tensor)} of shape {_short(list(shape))} would take "
                             f"{nbytes} bytes; one tensor may have at most "
                             f"{self.max_tensor_bytes}")

    # -- tensors -----------------------------------------------------------------------------
    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def known(self, tensor: str) -> bool:
        return (tensor in self.consts or self.tensor(tensor) in self.shapes
                or tensor in self.placeholders or tensor in self.unreadable)

    def const(self, tensor: str, what: str) -> np.ndarray:
        if tensor not in self.consts:
            raise NetworkError(f"{what} must be a constant (an initializer or computed from "
                               f"constants), but {_q(tensor)} is computed from the input")
        return self.consts[tensor]

    def float_const(self, tensor: str, what: str, exact: bool = True) -> np.ndarray:
        """A constant that meets float32 activations: float32 (``exact``) or another float."""
        value = self.const(tensor, what)
        if value.dtype != np.float32 and (exact or value.dtype.kind != "f"):
            raise NetworkError(f"{what} ({_q(tensor)}) is {value.dtype}, but the activations "
                               "are float32")
        return value

    def tensor(self, name: str) -> str:
        return self.renamed.get(name, name)

    def emit(self, op: str, inputs: list[str], outputs: list[str], weights: dict | None = None,
             name: str | None = None, **attrs: Any) -> None:
        """Add one IR layer and infer its output shapes (the check happens here, once)."""
        name = name or outputs[0]
        inputs = [self.tensor(t) for t in inputs]
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (weights or {}).items()}
        try:
            operator = operators.make(op, **attrs)
            operator.check_arity(len(inputs))
            in_shapes = [self.shape_of(t) for t in inputs]
            shapes = operator.output_shapes(in_shapes)
            operator.check_weights(in_shapes, arrays)
        except ValueError as error:
            raise NetworkError(f"node {_q(name)} ({op}): {_short(str(error))}") from None
        if len(shapes) != len(outputs):
            raise NetworkError(f"node {_q(name)} ({op}) produces {len(shapes)} output(s), but "
                               f"{len(outputs)} are named")
        for out, shape in zip(outputs, shapes, strict=True):
            shape = tuple(int(d) for d in shape)
            self.check_activation(out, shape, f"node {_q(name)} ({op})")
            self.shapes[out] = shape
        layer: Layer = {"name": name, "op": op, "inputs": inputs}
        if outputs != [name]:
            layer["outputs"] = outputs
        layer.update(attrs)
        self.layers.append(layer)
        if arrays:
            self.weights[name] = arrays

    # -- the walk ----------------------------------------------------------------------------
    def run(self, input_shapes: dict[str, Shape] | None) -> Network:
        graph = self.model.graph
        # Operators convplan neither runs nor folds are named before anything is decoded or
        # folded: a 2 GiB constant feeding a Cos must not be built to be refused.
        for node in graph.node:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                self.unsupported[f"{node.domain}.{op}"] = \
                    self.unsupported.get(f"{node.domain}.{op}", 0) + 1
            elif op not in _FOLDERS and op not in _CONVERTERS and op not in _CONTROL_FLOW:
                self.unsupported[op] = self.unsupported.get(op, 0) + 1
        if self.unsupported:
            self.refuse_unsupported()
        for init in graph.initializer:
            if init.name in self.consts:
                raise NetworkError(f"initializer {_q(init.name)} is given twice")
            self.consts[init.name] = self.decode(init, f"initializer {_q(init.name)}")
        inputs: dict[str, Shape] = {}
        given = dict(input_shapes or {})
        for value in graph.input:
            if value.name in self.consts:
                continue
            if value.name in inputs or not value.name:
                raise NetworkError(f"input {_q(value.name)} is declared twice or unnamed")
            shape = _value_shape(value, given.pop(value.name, None))
            self.check_activation(value.name, shape, "input")
            inputs[value.name] = shape
            self.shapes[value.name] = shape
        if given:
            raise NetworkError(f"input_shapes names {_q(next(iter(given)))}, which is not an "
                               "input of the model")
        if not inputs:
            raise NetworkError("the model has no input that is not an initializer")
        for node in graph.node:
            self.node(node)
        if self.unsupported:
            self.refuse_unsupported()
        outputs = [o.name for o in graph.output]
        if not outputs:
            raise NetworkError("the model declares no output")
        if len(set(outputs)) != len(outputs):
            raise NetworkError("the model declares an output twice")
        for o in outputs:
            if self.tensor(o) not in self.shapes:
                what = "a constant, not computed from the input" if o in self.consts else \
                    "not produced by any node"
                raise NetworkError(f"model output {_q(o)} is {what}")
            if self.tensor(o) != o:     # an output that is an alias keeps its ONNX name
                self.emit("identity", [o], [o], name=o)
        layers = _fold_affine(self.layers, self.weights, set(outputs))
        description = {"name": self.name, "inputs": [{"name": k, "shape": list(v)}
                                                     for k, v in inputs.items()],
                       "layers": layers, "outputs": outputs}
        if not layers:
            raise NetworkError("the model has no operator that depends on its input")
        kept = sum(w.nbytes for ws in self.weights.values() for w in ws.values())
        if kept > self.max_weight_bytes:
            raise LimitError(f"the network's weights take {kept} bytes; at most "
                             f"{self.max_weight_bytes} are allowed")
        limits = Limits(max_tensor_bytes=self.max_tensor_bytes,
                        max_weight_bytes=self.max_weight_bytes)
        return Network.from_description(description, self.weights, limits=limits)

    def node(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op in _CONTROL_FLOW and node.domain in ("", "ai.onnx"):
            raise NetworkError(f"node {_label(node)}: control flow ({op}) is not supported")
        for a in node.attribute:
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) or a.HasField("g") \
                    or len(a.graphs):
                raise NetworkError(f"node {_label(node)} has a subgraph ({_q(a.name)}); "
                                   "control flow (If, Loop, Scan) is not supported")
        if not len(node.output):
            raise NetworkError(f"node {_label(node)} has no output")
        named = [o for o in node.output if o]
        if len(set(named)) != len(named):
            raise NetworkError(f"node {_label(node)} names an output twice")
        for out in node.output:
            if out and (self.known(out) or out in self.renamed):
                raise NetworkError(f"node {_label(node)}: tensor {_q(out)} is produced twice "
                                   "(or is an input or initializer)")
        present = [i for i in node.input if i]
        for i in present:
            if not self.known(i):
                raise NetworkError(f"node {_label(node)} reads {_q(i)}, which no earlier node "
                                   "produces (nodes must be in topological order)")
            if i in self.unreadable:
                raise NetworkError(f"node {_label(node)} reads {_q(i)}, "
                                   f"{self.unreadable[i]}, which convplan does not compute")
        foldable = _FOLDERS.get(op) if node.domain in ("", "ai.onnx") else None
        convert = _CONVERTERS.get(op) if node.domain in ("", "ai.onnx") else None
        if foldable is None and convert is None:
            self.skip(node, f"{node.domain}.{op}" if node.domain not in ("", "ai.onnx") else op)
            return
        _check_schema(node, self.opset)
        if self.unsupported:        # keep walking only to collect every unsupported operator
            self.skip(node, None)
            return
        if any(i in self.placeholders for i in present):
            self.skip(node, None)
            return
        attrs = self.attributes(node)
        if all(self.is_const(i) for i in present):
            if foldable is None:
                raise NetworkError(f"node {_label(node)} computes only from constants, and "
                                   f"convplan does not fold {_short(op)} at import")
            results = foldable(self, node, attrs, [self.consts[i] if i else None
                                                   for i in node.input])
            for out, value in zip(node.output, results, strict=False):
                if out:
                    self.consts[out] = value
            return
        if op == "Shape":
            self.fold_shape(node, attrs)
            return
        if convert is None:
            self.skip(node, op)     # e.g. Gather or Tile of an activation
            return
        if op not in _CONSTANT_FIRST and self.is_const(node.input[0]):
            raise NetworkError(f"node {_label(node)}: its first input {_q(node.input[0])} is a "
                               "constant and another is computed from the input (not "
                               "supported)")
        try:
            convert(self, node, attrs)
        except NetworkError as error:
            if "node " in str(error):
                raise
            raise NetworkError(f"node {_label(node)}: {error}") from None
        for out in node.output[:1]:
            if not self.known(out):
                raise NetworkError(f"node {_label(node)}: output {_q(out)} was not produced")

    def refuse_unsupported(self) -> None:
        items = sorted(self.unsupported.items())
        listed = ", ".join(f"{_short(op)} (x{n})" if n > 1 else _short(op)
                           for op, n in items[:8])
        if len(items) > 8:
            listed += f" and {len(items) - 8} more"
        raise NetworkError(f"the model uses operators convplan does not support: {listed}")

    def skip(self, node: onnx.NodeProto, unsupported: str | None) -> None:
        if unsupported is not None:
            self.unsupported[unsupported] = self.unsupported.get(unsupported, 0) + 1
        self.placeholders.update(o for o in node.output if o)

    def attributes(self, node: onnx.NodeProto) -> dict[str, Any]:
        """The node's attributes as Python values (their types already match the schema)."""
        out: dict[str, Any] = {}
        for a in node.attribute:
            kind = a.type
            if kind == AttributeProto.FLOAT:
                value: Any = float(a.f)
            elif kind == AttributeProto.INT:
                value = int(a.i)
            elif kind == AttributeProto.STRING:
                value = a.s.decode("utf-8", "replace")
            elif kind == AttributeProto.TENSOR:
                value = self.decode(a.t, f"attribute {_q(a.name)} of node {_label(node)}")
            elif kind == AttributeProto.FLOATS:
                value = [float(v) for v in a.floats]
            elif kind == AttributeProto.INTS:
                value = [int(v) for v in a.ints]
            elif kind == AttributeProto.STRINGS:
                value = [s.decode("utf-8", "replace") for s in a.strings]
            else:
                raise NetworkError(f"node {_label(node)}: attribute {_q(a.name)} of type "
                                   f"{_type_name(AttributeProto.AttributeType, kind)} is not "
                                   "supported")
            out[a.name] = value
        return out

    def fold_shape(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        shape = self.shape_of(node.input[0])
        start, end = attrs.get("start", 0), attrs.get("end")
        self.consts[node.output[0]] = np.array(shape[slice(start, end)], dtype=np.int64)

    # -- helpers for the converters ----------------------------------------------------------
    def activations(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and not self.is_const(i)]

    def alias(self, node: onnx.NodeProto) -> None:
        """The node's output is its input (Identity, Dropout at inference)."""
        self.renamed[node.output[0]] = self.tensor(node.input[0])

    def shape_of(self, tensor: str) -> Shape:
        name = self.tensor(tensor)
        if name not in self.shapes:
            raise NetworkError(f"{_q(tensor)} is a constant where convplan needs a tensor "
                               "computed from the input")
        return self.shapes[name]


#: Converters that accept a constant first input (they check the others themselves).
_CONSTANT_FIRST = {"Add", "Sum", "Mul", "Sub", "Div", "Concat", "MatMul"}
#: Operators with subgraphs: never folded, never run.
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}


def _opset(model: onnx.ModelProto) -> int:
    versions = [int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")]
    if len(versions) > 1:
        raise NetworkError("the model imports the default ONNX opset twice")
    version = versions[0] if versions else 1
    latest = onnx.defs.onnx_opset_version()
    if not 1 <= version <= latest:
        raise NetworkError(f"the model asks for ONNX opset {_short(version)}; this onnx knows "
                           f"opsets 1-{latest}")
    return version


_SINGLE = onnx.defs.OpSchema.FormalParameterOption.Single


def _check_schema(node: onnx.NodeProto, opset: int) -> None:
    """The node against its operator's ONNX schema at the model's opset: input and output
    counts, required inputs and attributes, attribute names and types."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        raise NetworkError(f"node {_label(node)}: {_short(node.op_type)} is not an operator "
                           f"of ONNX opset {opset}") from None
    for kind, names, params, lo, hi in (
            ("input", node.input, schema.inputs, schema.min_input, schema.max_input),
            ("output", node.output, schema.outputs, schema.min_output, schema.max_output)):
        if not lo <= len(names) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi > 1 << 20 else f"{lo}-{hi}"
            raise NetworkError(f"node {_label(node)} has {len(names)} {kind}(s); "
                               f"{_short(node.op_type)} takes {want}")
        for i, name in enumerate(names):
            param = params[min(i, len(params) - 1)]
            if not name and param.option == _SINGLE:
                raise NetworkError(f"node {_label(node)}: {kind} {i} ({param.name}) is "
                                   "required but empty")
    seen: set[str] = set()
    for a in node.attribute:
        spec = schema.attributes.get(a.name)
        if spec is None:
            raise NetworkError(f"node {_label(node)}: {_short(node.op_type)} (opset {opset}) "
                               f"has no attribute {_q(a.name)}")
        if a.name in seen:
            raise NetworkError(f"node {_label(node)}: attribute {_q(a.name)} is given twice")
        seen.add(a.name)
        if a.ref_attr_name:
            raise NetworkError(f"node {_label(node)}: attribute {_q(a.name)} refers to a "
                               "function's attribute outside a function")
        if a.type != int(spec.type):
            raise NetworkError(f"node {_label(node)}: attribute {_q(a.name)} must be "
                               f"{_type_name(AttributeProto.AttributeType, int(spec.type))}, "
                               f"not {_type_name(AttributeProto.AttributeType, a.type)}")
    for name, spec in schema.attributes.items():
        if spec.required and name not in seen:
            raise NetworkError(f"node {_label(node)}: the required attribute {_q(name)} is "
                               "missing")


def _value_shape(value: onnx.ValueInfoProto, override: Shape | None) -> Shape:
    t = value.type
    if not t.HasField("tensor_type"):
        raise NetworkError(f"input {_q(value.name)} is not a tensor")
    if t.tensor_type.elem_type != TensorProto.FLOAT:
        kind = _type_name(TensorProto.DataType, t.tensor_type.elem_type)
        raise NetworkError(f"input {_q(value.name)} is {kind}; convplan runs float32 models")
    if override is not None:
        try:
            dims = [int(d) for d in override]
        except (TypeError, ValueError):
            raise NetworkError(f"the shape given for input {_q(value.name)} is not a list of "
                               "ints") from None
        if not dims or min(dims) < 1:
            raise NetworkError(f"the shape given for input {_q(value.name)} is "
                               f"{_short(dims)}; every dimension must be positive")
        return tuple(dims)
    dims = []
    for i, d in enumerate(t.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)      # a symbolic batch: plan for one image
        else:
            raise NetworkError(f"input {_q(value.name)} has a symbolic dimension {i} "
                               f"({_short(d.dim_param or '?')}); give its shape")
    if not dims:
        raise NetworkError(f"input {_q(value.name)} has no shape")
    return tuple(dims)


# -- constant folding: a fixed list of operators, each output's size checked before it is made
Folder = Callable[[_Importer, onnx.NodeProto, dict[str, Any], list[np.ndarray | None]],
                  list[np.ndarray]]
_FOLDERS: dict[str, Folder] = {}


def _folds(*ops: str) -> Callable[[Folder], Folder]:
    def decorate(fn: Folder) -> Folder:
        for op in ops:
            _FOLDERS[op] = fn
        return fn
    return decorate


def _axis(node: onnx.NodeProto, axis: int, rank: int, what: str = "axis",
          inclusive: bool = False) -> int:
    """An ONNX axis (negative counts from the end) as an index, or a NetworkError."""
    index = axis + rank if axis < 0 else axis
    if not 0 <= index < rank + (1 if inclusive else 0):
        raise NetworkError(f"node {_label(node)}: {what} {_short(axis)} is out of range for a "
                           f"rank-{rank} input")
    return index


def _axes(node: onnx.NodeProto, axes: Sequence[int], rank: int) -> list[int]:
    out = [_axis(node, int(a), rank) for a in axes]
    if len(set(out)) != len(out):
        raise NetworkError(f"node {_label(node)}: axes {_short(list(axes))} repeat an axis")
    return out


def _int_vector(node: onnx.NodeProto, value: np.ndarray | None, what: str) -> list[int]:
    """A 1-D integer tensor (a shape, axes, repeats ...) as a list of ints."""
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1:
        shown = "missing" if value is None else f"{value.dtype} of shape {list(value.shape)}"
        raise NetworkError(f"node {_label(node)}: {what} must be a 1-D integer tensor, not "
                           f"{shown}")
    if value.size > 1 << 16:
        raise NetworkError(f"node {_label(node)}: {what} has {value.size} values")
    return [int(v) for v in value.reshape(-1)]


def _scalar(node: onnx.NodeProto, value: np.ndarray | None, what: str) -> np.ndarray:
    if value is None or value.size != 1:
        raise NetworkError(f"node {_label(node)}: {what} must hold one value")
    return value.reshape(())


def _same_dtype(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> None:
    if len({v.dtype for v in values}) > 1:
        raise NetworkError(f"node {_label(node)}: operands of different types "
                           f"({', '.join(sorted({str(v.dtype) for v in values}))})")


def _broadcast(node: onnx.NodeProto, shapes: Sequence[Shape]) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise NetworkError(f"node {_label(node)}: shapes "
                           f"{_short([list(s) for s in shapes])} do not broadcast") from None


def _what(node: onnx.NodeProto) -> str:
    return f"the output of node {_label(node)}"


def _axes_input(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                values: list[np.ndarray | None], index: int = 1) -> list[int] | None:
    """Axes as an attribute (before opset 13) or as an optional input."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(values) > index and values[index] is not None:
        return _int_vector(node, values[index], "axes")
    return None


@_folds("Constant")
def _f_constant(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                values: list[np.ndarray | None]) -> list[np.ndarray]:
    given = [k for k in attrs if k.startswith(("value", "sparse"))]
    if len(given) != 1:
        raise NetworkError(f"node {_label(node)} must have exactly one value attribute")
    key = given[0]
    if key == "value":
        return [attrs["value"]]
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64}
    if key not in kinds:
        raise NetworkError(f"node {_label(node)}: a {key} Constant is not supported (convplan "
                           "reads numeric dense constants)")
    value = attrs[key]
    imp.reserve(_what(node), [len(value)] if isinstance(value, list) else [], kinds[key])
    return [np.array(value, dtype=kinds[key])]


@_folds("ConstantOfShape")
def _f_constant_of_shape(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                         values: list[np.ndarray | None]) -> list[np.ndarray]:
    shape = _int_vector(node, values[0], "the shape")
    fill = attrs.get("value", np.zeros(1, np.float32))
    if fill.size != 1:
        raise NetworkError(f"node {_label(node)}: value must hold one element, not {fill.size}")
    imp.reserve(_what(node), shape, fill.dtype)
    return [np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)]


@_folds("Identity", "Dropout")
def _f_identity(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                values: list[np.ndarray | None]) -> list[np.ndarray]:
    _refuse_training(imp, node)
    x = values[0]
    assert x is not None      # the schema requires the input
    out = [x]
    if len(node.output) > 1 and node.output[1]:       # Dropout's mask: all kept at inference
        imp.reserve(_what(node), x.shape, np.bool_)
        out.append(np.ones(x.shape, dtype=np.bool_))
    return out


def _refuse_training(imp: _Importer, node: onnx.NodeProto) -> None:
    if node.op_type == "Dropout" and len(node.input) > 1 and node.input[1]:
        ratio = imp.const(node.input[1], "Dropout's ratio")
        if ratio.size != 1 or ratio.dtype.kind != "f":
            raise NetworkError(f"node {_label(node)}: Dropout's ratio must be one float")
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode = imp.const(node.input[2], "Dropout's training_mode")
        if mode.size != 1 or bool(mode.reshape(-1)[0]):
            raise NetworkError(f"node {_label(node)}: Dropout in training mode is random")


@_folds("Cast")
def _f_cast(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
            values: list[np.ndarray | None]) -> list[np.ndarray]:
    dtype = _DTYPES.get(attrs["to"])
    if dtype is None:
        raise NetworkError(f"node {_label(node)}: Cast to "
                           f"{_type_name(TensorProto.DataType, attrs['to'])} is not supported")
    x = values[0]
    assert x is not None
    imp.reserve(_what(node), x.shape, dtype)
    with np.errstate(all="ignore"):
        return [x.astype(dtype)]


@_folds("Shape")
def _f_shape(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    dims = x.shape[slice(attrs.get("start", 0), attrs.get("end"))]
    return [np.array(dims, dtype=np.int64)]


@_folds("Gather")
def _f_gather(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    data, indices = values[0], values[1]
    assert data is not None and indices is not None
    if data.ndim == 0:
        raise NetworkError(f"node {_label(node)}: Gather of a rank-0 tensor")
    axis = _axis(node, int(attrs.get("axis", 0)), data.ndim)
    if indices.dtype.kind not in "iu":
        raise NetworkError(f"node {_label(node)}: indices must be integers, not {indices.dtype}")
    dim = data.shape[axis]
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    imp.reserve(_what(node), shape, data.dtype)
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise NetworkError(f"node {_label(node)}: an index is out of range for a dimension of "
                           f"{dim}")
    return [np.take(data, np.where(indices < 0, indices + dim, indices), axis=axis)]


@_folds("Unsqueeze")
def _f_unsqueeze(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                 values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    shape = _unsqueezed(node, x.shape, _axes_input(imp, node, attrs, values))
    imp.reserve(_what(node), shape, x.dtype, view=True)
    return [x.reshape(shape)]


def _unsqueezed(node: onnx.NodeProto, shape: Shape, axes: list[int] | None) -> list[int]:
    if not axes:
        raise NetworkError(f"node {_label(node)}: Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    out = list(shape)
    for a in sorted(_axes(node, axes, rank)):
        out.insert(a, 1)
    return out


@_folds("Squeeze")
def _f_squeeze(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
               values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    shape = _squeezed(node, x.shape, _axes_input(imp, node, attrs, values))
    return [x.reshape(shape)]


def _squeezed(node: onnx.NodeProto, shape: Shape, axes: list[int] | None) -> list[int]:
    if not shape:
        raise NetworkError(f"node {_label(node)}: Squeeze of a rank-0 tensor")
    if axes is None or not axes:
        return [d for d in shape if d != 1]
    drop = set(_axes(node, axes, len(shape)))
    if any(shape[a] != 1 for a in drop):
        raise NetworkError(f"node {_label(node)}: axes {_short(axes)} of shape "
                           f"{_short(list(shape))} are not all 1")
    return [d for i, d in enumerate(shape) if i not in drop]


@_folds("Concat")
def _f_concat(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    xs = [v for v in values if v is not None]
    _same_dtype(node, xs)
    rank = xs[0].ndim
    if rank == 0:
        raise NetworkError(f"node {_label(node)}: Concat of rank-0 tensors")
    axis = _axis(node, int(attrs["axis"]), rank)
    for x in xs:
        if x.ndim != rank or any(a != b for i, (a, b) in
                                 enumerate(zip(x.shape, xs[0].shape, strict=True)) if i != axis):
            raise NetworkError(f"node {_label(node)}: shapes {_short(list(xs[0].shape))} and "
                               f"{_short(list(x.shape))} differ outside axis {axis}")
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    imp.reserve(_what(node), shape, xs[0].dtype)
    return [np.concatenate(xs, axis=axis)]


def _reshape_target(node: onnx.NodeProto, source: Shape, target: Sequence[int],
                    allowzero: bool) -> list[int]:
    """ONNX Reshape's output shape: 0 copies the input's dimension (unless allowzero), one -1
    is inferred, and the element count must not change."""
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(source):
                raise NetworkError(f"node {_label(node)}: shape {_short(list(target))} copies "
                                   f"dimension {i}, but the input has rank {len(source)}")
            d = source[i]
        elif d < -1:
            raise NetworkError(f"node {_label(node)}: shape {_short(list(target))} has a "
                               "negative dimension")
        out.append(int(d))
    if out.count(-1) > 1:
        raise NetworkError(f"node {_label(node)}: shape {_short(list(target))} has more than "
                           "one -1")
    size = math.prod(source)
    known = math.prod(d for d in out if d != -1)
    if -1 in out:
        if known == 0 or size % known:
            raise NetworkError(f"node {_label(node)}: cannot infer the -1 of "
                               f"{_short(list(target))} for shape {_short(list(source))}")
        out[out.index(-1)] = size // known
    if math.prod(out) != size:
        raise NetworkError(f"node {_label(node)}: shape {_short(list(target))} does not hold "
                           f"the {size} elements of shape {_short(list(source))}")
    if len(out) > MAX_RANK:
        raise NetworkError(f"node {_label(node)}: rank {len(out)}; at most {MAX_RANK}")
    return out


def _reshape_shape(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                   source: Shape) -> list[int]:
    if imp.opset < 5:
        if "shape" not in attrs:
            raise NetworkError(f"node {_label(node)}: Reshape (opset {imp.opset}) needs its "
                               "shape attribute")
        target = [int(s) for s in attrs["shape"]]
    else:
        target = _int_vector(node, imp.const(node.input[1], "Reshape's shape"), "the shape")
    return _reshape_target(node, source, target, bool(attrs.get("allowzero", 0)))


@_folds("Reshape")
def _f_reshape(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
               values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    return [x.reshape(_reshape_shape(imp, node, attrs, x.shape))]


@_folds("Flatten")
def _f_flatten(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
               values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    axis = _axis(node, int(attrs.get("axis", 1)), x.ndim, inclusive=True)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _slice_params(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]
                  ) -> dict[str, list[int] | None]:
    """Slice's starts, ends, axes and steps: attributes before opset 10, constant inputs after."""
    if imp.opset < 10:
        params = {k: attrs.get(k) for k in ("starts", "ends", "axes")}
        params["steps"] = None
        if params["starts"] is None or params["ends"] is None:
            raise NetworkError(f"node {_label(node)}: Slice (opset {imp.opset}) needs starts "
                               "and ends attributes")
        return params
    names = list(node.input[1:5]) + [""] * (5 - len(node.input))
    return {k: _int_vector(node, imp.const(i, f"Slice's {k}"), k) if i else None
            for k, i in zip(("starts", "ends", "axes", "steps"), names, strict=True)}


def _slice_index(node: onnx.NodeProto, params: dict[str, list[int] | None],
                 shape: Shape) -> tuple[tuple[slice, ...], list[int]]:
    try:
        index = operators.make("slice", **params).index(shape)
    except ValueError as error:
        raise NetworkError(f"node {_label(node)}: {_short(str(error))}") from None
    return index, [len(range(*s.indices(d))) for s, d in zip(index, shape, strict=True)]


@_folds("Slice")
def _f_slice(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    index, shape = _slice_index(node, _slice_params(imp, node, attrs), x.shape)
    imp.reserve(_what(node), shape, x.dtype)
    return [np.array(x[index])]


def _perm(node: onnx.NodeProto, attrs: dict[str, Any], rank: int) -> list[int]:
    perm = [int(p) for p in attrs.get("perm", reversed(range(rank)))]
    if sorted(perm) != list(range(rank)):
        raise NetworkError(f"node {_label(node)}: perm {_short(perm)} is not a permutation of "
                           f"the {rank} axes")
    return perm


@_folds("Transpose")
def _f_transpose(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                 values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    perm = _perm(node, attrs, x.ndim)
    imp.reserve(_what(node), x.shape, x.dtype)
    return [np.ascontiguousarray(x.transpose(perm))]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncated toward zero, as ONNX (and C) define it."""
    q = np.floor_divide(a, b)
    return q + ((np.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))).astype(q.dtype)


_ARITHMETIC: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Min": np.minimum,
    "Max": np.maximum, "Sum": np.add, "Equal": np.equal, "Less": np.less,
    "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}


@_folds("Div", *_ARITHMETIC)
def _f_arithmetic(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                  values: list[np.ndarray | None]) -> list[np.ndarray]:
    xs = [v for v in values if v is not None]
    _same_dtype(node, xs)
    if node.op_type in ("And", "Or", "Xor") and xs[0].dtype != np.bool_:
        raise NetworkError(f"node {_label(node)}: operands must be bool")
    shape = _broadcast(node, [x.shape for x in xs])
    compare = node.op_type in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
    imp.reserve(_what(node), shape, np.bool_ if compare else xs[0].dtype)
    with np.errstate(all="ignore"):
        if node.op_type == "Div":
            a, b = xs
            if a.dtype.kind in "iu":
                if not np.all(b):
                    raise NetworkError(f"node {_label(node)}: integer division by zero")
                return [_int_div(a, b)]
            return [np.divide(a, b).astype(a.dtype, copy=False)]
        out = xs[0]
        for x in xs[1:]:
            out = _ARITHMETIC[node.op_type](out, x)
        return [np.array(np.broadcast_to(out, shape))]


_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Reciprocal": np.reciprocal,
    "Floor": np.floor, "Ceil": np.ceil, "Not": np.logical_not,
    "Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
}


@_folds(*_UNARY)
def _f_unary(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    if (node.op_type == "Not") != (x.dtype == np.bool_) or (
            node.op_type in ("Sqrt", "Reciprocal", "Floor", "Ceil") and x.dtype.kind != "f"):
        raise NetworkError(f"node {_label(node)}: {node.op_type} of a {x.dtype} tensor")
    imp.reserve(_what(node), x.shape, x.dtype)
    with np.errstate(all="ignore"):
        return [np.asarray(_UNARY[node.op_type](x)).astype(x.dtype, copy=False)]


@_folds("Where")
def _f_where(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    cond, a, b = values
    assert cond is not None and a is not None and b is not None
    if cond.dtype != np.bool_:
        raise NetworkError(f"node {_label(node)}: the condition must be bool")
    _same_dtype(node, [a, b])
    shape = _broadcast(node, [cond.shape, a.shape, b.shape])
    imp.reserve(_what(node), shape, a.dtype)
    return [np.where(cond, a, b)]


@_folds("Range")
def _f_range(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    start, limit, delta = (_scalar(node, v, w) for v, w in zip(
        values, ("start", "limit", "delta"), strict=True))
    _same_dtype(node, [start, limit, delta])
    if start.dtype.kind == "f":
        s, lim, d = float(start), float(limit), float(delta)
        if not all(math.isfinite(v) for v in (s, lim, d)) or d == 0:
            raise NetworkError(f"node {_label(node)}: start, limit and delta must be finite and "
                               "delta non-zero")
        count = max(math.ceil((lim - s) / d), 0)
    elif start.dtype.kind in "iu":
        s, lim, d = int(start), int(limit), int(delta)
        if d == 0:
            raise NetworkError(f"node {_label(node)}: delta is 0")
        count = max(-((s - lim) // d), 0)
    else:
        raise NetworkError(f"node {_label(node)}: Range of {start.dtype}")
    imp.reserve(_what(node), [count], start.dtype)
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]


@_folds("Expand")
def _f_expand(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    target = _int_vector(node, values[1], "the shape")
    if len(target) > MAX_RANK or min(target, default=1) < 0:
        raise NetworkError(f"node {_label(node)}: shape {_short(target)} is not a shape")
    shape = _broadcast(node, [x.shape, tuple(target)])
    imp.reserve(_what(node), shape, x.dtype)
    return [np.array(np.broadcast_to(x, shape))]


@_folds("Tile")
def _f_tile(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any],
            values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    repeats = _int_vector(node, values[1], "repeats")
    if len(repeats) != x.ndim or min(repeats, default=0) < 0:
        raise NetworkError(f"node {_label(node)}: repeats {_short(repeats)} do not fit a "
                           f"rank-{x.ndim} input")
    imp.reserve(_what(node), [d * r for d, r in zip(x.shape, repeats, strict=True)], x.dtype)
    return [np.tile(x, repeats)]


# -- converters: one ONNX operator as IR layers ----------------------------------------------
Converter = Callable[[_Importer, onnx.NodeProto, dict[str, Any]], None]
_CONVERTERS: dict[str, Converter] = {}


def _converts(*ops: str) -> Callable[[Converter], Converter]:
    def decorate(fn: Converter) -> Converter:
        for op in ops:
            _CONVERTERS[op] = fn
        return fn
    return decorate


def _refuse(node: onnx.NodeProto, why: str) -> NetworkError:
    return NetworkError(f"node {_label(node)}: {why}")


def _only_defaults(node: onnx.NodeProto, attrs: dict[str, Any], **defaults: Any) -> None:
    """Attributes convplan does not implement are accepted only with their default value."""
    for key, default in defaults.items():
        if key in attrs and attrs[key] != default:
            raise _refuse(node, f"{key}={_short(attrs[key])} is not supported")


def _rank4(imp: _Importer, node: onnx.NodeProto) -> Shape:
    shape = imp.shape_of(node.input[0])
    if len(shape) != 4:
        raise _refuse(node, f"only 2-D {node.op_type} (an N, C, H, W input) is supported, the "
                            f"input has shape {_short(list(shape))}")
    return shape


_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _pads(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any], kernel: tuple[int, int],
          strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right], or what auto_pad asks for."""
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in _AUTO_PADS:
        raise _refuse(node, f"auto_pad {_q(auto)} is not one of {', '.join(_AUTO_PADS)}")
    if auto == "NOTSET":
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise _refuse(node, f"pads {_short(pads)} are not the four of a 2-D "
                                f"{node.op_type}")
        if min(pads) < 0:
            raise _refuse(node, f"pads {_short(pads)} are negative")
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
        raise _refuse(node, f"only 2-D {node.op_type} is supported ({key}={_short(value)})")
    if min(value) < 1:
        raise _refuse(node, f"{key} {_short(value)} must be positive")
    return value[0], value[1]


@_converts("Conv")
def _conv(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = _rank4(imp, node)
    w = imp.float_const(node.input[1], f"the weights of Conv {_label(node)}")
    if w.ndim != 4:
        raise _refuse(node, f"only 2-D Conv is supported (weights of shape {list(w.shape)})")
    kernel = (int(w.shape[2]), int(w.shape[3]))
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
        raise _refuse(node, f"kernel_shape {_short(attrs['kernel_shape'])} contradicts the "
                            f"weights of shape {list(w.shape)}")
    groups = int(attrs.get("group", 1))
    if groups < 1 or shape[1] != w.shape[1] * groups:
        raise _refuse(node, f"an input of {shape[1]} channels does not fit weights of shape "
                            f"{list(w.shape)} in {groups} group(s)")
    strides = _pair_attr(attrs, "strides", node)
    dilations = _pair_attr(attrs, "dilations", node)
    weights = {"weight": w}
    if len(node.input) > 2 and node.input[2]:
        weights["bias"] = imp.float_const(node.input[2], f"the bias of Conv {_label(node)}")
    imp.emit("conv", [node.input[0]], [node.output[0]], weights, out_channels=int(w.shape[0]),
             kernel=kernel, stride=strides, dilation=dilations,
             padding=_pads(imp, node, attrs, kernel, strides, dilations),
             groups=groups, bias="bias" in weights)


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
def _identity(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _refuse_training(imp, node)
    if len(node.output) > 1 and node.output[1]:
        imp.unreadable[node.output[1]] = "the mask of a Dropout"
    imp.alias(node)     # at inference Dropout is the identity


@_converts("Cast")
def _cast(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("to") != TensorProto.FLOAT:
        raise _refuse(node, "Cast of an activation to a type other than float32 is not "
                            "supported")
    imp.alias(node)


def _pool_attrs(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, Any]:
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
def _maxpool(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise _refuse(node, "MaxPool's indices output is not supported")
    _only_defaults(node, attrs, storage_order=0)
    imp.emit("maxpool", [node.input[0]], [node.output[0]], **_pool_attrs(imp, node, attrs),
             dilation=_pair_attr(attrs, "dilations", node))


@_converts("AveragePool")
def _avgpool(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if "dilations" in attrs and tuple(attrs["dilations"]) != (1, 1):
        raise _refuse(node, "dilated AveragePool is not supported")
    imp.emit("avgpool", [node.input[0]], [node.output[0]], **_pool_attrs(imp, node, attrs),
             count_include_pad=bool(attrs.get("count_include_pad", 0)))


@_converts("GlobalAveragePool")
def _gap(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _rank4(imp, node)
    imp.emit("globalavgpool", [node.input[0]], [node.output[0]])


@_converts("BatchNormalization")
def _batchnorm(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _only_defaults(node, attrs, training_mode=0, spatial=1)
    if any(node.output[1:]):
        raise _refuse(node, "BatchNormalization's training outputs are not supported")
    if len(node.input) != 5:
        raise _refuse(node, "BatchNormalization needs scale, bias, mean and variance")
    shape = imp.shape_of(node.input[0])
    if len(shape) < 2:
        raise _refuse(node, f"the input of shape {_short(list(shape))} has no channel axis")
    what = f"the statistics of BatchNormalization {_label(node)}"
    stats = [imp.float_const(i, what, exact=False) for i in node.input[1:5]]
    if any(s.shape != (shape[1],) for s in stats):
        raise _refuse(node, f"the statistics must have shape [{shape[1]}], not "
                            f"{_short([list(s.shape) for s in stats])}")
    gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise _refuse(node, "the statistics give a non-finite scale (negative variance?)")
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
    if "axis" in attrs:     # before opset 7: broadcasting aligned at an axis
        raise _refuse(node, "broadcasting with an axis attribute (opset < 7) is not supported")
    op = {"Sum": "add"}.get(node.op_type, node.op_type.lower())
    acts = imp.activations(node)
    consts = [i for i in node.input if i and imp.is_const(i)]
    if op in ("sub", "div") and consts and node.input[0] in consts:
        raise _refuse(node, f"{node.op_type} with a constant first operand is not supported")
    constant = None
    if consts:
        values = [imp.float_const(c, f"the constant operand of {_label(node)}").astype(np.float64)
                  for c in consts]
        shape = _broadcast(node, [v.shape for v in values])
        imp.reserve(f"the constant operand of node {_label(node)}", shape, np.float64)
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
        out_shape = _broadcast(node, [imp.shape_of(acts[0]), constant.shape])
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
        raise _refuse(node, "Concat of a constant with an activation is not supported")
    rank = len(imp.shape_of(node.input[0]))
    axis = _axis(node, int(attrs["axis"]), rank)
    imp.emit("concat", [i for i in node.input if i], [node.output[0]], axis=axis)


@_converts("Flatten")
def _flatten(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    rank = len(imp.shape_of(node.input[0]))
    axis = _axis(node, int(attrs.get("axis", 1)), rank, inclusive=True)
    imp.emit("flatten", [node.input[0]], [node.output[0]], axis=axis)


def _reshape_to(imp: _Importer, node: onnx.NodeProto, shape: Sequence[int]) -> None:
    imp.emit("reshape", [node.input[0]], [node.output[0]], shape=[int(s) for s in shape])


@_converts("Reshape")
def _reshape(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _reshape_to(imp, node, _reshape_shape(imp, node, attrs, imp.shape_of(node.input[0])))


@_converts("Unsqueeze", "Squeeze")
def _squeeze(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = imp.shape_of(node.input[0])
    axes = None
    if "axes" in attrs:
        axes = [int(a) for a in attrs["axes"]]
    elif len(node.input) > 1 and node.input[1]:
        axes = _int_vector(node, imp.const(node.input[1], f"{node.op_type}'s axes"), "axes")
    if node.op_type == "Unsqueeze":
        _reshape_to(imp, node, _unsqueezed(node, shape, axes))
    else:
        _reshape_to(imp, node, _squeezed(node, shape, axes))


@_converts("Transpose")
def _transpose(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    perm = _perm(node, attrs, len(imp.shape_of(node.input[0])))
    imp.emit("transpose", [node.input[0]], [node.output[0]], perm=perm)


@_converts("Split")
def _split(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = imp.shape_of(node.input[0])
    if not shape:
        raise _refuse(node, "Split of a rank-0 tensor")
    axis = _axis(node, int(attrs.get("axis", 0)), len(shape))
    dim = shape[axis]
    if any(not o for o in node.output):
        raise _refuse(node, "every output of Split must be named")
    n = len(node.output)
    if len(node.input) > 1 and node.input[1]:
        sizes = _int_vector(node, imp.const(node.input[1], "Split's sizes"), "split")
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        if "num_outputs" in attrs and int(attrs["num_outputs"]) != n:
            raise _refuse(node, f"num_outputs {_short(attrs['num_outputs'])} but {n} outputs")
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    if len(sizes) != n or min(sizes) < 1 or sum(sizes) != dim:
        raise _refuse(node, f"sizes {_short(sizes)} do not split a dimension of {dim} into "
                            f"{n} non-empty outputs")
    imp.emit("split", [node.input[0]], list(node.output), axis=axis, sizes=sizes)


@_converts("Slice")
def _slice(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    params = _slice_params(imp, node, attrs)
    _slice_index(node, params, imp.shape_of(node.input[0]))     # refuses bad axes and steps
    imp.emit("slice", [node.input[0]], [node.output[0]], **params)


@_converts("Gemm")
def _gemm(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    b = imp.float_const(node.input[1], f"Gemm {_label(node)}'s B")
    if b.ndim != 2:
        raise _refuse(node, f"Gemm's B must be 2-D, not of shape {list(b.shape)}")
    if imp.is_const(node.input[0]) or len(imp.shape_of(node.input[0])) != 2:
        raise _refuse(node, "Gemm's A must be a 2-D activation")
    trans_b = bool(attrs.get("transB", 0))
    n = int(b.shape[0] if trans_b else b.shape[1])
    weights = {"b": b}
    beta = float(attrs.get("beta", 1.0))
    if len(node.input) > 2 and node.input[2]:
        c = imp.float_const(node.input[2], f"Gemm {_label(node)}'s C")
        if c.size not in (1, n) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise _refuse(node, f"Gemm's C of shape {list(c.shape)} is not a per-output bias")
        weights["c"] = np.broadcast_to(c.reshape(-1), (n,))
    imp.emit("gemm", [node.input[0]], [node.output[0]], weights, out_features=n,
             alpha=float(attrs.get("alpha", 1.0)), beta=beta,
             trans_a=bool(attrs.get("transA", 0)), trans_b=trans_b, bias="c" in weights)


@_converts("MatMul")
def _matmul(imp: _Importer, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    a, b = node.input[0], node.input[1]
    if imp.is_const(a):
        raise _refuse(node, "MatMul with a constant first operand is not supported")
    if imp.is_const(b):
        value = imp.float_const(b, f"MatMul {_label(node)}'s B")
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
    if not shape:
        raise _refuse(node, "Softmax of a rank-0 tensor")
    if imp.opset >= 13:
        axis = _axis(node, int(attrs.get("axis", -1)), len(shape))
        imp.emit("softmax", [node.input[0]], [node.output[0]], axis=axis)
        return
    axis = _axis(node, int(attrs.get("axis", 1)), len(shape))
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
              input_shapes: dict[str, Shape] | None = None, *,
              max_tensor_bytes: int | None = None,
              max_weight_bytes: int | None = None) -> Network:
    """Import an ONNX model (a path or the file's bytes) as a checked `Network`.

    ``max_tensor_bytes`` bounds every tensor (activation, initializer, folded constant) and
    ``max_weight_bytes`` all the constants together and the weights the network keeps (None:
    MAX_TENSOR_BYTES and MAX_WEIGHT_BYTES); each is checked before the allocation it guards.
    Raises `NetworkError` with one short message for a corrupt or malformed file, external
    data, sparse tensors, subgraphs, a limit exceeded, or operators convplan does not support
    (all of them, listed).
    """
    tensor_limit = MAX_TENSOR_BYTES if max_tensor_bytes is None else int(max_tensor_bytes)
    weight_limit = MAX_WEIGHT_BYTES if max_weight_bytes is None else int(max_weight_bytes)
    if isinstance(source, bytes):
        data, default_name = source, "model"
    else:
        path = Path(source)
        try:
            info = path.stat()
        except OSError as error:
            raise NetworkError(f"cannot read {_short(str(path))}: {error.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise NetworkError(f"{_short(str(path))} is not a regular file")
        if info.st_size > MAX_ONNX_BYTES:
            raise NetworkError(f"{_short(str(path))} is {info.st_size} bytes; the limit is "
                               f"{MAX_ONNX_BYTES}")
        try:
            with path.open("rb") as file:
                data = file.read(MAX_ONNX_BYTES + 1)    # it may have grown since stat
        except OSError as error:
            raise NetworkError(f"cannot read {_short(str(path))}: {error.strerror}") from None
        default_name = path.stem
    if len(data) > MAX_ONNX_BYTES:
        raise NetworkError(f"the model is {len(data)} bytes; the limit is {MAX_ONNX_BYTES}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        why = "messages nested too deeply" if "MaxDepth" in str(error) else \
            f"{type(error).__name__}: {_short(str(error))}"
        raise NetworkError(f"not a valid ONNX file ({why})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise NetworkError("not a valid ONNX file: it has no graph (truncated or not a model)")
    _refuse_external_data(model)
    importer = _Importer(model, name or model.graph.name or default_name, tensor_limit,
                         weight_limit)
    try:
        network = importer.run(input_shapes)
    except NetworkError as error:
        raise type(error)(_clip_message(str(error))) from None
    if not isinstance(source, bytes) and input_shapes is None:
        network.source = Path(source)
    return network


def _clip_message(message: str) -> str:
    """One line, no heap address, at most ~300 characters."""
    message = _ADDRESS.sub("", " ".join(message.split()))
    return message if len(message) <= 300 else message[:297] + "..."


def _refuse_external_data(model: onnx.ModelProto) -> None:
    """Refuse every tensor that refers to an external data file, and every sparse tensor (which
    convplan does not read), anywhere: initializers, node attributes, subgraphs to any depth,
    functions and training information; iteratively, before anything could open a file."""
    graphs: list[onnx.GraphProto] = [model.graph]
    nodes: list[onnx.NodeProto] = []
    for function in model.functions:
        nodes.extend(function.node)
    for info in model.training_info:
        graphs.extend((info.initialization, info.algorithm))
    tensors: list[TensorProto] = []

    def sparse(where: str) -> NetworkError:
        return NetworkError(f"{where} is a sparse tensor; convplan does not read sparse "
                            "tensors")

    while graphs or nodes or tensors:
        if tensors:
            tensor = tensors.pop()
            if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
                raise NetworkError(f"tensor {_q(tensor.name)} refers to an external data file; "
                                   "convplan only reads self-contained ONNX files")
        elif nodes:
            node = nodes.pop()
            for a in node.attribute:
                if a.HasField("sparse_tensor") or len(a.sparse_tensors) or a.type in (
                        AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                    raise sparse(f"attribute {_q(a.name)} of node {_label(node)}")
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors.extend(a.tensors)
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
        else:
            graph = graphs.pop()
            if len(graph.sparse_initializer):
                raise sparse(f"initializer {_q(graph.sparse_initializer[0].values.name)}")
            tensors.extend(graph.initializer)
            nodes.extend(graph.node)
