"""The walk over an ONNX graph: nodes in order, each folded (computed from constants only, by
`folding`) or converted into convplan layers (by `converters`); what is left becomes a checked
`Network`. `load_onnx` is the entry point."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

from convplan.kernels import operators
from convplan.kernels.operators import Shape
from convplan.selector.network import (
    CheckedNetwork,
    InputShapes,
    LimitError,
    Limits,
    Network,
    NetworkError,
    check_description,
)

from .converters import CONSTANT_FIRST, CONVERTERS
from .folding import FOLDERS
from .messages import label, one_line, quote, short, type_name
from .patterns import fuse_gelu, fuse_layernorm, fuse_pad_into_conv, sink_transposes
from .reading import ModelFile, check_schema, opset_of, read_model
from .weights import (
    DTYPES,
    MAX_TENSOR_BYTES,
    MAX_WEIGHT_BYTES,
    ImportLimits,
    decode,
    fold_affine,
)

#: An emitted convplan layer, as in a network description.
Layer = dict[str, Any]
#: Without weights, float initializers up to this many elements are still read: a layer's
#: attribute may come from their values (Clip bounds, Resize scales, per-channel statistics).
SHAPE_ONLY_ELEMENTS = 4096
#: Operators with subgraphs: never folded, never run.
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}


class Importer:
    """One import: the constants and shapes known so far, and the convplan layers and weights
    emitted; `run` walks the graph, the folders and converters use the rest.

    The importer owns the parsed model and the open file: the file is closed once the
    initializers are read, the model dropped before the network is built. Without
    ``weights`` only the shapes of the weights are kept (zero-stride views), large float
    initializers are not read, and nothing is folded into weights."""

    def __init__(self, model: onnx.ModelProto, model_file: ModelFile, name: str,
                 limits: ImportLimits, *, weights: bool = True) -> None:
        self.model: onnx.ModelProto | None = model
        self.model_file = model_file
        self.name = name
        self.opset = opset_of(model)
        self.limits = limits
        self.with_weights = weights
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self.layers: list[Layer] = []
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.unsupported: dict[str, int] = {}
        self.renamed: dict[str, str] = {}   # ONNX tensor -> the tensor that carries its value
        self.placeholders: set[str] = set()  # outputs of nodes skipped after an unsupported one
        self.unreadable: dict[str, str] = {}  # outputs convplan does not compute -> why
        #: Layer name -> (scale, shift) of the layers computing x * scale + shift with scalar
        #: constants (read by the converters, so known without weights too): `patterns`.
        self.scalars: dict[str, tuple[float, float]] = {}
        #: Inputs whose fixed leading dimension (the batch the file was made for) is changed:
        #: the graph is walked at the file's, then checked again at these (`check_description`).
        self.rebatched: dict[str, list[int]] = {}

    # -- tensors -----------------------------------------------------------------------------
    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def known(self, tensor: str) -> bool:
        return (tensor in self.consts or self.tensor(tensor) in self.shapes
                or tensor in self.placeholders or tensor in self.unreadable)

    def const(self, tensor: str, what: str) -> np.ndarray:
        if tensor not in self.consts:
            raise NetworkError(f"{what} must be a constant (an initializer or computed from "
                               f"constants), but {quote(tensor)} is computed from the input")
        return self.consts[tensor]

    def float_const(self, tensor: str, what: str, exact: bool = True) -> np.ndarray:
        """A constant that meets float32 activations: float32 (``exact``) or another float."""
        value = self.const(tensor, what)
        if value.dtype != np.float32 and (exact or value.dtype.kind != "f"):
            raise NetworkError(f"{what} ({quote(tensor)}) is {value.dtype}, but the activations "
                               "are float32")
        return value

    def tensor(self, name: str) -> str:
        return self.renamed.get(name, name)

    def emit(self, op: str, inputs: list[str], outputs: list[str], weights: dict | None = None,
             name: str | None = None, **attrs: Any) -> None:
        """Add one IR layer and infer its output shapes (the check happens here, once)."""
        name = name or outputs[0]
        inputs = [self.tensor(t) for t in inputs]
        arrays = {k: self.weight(v) for k, v in (weights or {}).items()}
        try:
            operator = operators.make(op, **attrs)
            operator.check_arity(len(inputs))
            in_shapes = [self.shape_of(t) for t in inputs]
            shapes = operator.output_shapes(in_shapes)
            operator.check_weights(in_shapes, arrays)
        except ValueError as error:
            raise NetworkError(f"node {quote(name)} ({op}): {short(str(error))}") from None
        if len(shapes) != len(outputs):
            raise NetworkError(f"node {quote(name)} ({op}) produces {len(shapes)} output(s), but "
                               f"{len(outputs)} are named")
        for out, shape in zip(outputs, shapes, strict=True):
            shape = tuple(int(d) for d in shape)
            self.limits.check_activation(out, shape, f"node {quote(name)} ({op})")
            self.shapes[out] = shape
        layer: Layer = {"name": name, "op": op, "inputs": inputs}
        if outputs != [name]:
            layer["outputs"] = outputs
        layer.update(attrs)
        self.layers.append(layer)
        if arrays:
            self.weights[name] = arrays

    def weight(self, value: np.ndarray) -> np.ndarray:
        """A constant as the weight a layer keeps: contiguous float32 of its own, made here
        (folded constants may be broadcast views until now); without weights, only its shape
        (a zero-stride view, no memory)."""
        if not self.with_weights:
            return np.broadcast_to(np.zeros((), np.float32), np.shape(value))
        array = np.ascontiguousarray(value, dtype=np.float32)
        return array if array.flags.writeable else array.copy()

    # -- the walk ----------------------------------------------------------------------------
    def run(self, input_shapes: InputShapes) -> Network | CheckedNetwork:
        assert self.model is not None, "an importer runs once"
        graph = self.model.graph
        # Operators convplan neither runs nor folds are named before anything is decoded or
        # folded: a 2 GiB constant feeding a Cos must not be built to be refused.
        for node in graph.node:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                self.unsupported[f"{node.domain}.{op}"] = \
                    self.unsupported.get(f"{node.domain}.{op}", 0) + 1
            elif op not in FOLDERS and op not in CONVERTERS and op not in _CONTROL_FLOW:
                self.unsupported[op] = self.unsupported.get(op, 0) + 1
        if self.unsupported:
            self.refuse_unsupported()
        for index, init in enumerate(graph.initializer):
            if init.name in self.consts:
                raise NetworkError(f"initializer {quote(init.name)} is given twice")
            self.consts[init.name] = self.initializer(init, index)
        self.model_file.close()
        inputs: dict[str, Shape] = {}
        names = [v.name for v in graph.input if v.name not in self.consts]
        unknown = [n for n in input_shapes.inputs if n not in names]
        if unknown:
            raise NetworkError(f"{quote(unknown[0])} is not an input of the model; its inputs: "
                               f"{', '.join(quote(n) for n in names[:8])}")
        for value in graph.input:
            if value.name in self.consts:
                continue
            if value.name in inputs or not value.name:
                raise NetworkError(f"input {quote(value.name)} is declared twice or unnamed")
            shape, wanted = _value_shape(value, input_shapes)
            self.limits.check_activation(value.name, wanted, "input")
            if wanted != shape:
                self.rebatched[value.name] = list(wanted)
            inputs[value.name] = shape
            self.shapes[value.name] = shape
        if not inputs:
            raise NetworkError("the model has no input that is not an initializer")
        for node in graph.node:
            self.node(node)
        if self.unsupported:
            self.refuse_unsupported()
        outputs = [o.name for o in graph.output]
        self.model = None   # the protobuf is not needed any more: dropped before the weights
        del graph           # are folded and the network is built
        if not outputs:
            raise NetworkError("the model declares no output")
        if len(set(outputs)) != len(outputs):
            raise NetworkError("the model declares an output twice")
        for o in outputs:
            if self.tensor(o) not in self.shapes:
                what = "a constant, not computed from the input" if o in self.consts else \
                    "not produced by any node"
                raise NetworkError(f"model output {quote(o)} is {what}")
            if self.tensor(o) != o:     # an output that is an alias keeps its ONNX name
                self.emit("identity", [o], [o], name=o)
        self.consts = {}
        layers = fuse_gelu(self.layers, self.weights, set(outputs), self.scalars)
        layers = fuse_layernorm(layers, self.weights, set(outputs), self.scalars, self.shapes)
        layers = sink_transposes(layers, self.weights, set(outputs), values=self.with_weights)
        layers = fuse_pad_into_conv(layers, set(outputs))
        layers = fold_affine(layers, self.weights, set(outputs), values=self.with_weights,
                             owned=True)    # consts are gone: the weights are all the import's
        description = {"name": self.name, "inputs": [{"name": k, "shape": list(v)}
                                                     for k, v in inputs.items()],
                       "layers": layers, "outputs": outputs}
        if not layers:
            raise NetworkError("the model has no operator that depends on its input")
        kept = sum(w.nbytes for ws in self.weights.values() for w in ws.values())
        if kept > self.limits.max_weight_bytes:
            raise LimitError(f"the network's weights take {kept} bytes; at most "
                             f"{self.limits.max_weight_bytes} are allowed")
        bounds = Limits(max_tensor_bytes=self.limits.max_tensor_bytes,
                        max_weight_bytes=self.limits.max_weight_bytes)
        batch = InputShapes(inputs=self.rebatched) if self.rebatched else None
        if not self.with_weights:
            return check_description(description, self.weights, limits=bounds,
                                     input_shapes=batch)
        return Network.from_description(description, self.weights, limits=bounds,
                                        input_shapes=batch)

    def initializer(self, init: TensorProto, index: int) -> np.ndarray:
        """A top-level initializer's value, its raw_data read straight from the file; without
        weights, a float initializer of more than SHAPE_ONLY_ELEMENTS is checked but not read
        (its value is no layer's attribute, only a weight)."""
        dtype = DTYPES.get(init.data_type)
        read = (self.with_weights or dtype is None or dtype.kind != "f"
                or math.prod(init.dims) <= SHAPE_ONLY_ELEMENTS)
        return decode(init, f"initializer {quote(init.name)}", self.limits,
                      self.model_file.payload(index), read=read)

    def node(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op in _CONTROL_FLOW and node.domain in ("", "ai.onnx"):
            raise NetworkError(f"node {label(node)}: control flow ({op}) is not supported")
        for a in node.attribute:
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) or a.HasField("g") \
                    or len(a.graphs):
                raise NetworkError(f"node {label(node)} has a subgraph ({quote(a.name)}); "
                                   "control flow (If, Loop, Scan) is not supported")
        if not len(node.output):
            raise NetworkError(f"node {label(node)} has no output")
        named = [o for o in node.output if o]
        if len(set(named)) != len(named):
            raise NetworkError(f"node {label(node)} names an output twice")
        for out in node.output:
            if out and (self.known(out) or out in self.renamed):
                raise NetworkError(f"node {label(node)}: tensor {quote(out)} is produced twice "
                                   "(or is an input or initializer)")
        present = [i for i in node.input if i]
        for i in present:
            if not self.known(i):
                raise NetworkError(f"node {label(node)} reads {quote(i)}, which no earlier node "
                                   "produces (nodes must be in topological order)")
            if i in self.unreadable:
                raise NetworkError(f"node {label(node)} reads {quote(i)}, "
                                   f"{self.unreadable[i]}, which convplan does not compute")
        foldable = FOLDERS.get(op) if node.domain in ("", "ai.onnx") else None
        convert = CONVERTERS.get(op) if node.domain in ("", "ai.onnx") else None
        if foldable is None and convert is None:
            self.skip(node, f"{node.domain}.{op}" if node.domain not in ("", "ai.onnx") else op)
            return
        check_schema(node, self.opset)
        if self.unsupported:        # keep walking only to collect every unsupported operator
            self.skip(node, None)
            return
        if any(i in self.placeholders for i in present):
            self.skip(node, None)
            return
        attrs = self.attributes(node)
        if all(self.is_const(i) for i in present):
            if foldable is None:
                raise NetworkError(f"node {label(node)} computes only from constants, and "
                                   f"convplan does not fold {short(op)} at import")
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
        if op not in CONSTANT_FIRST and self.is_const(node.input[0]):
            raise NetworkError(f"node {label(node)}: its first input {quote(node.input[0])} is a "
                               "constant and another is computed from the input (not "
                               "supported)")
        try:
            convert(self, node, attrs)
        except NetworkError as error:
            if "node " in str(error):
                raise
            raise NetworkError(f"node {label(node)}: {error}") from None
        for out in node.output[:1]:
            if not self.known(out):
                raise NetworkError(f"node {label(node)}: output {quote(out)} was not produced")

    def refuse_unsupported(self) -> None:
        items = sorted(self.unsupported.items())
        listed = ", ".join(f"{short(op)} (x{n})" if n > 1 else short(op)
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
                value = decode(a.t, f"attribute {quote(a.name)} of node {label(node)}",
                               self.limits)
            elif kind == AttributeProto.FLOATS:
                value = [float(v) for v in a.floats]
            elif kind == AttributeProto.INTS:
                value = [int(v) for v in a.ints]
            elif kind == AttributeProto.STRINGS:
                value = [s.decode("utf-8", "replace") for s in a.strings]
            else:
                raise NetworkError(f"node {label(node)}: attribute {quote(a.name)} of type "
                                   f"{type_name(AttributeProto.AttributeType, kind)} is not "
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
            raise NetworkError(f"{quote(tensor)} is a constant where convplan needs a tensor "
                               "computed from the input")
        return self.shapes[name]


def _value_shape(value: onnx.ValueInfoProto, given: InputShapes) -> tuple[Shape, Shape]:
    """An input's shape to walk the graph at (the file's, its symbolic dimensions set from
    ``given``, a symbolic batch 1 by default) and the shape wanted (``given``'s). A fixed
    dimension other than the leading one that ``given`` changes is an error naming the input
    and the dimension: the file's layers were made for it. A fixed leading dimension may
    change (it is the batch the file was exported with)."""
    t = value.type
    name = quote(value.name)
    if not t.HasField("tensor_type"):
        raise NetworkError(f"input {name} is not a tensor")
    if t.tensor_type.elem_type != TensorProto.FLOAT:
        kind = type_name(TensorProto.DataType, t.tensor_type.elem_type)
        raise NetworkError(f"input {name} is {kind}; convplan runs float32 models")
    file_dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in t.tensor_type.shape.dim]
    symbols = [d.dim_param or "?" for d in t.tensor_type.shape.dim]
    explicit = given.inputs.get(value.name)
    if explicit is not None:
        if given.batch is not None and explicit[0] != given.batch:
            raise NetworkError(f"input {name}: the shape given {'x'.join(map(str, explicit))} "
                               f"has batch {explicit[0]}, but the batch asked for is "
                               f"{given.batch}")
        if file_dims and len(explicit) != len(file_dims):
            raise NetworkError(f"input {name} has {len(file_dims)} dimensions in the file; "
                               f"the shape given {'x'.join(map(str, explicit))} has "
                               f"{len(explicit)}")
        for i, (d, e) in enumerate(zip(file_dims, explicit, strict=False)):
            if i and d is not None and d != e:
                raise NetworkError(f"input {name}: dimension {i} is fixed to {d} in the file; "
                                   f"the shape given asks for {e}")
        wanted = tuple(int(e) for e in explicit)
        return tuple(d if d is not None and i == 0 else e
                     for i, (d, e) in enumerate(zip(file_dims or wanted, wanted,
                                                    strict=True))), wanted
    if not file_dims:
        raise NetworkError(f"input {name} has no shape")
    dims = []
    for i, d in enumerate(file_dims):
        if d is not None:
            dims.append(d)
        elif i == 0:
            dims.append(given.batch or 1)      # a symbolic batch: one image unless asked
        else:
            raise NetworkError(f"input {name} has a symbolic dimension {i} "
                               f"({short(symbols[i])}); give its shape")
    wanted_dims = list(dims)
    if given.batch is not None:
        wanted_dims[0] = given.batch
    return tuple(dims), tuple(wanted_dims)


@overload
def load_onnx(source: str | Path | bytes, name: str | None = None,
              input_shapes: InputShapes | Mapping[str, Sequence[int]] | None = None, *,
              max_tensor_bytes: int | None = None, max_weight_bytes: int | None = None,
              weights: Literal[True] = True) -> Network: ...


@overload
def load_onnx(source: str | Path | bytes, name: str | None = None,
              input_shapes: InputShapes | Mapping[str, Sequence[int]] | None = None, *,
              max_tensor_bytes: int | None = None, max_weight_bytes: int | None = None,
              weights: Literal[False]) -> CheckedNetwork: ...


def load_onnx(source: str | Path | bytes, name: str | None = None,
              input_shapes: InputShapes | Mapping[str, Sequence[int]] | None = None, *,
              max_tensor_bytes: int | None = None, max_weight_bytes: int | None = None,
              weights: bool = True) -> Network | CheckedNetwork:
    """Import an ONNX model (a path or the file's bytes) as a checked `Network`.

    ``input_shapes`` (an `InputShapes`, or input name -> shape) set the inputs' symbolic
    dimensions, and may change a fixed leading one (the batch: a reshape that hard-codes it
    is rewritten or refused, as `check_description` does); a fixed dimension after it that
    differs is an error naming the input and the dimension.

    ``max_tensor_bytes`` bounds every tensor (activation, initializer, folded constant) and
    ``max_weight_bytes`` all the constants together and the weights the network keeps (None:
    MAX_TENSOR_BYTES and MAX_WEIGHT_BYTES); each is checked before the allocation it guards.
    Raises `NetworkError` with one short message for a corrupt or malformed file, external
    data, sparse tensors, subgraphs, a limit exceeded, or operators convplan does not support
    (all of them, listed).

    The file's weights are held once: each initializer is read from the file straight into its
    array, and neither the file's bytes nor the protobuf outlive the import. Without
    ``weights`` the result is the `CheckedNetwork` (the same checks, the same description)
    without the file's weights, their shapes only: ``.attach()`` draws seeded ones.
    """
    limits = ImportLimits(
        MAX_TENSOR_BYTES if max_tensor_bytes is None else int(max_tensor_bytes),
        MAX_WEIGHT_BYTES if max_weight_bytes is None else int(max_weight_bytes))
    if not isinstance(input_shapes, InputShapes):
        input_shapes = InputShapes(inputs={k: [int(d) for d in v]
                                           for k, v in (input_shapes or {}).items()})
    model, default_name, model_file = read_model(source)
    try:
        importer = Importer(model, model_file, name or model.graph.name or default_name, limits,
                            weights=weights)
        del model       # the importer owns it, and drops it before the network is built
        network = importer.run(input_shapes)
    except NetworkError as error:
        raise type(error)(one_line(str(error))) from None
    finally:
        model_file.close()
    if isinstance(network, Network) and not isinstance(source, bytes) \
            and not importer.rebatched:     # the file runs at these shapes: the reference
        network.source = Path(source)
    return network
