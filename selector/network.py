"""A network: its JSON description (pydantic), its graph (networkx), shapes and weights.

The description is what users write and what the ONNX importer produces: named inputs with
shapes, then layers with ``name``, ``op``, ``inputs`` (tensor names), optional ``outputs`` and the
operator's attributes inline (see `kernels.operators` for every op and its attributes)::

    {"name": "tiny", "inputs": [{"name": "x", "shape": [1, 3, 32, 32]}],
     "layers": [{"name": "conv1", "op": "conv", "inputs": ["x"], "out_channels": 16,
                 "kernel": 3, "padding": 1},
                {"name": "relu1", "op": "relu", "inputs": ["conv1"]}]}

A layer's output tensor is named after the layer unless ``outputs`` names them. Weights come
from the ONNX file, or are drawn from ``seed`` (He-scaled) when the description has none.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
import numpy as np
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from convplan.kernels import ConvSpec, operators
from convplan.kernels.operators import Operator, Shape
from convplan.kernels.operators.conv import Conv

Name = Annotated[str, Field(min_length=1, max_length=256)]

#: JSON that comes in (descriptions, plans) nests at most this deep; a description needs 4.
MAX_JSON_DEPTH = 32
#: An attribute value is a number, a bool or a list of them: at most this deep and this long.
MAX_ATTRIBUTE_DEPTH = 2
MAX_ATTRIBUTE_ITEMS = 64
#: No description has more layers than this (a server's own limit is usually far lower).
MAX_LAYERS = 100_000
#: Echoed values are cut to this many characters.
SHOWN_CHARS = 100


class NetworkError(ValueError):
    """A description that cannot be a network: the message says where and why."""


class LimitError(NetworkError):
    """A valid description that is larger than a limit allows (refused before allocating)."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` for a message: JSON-like, never a repr with a heap address, at most ``limit``
    characters (longer ones end in ``...``)."""
    if isinstance(value, str):
        text = json.dumps(value[:limit + 1])
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    elif isinstance(value, list | tuple | dict) and json_depth(value, 3) <= 3:
        try:
            text = json.dumps(value, default=lambda o: type(o).__name__)
        except (TypeError, ValueError):
            text = f"a {type(value).__name__}"
    elif isinstance(value, list | tuple | dict):
        text = f"a {type(value).__name__} nested deeper than 3 levels"
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def json_depth(value: Any, stop: int = MAX_JSON_DEPTH) -> int:
    """How deep lists and dicts nest in ``value`` (a scalar: 0), without recursion; counting
    stops past ``stop`` (then the answer is ``stop + 1``)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop:
            return stop + 1
        stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json(data: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text as Python data, or a NetworkError starting with ``what``: not JSON,
    NaN/Infinity, nested deeper than ``max_depth`` (the parser itself stops at a fixed depth,
    so nothing recurses without bound)."""
    try:
        value = pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as error:
        raise NetworkError(f"{what}: not valid JSON ({str(error)[:200]})") from None
    if json_depth(value, max_depth) > max_depth:
        raise NetworkError(f"{what}: nested deeper than {max_depth} levels")
    return value


class InputDescription(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name
    shape: Annotated[list[Annotated[StrictInt, Field(ge=1)]], Field(min_length=1, max_length=8)]
    dtype: Literal["float32"] = "float32"


class LayerDescription(BaseModel):
    """One layer; every key other than name/op/inputs/outputs is an attribute of the op."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: Name
    op: Name
    inputs: Annotated[list[Name], Field(min_length=1, max_length=1024)]
    outputs: Annotated[list[Name], Field(min_length=1, max_length=1024)] | None = None

    @model_validator(mode="after")
    def _plain_attributes(self) -> LayerDescription:
        """Attribute values are small plain JSON (numbers, bools, short lists of them); their
        types are checked against the operator when the network is built."""
        for key, value in (self.model_extra or {}).items():
            if len(key) > 64:
                raise ValueError(f"attribute name {shown(key)} is longer than 64 characters")
            if json_depth(value, MAX_ATTRIBUTE_DEPTH) > MAX_ATTRIBUTE_DEPTH:
                raise ValueError(f"attribute {key!r} nests deeper than {MAX_ATTRIBUTE_DEPTH} "
                                 "levels")
            if isinstance(value, list | dict) and len(value) > MAX_ATTRIBUTE_ITEMS:
                raise ValueError(f"attribute {key!r} has {len(value)} items; at most "
                                 f"{MAX_ATTRIBUTE_ITEMS}")
            if isinstance(value, str) and len(value) > 256:
                raise ValueError(f"attribute {key!r} is a string of {len(value)} characters")
        return self

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NetworkDescription(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name = "network"
    inputs: Annotated[list[InputDescription], Field(min_length=1, max_length=1024)]
    layers: Annotated[list[LayerDescription], Field(min_length=1, max_length=MAX_LAYERS)]
    #: The network's outputs; default: the outputs of the last layer.
    outputs: Annotated[list[Name], Field(max_length=1024)] | None = None
    #: Seed for the weights drawn when the network carries none.
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0


def _validation_message(error: ValidationError) -> str:
    problems = []
    for e in error.errors(include_url=False, include_input=False)[:10]:
        where = ".".join(str(p)[:64] for p in e["loc"]) or "(top level)"
        problems.append(f"{where}: {e['msg'][:200]}")
    more = f" (and {error.error_count() - 10} more)" if error.error_count() > 10 else ""
    return "invalid network description: " + "; ".join(problems) + more


def parse_description(text: str | bytes, limits: Limits | None = None) -> NetworkDescription:
    """A description from JSON text; NetworkError saying what is wrong (with its location)."""
    return description_of(load_json(text, "invalid network description"), limits)


def description_of(data: Any, limits: Limits | None = None) -> NetworkDescription:
    """A description from Python data (parsed JSON, or what the ONNX importer builds);
    ``limits.max_layers`` is checked before the layers are validated."""
    if isinstance(data, NetworkDescription):
        return data
    if not isinstance(data, Mapping):
        raise NetworkError(f"a network description is a JSON object, not {shown(data)}")
    layers = data.get("layers")
    most = MAX_LAYERS if limits is None or limits.max_layers is None else min(
        MAX_LAYERS, limits.max_layers)
    if isinstance(layers, list) and len(layers) > most:     # before anything walks them
        raise LimitError(f"the network has {len(layers)} layers; at most {most} are allowed")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise NetworkError(f"invalid network description: nested deeper than {MAX_JSON_DEPTH} "
                           "levels")
    try:
        return NetworkDescription.model_validate(_plain(data))
    except ValidationError as error:
        raise NetworkError(_validation_message(error)) from None
    except RecursionError:
        raise NetworkError(f"invalid network description: nested deeper than "
                           f"{MAX_JSON_DEPTH} levels") from None


def _plain(value: Any) -> Any:
    """Python data as JSON data: tuples and arrays as lists, NumPy scalars as Python ones
    (what a Python caller such as the ONNX importer may hold; JSON never has them)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- limits -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """Bounds a network must keep, all checked on the inferred shapes before any weight is
    drawn (None: no bound)."""

    max_layers: int | None = None
    #: One activation or input tensor.
    max_tensor_bytes: int | None = None
    #: All weights together.
    max_weight_bytes: int | None = None
    #: Weights plus every activation and input (an upper bound of what a run holds at once).
    max_total_bytes: int | None = None

    @classmethod
    def of_this_machine(cls) -> Limits:
        """What this process could sensibly hold: no tensor, and not all the weights, larger
        than `CLI_MAX_BYTES` or a quarter of its memory (physical memory, or a lower
        address-space limit), nor
        weights and activations together larger than half of it. A quarter, because building
        a constant (an ONNX Tile, say) and preparing weights briefly need a few times the bytes
        they keep: a tiny file must not take the machine down before a limit says no."""
        memory = machine_memory_bytes()
        return cls(max_tensor_bytes=min(memory // 4, CLI_MAX_BYTES),
                   max_weight_bytes=min(memory // 4, CLI_MAX_BYTES),
                   max_total_bytes=memory // 2)


#: The CLI's bound on one tensor and on all weights (what any CNN convplan plans needs: VGG's
#: largest weight is 411 MB), whatever the machine's memory.
CLI_MAX_BYTES = 2 << 30


def machine_memory_bytes() -> int:
    """Physical memory, or the process's address-space limit when that is lower."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 1 << 40
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and 0 < soft < memory:
            memory = soft
    except (ImportError, OSError, ValueError):
        pass
    return int(memory)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


# -- attributes -------------------------------------------------------------------------------
#: The JSON type of every attribute of every operator (`kernels.operators`' attribute_defaults;
#: the operator then checks the values). A kind ending in "?" may also be null.
_I, _IS, _I_IS, _N, _B = "int", "ints", "int or ints", "number", "bool"
_POOL = {"kernel": _I_IS, "stride": _I_IS, "padding": _I_IS, "ceil_mode": _B}
_CONSTANT = {"constant_shape": _IS + "?"}
ATTRIBUTE_TYPES: dict[str, dict[str, str]] = {
    "conv": {"out_channels": _I, "kernel": _I_IS, "stride": _I_IS, "padding": _I_IS,
             "dilation": _I_IS, "groups": _I, "bias": _B},
    "relu": {}, "sigmoid": {}, "hardswish": {}, "identity": {}, "batchnorm": {},
    "globalavgpool": {},
    "clip": {"min": _N + "?", "max": _N + "?"},
    "hardsigmoid": {"alpha": _N, "beta": _N},
    "add": _CONSTANT, "mul": _CONSTANT, "sub": _CONSTANT, "div": _CONSTANT,
    "gemm": {"out_features": _I, "alpha": _N, "beta": _N, "trans_a": _B, "trans_b": _B,
             "bias": _B},
    "matmul": _CONSTANT,
    "lrn": {"size": _I, "alpha": _N, "beta": _N, "bias": _N},
    "maxpool": {**_POOL, "dilation": _I_IS},
    "avgpool": {**_POOL, "count_include_pad": _B},
    "softmax": {"axis": _I}, "concat": {"axis": _I}, "flatten": {"axis": _I},
    "split": {"axis": _I, "sizes": _IS},
    "reshape": {"shape": _IS}, "transpose": {"perm": _IS + "?"},
    "slice": {"starts": _IS, "ends": _IS, "axes": _IS + "?", "steps": _IS + "?"},
}


_KIND_WORDS = {_I: "an int", _IS: "a list of ints", _I_IS: "an int or a list of ints",
               _N: "a finite number", _B: "true or false"}


def _kind_of_default(default: Any) -> str:
    """The kind of an attribute an operator declares but the table above does not list."""
    if isinstance(default, bool):
        return _B
    if isinstance(default, int):
        return _I_IS
    if isinstance(default, float):
        return _N
    return "number or ints?"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_ints(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _fits(kind: str, value: Any) -> bool:
    if kind.endswith("?"):
        if value is None:
            return True
        kind = kind[:-1]
    if kind == _B:
        return isinstance(value, bool)
    if kind == _I:
        return _is_int(value)
    if kind == _IS:
        return _is_ints(value)
    if kind == _I_IS:
        return _is_int(value) or _is_ints(value)
    if kind == _N:
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    return _fits(_N, value) or _is_ints(value)


def attribute_types(op: str) -> dict[str, str]:
    """Attribute name -> JSON kind for ``op`` (ValueError for an unknown operator)."""
    declared = operators.operator_class(op).attribute_defaults()
    table = ATTRIBUTE_TYPES.get(op, {})
    return {name: table.get(name) or _kind_of_default(default)
            for name, default in declared.items()}


def make_operator(op: str, attrs: Mapping[str, Any]) -> Operator:
    """The operator, its attributes checked first: known names, JSON types (a bool is not an
    int, a string is not a number, nothing is coerced), then the operator's own checks."""
    kinds = attribute_types(op)
    unknown = [k for k in attrs if k not in kinds]
    if unknown:
        listed = ", ".join(quoted(k) for k in sorted(unknown)[:5])
        raise ValueError(f"{op}: unknown attribute(s) {listed}; known: "
                         f"{', '.join(kinds) or 'none'}")
    for name, value in attrs.items():
        kind = kinds[name]
        if not _fits(kind, value):
            want = _KIND_WORDS.get(kind.removesuffix("?"), "a number or a list of ints")
            null = " or null" if kind.endswith("?") else ""
            raise ValueError(f"{op}: {name} must be {want}{null}, got {shown(value)}")
    return operators.make(op, **attrs)


@dataclass
class Node:
    """One layer of a checked network."""

    name: str
    operator: Operator
    inputs: list[str]
    outputs: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.operator.op


@dataclass
class Network:
    """A checked network: nodes in execution order, every tensor's shape, and the weights."""

    name: str
    inputs: dict[str, Shape]
    nodes: list[Node]
    outputs: list[str]
    shapes: dict[str, Shape]
    graph: nx.DiGraph
    seed: int = 0
    #: The ONNX file the network was imported from, if any (the reference check runs it).
    source: Path | None = None

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_description(cls, description: NetworkDescription | Mapping[str, Any] | str | bytes,
                         weights: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
                         limits: Limits | None = None) -> Network:
        """Check the description (names, ops, arity, attributes, shapes, cycles, weight shapes
        and ``limits``) and only then attach weights: those given (layer name -> weight name ->
        array) or seeded random ones."""
        return check_description(description, weights, limits=limits).attach(weights)

    def to_description(self) -> NetworkDescription:
        layers = []
        for node in self.nodes:
            entry: dict[str, Any] = {"name": node.name, "op": node.op, "inputs": node.inputs}
            if node.outputs != [node.name]:
                entry["outputs"] = node.outputs
            entry.update(_jsonable(node.operator.attrs))
            layers.append(entry)
        return NetworkDescription.model_validate({
            "name": self.name, "seed": self.seed,
            "inputs": [{"name": k, "shape": list(v)} for k, v in self.inputs.items()],
            "layers": layers, "outputs": self.outputs})

    # -- questions ---------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def conv_spec(self, node: Node) -> ConvSpec:
        if not isinstance(node.operator, Conv):
            raise ValueError(f"layer {node.name!r} is a {node.op}, not a conv")
        return node.operator.spec(self.shapes[node.inputs[0]])

    @property
    def conv_nodes(self) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.operator, Conv)]

    def tensor_bytes(self, tensor: str) -> int:
        return int(np.prod(self.shapes[tensor])) * 4

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for n in self.nodes for w in n.weights.values())

    @property
    def flops(self) -> int:
        return sum(self.conv_spec(n).flops for n in self.conv_nodes)

    def summary(self) -> dict[str, Any]:
        ops: dict[str, int] = {}
        for n in self.nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        return {"name": self.name, "inputs": {k: list(v) for k, v in self.inputs.items()},
                "outputs": {k: list(self.shapes[k]) for k in self.outputs},
                "layers": len(self.nodes), "convolutions": len(self.conv_nodes),
                "ops": ops, "conv_gflop": round(self.flops / 1e9, 3),
                "weight_bytes": self.weight_bytes}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def quoted(name: str) -> str:
    """A name for a message (quoted, cut to a readable length)."""
    return repr(name) if len(name) <= 60 else repr(name[:57]) + "..."


@dataclass
class CheckedNetwork:
    """A description that passed every check (names, ops, arity, attributes, cycles, shapes,
    weight shapes, limits) and holds no weight yet: the first of the two steps of building a
    `Network`; `attach` is the second."""

    description: NetworkDescription
    nodes: list[Node]                     # in execution order, weights not attached
    shapes: dict[str, Shape]
    outputs: list[str]
    graph: nx.DiGraph
    weight_shapes: dict[str, dict[str, Shape]]

    @property
    def weight_bytes(self) -> int:
        """What `attach` will allocate for the weights (float32)."""
        return sum(4 * math.prod(s) for w in self.weight_shapes.values() for s in w.values())

    def attach(self, weights: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> Network:
        """The network with ``weights`` (layer -> name -> array, as checked) or, for a layer
        not given, seeded random ones drawn straight into float32."""
        weights = weights or {}
        d = self.description
        nodes = [replace(node, weights=_weights_for(
            node, self.weight_shapes[node.name], weights.get(node.name), d.seed))
            for node in self.nodes]
        return Network(d.name, {i.name: tuple(i.shape) for i in d.inputs}, nodes,
                       list(self.outputs), dict(self.shapes), self.graph, d.seed)


def check_description(description: NetworkDescription | Mapping[str, Any] | str | bytes,
                      weights: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
                      limits: Limits | None = None) -> CheckedNetwork:
    """Everything checked and every limit applied to the inferred shapes, allocating nothing
    the size of a tensor; a limit error says which tensor or layer crossed it. Given
    ``weights`` are checked against the shapes their layers need."""
    if isinstance(description, str | bytes):
        description = parse_description(description, limits)
    else:
        description = description_of(description, limits)
    return _check(description, weights or {}, limits or Limits())


def _check(d: NetworkDescription, weights: Mapping[str, Mapping[str, np.ndarray]],
           limits: Limits) -> CheckedNetwork:
    if limits.max_layers is not None and len(d.layers) > limits.max_layers:
        raise LimitError(f"the network has {len(d.layers)} layers; at most {limits.max_layers} "
                         "are allowed")
    shapes: dict[str, Shape] = {}
    producer: dict[str, str] = {}
    total = 0

    def tensor(name: str, shape: Shape, where: str) -> int:
        size = 4 * math.prod(shape)
        if limits.max_tensor_bytes is not None and size > limits.max_tensor_bytes:
            raise LimitError(f"{where}tensor {quoted(name)} of shape {list(shape)} takes "
                             f"{_size(size)}; at most {_size(limits.max_tensor_bytes)} per "
                             "tensor are allowed")
        return size

    for inp in d.inputs:
        if inp.name in shapes:
            raise NetworkError(f"input {quoted(inp.name)} is declared twice")
        shapes[inp.name] = tuple(inp.shape)
        producer[inp.name] = ""
        total += tensor(inp.name, shapes[inp.name], "input ")

    # Names, operators and attributes first; the order of layers comes from the graph.
    nodes: dict[str, Node] = {}
    graph = nx.DiGraph()
    for index, layer in enumerate(d.layers):
        if layer.name in nodes:
            raise NetworkError(f"layer name {quoted(layer.name)} is used twice")
        try:
            operator = make_operator(layer.op, layer.attrs)
            operator.check_arity(len(layer.inputs))
        except ValueError as error:
            raise NetworkError(f"layer {quoted(layer.name)}: {str(error)[:300]}") from None
        outputs = list(layer.outputs or [layer.name])
        if len(set(outputs)) != len(outputs):
            raise NetworkError(f"layer {quoted(layer.name)}: names one output twice")
        for out in outputs:
            if out in producer:
                what = "an input" if producer[out] == "" else f"layer {quoted(producer[out])}"
                raise NetworkError(f"layer {quoted(layer.name)}: output {quoted(out)} is already "
                                   f"produced by {what}")
            producer[out] = layer.name
        nodes[layer.name] = Node(layer.name, operator, list(layer.inputs), outputs)
        graph.add_node(layer.name, index=index)
    for node in nodes.values():
        for t in node.inputs:
            if t not in producer:
                raise NetworkError(f"layer {quoted(node.name)}: input {quoted(t)} is neither a "
                                   "network input nor the output of a layer")
            if producer[t]:
                graph.add_edge(producer[t], node.name, tensor=t)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = [cycle[0][0]] + [v for _, v in cycle]
        shown_path = " -> ".join(quoted(n) for n in path[:8]) + (" -> ..." if len(path) > 8 else "")
        raise NetworkError(f"the layers form a cycle: {shown_path}")
    order = list(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["index"]))

    # Shapes, weight shapes and every limit, in execution order; no weight exists yet.
    wanted_of: dict[str, dict[str, Shape]] = {}
    weight_total = 0
    for name in order:
        node = nodes[name]
        in_shapes = [shapes[t] for t in node.inputs]
        try:
            out_shapes = node.operator.output_shapes(in_shapes)
            wanted = {k: tuple(int(d) for d in s)
                      for k, s in node.operator.weight_shapes(in_shapes).items()}
        except ValueError as error:
            shown_in = ", ".join(f"{quoted(t)} {list(s)}"
                                 for t, s in zip(node.inputs[:4], in_shapes, strict=False))
            more = ", ..." if len(node.inputs) > 4 else ""
            raise NetworkError(f"layer {quoted(name)} ({node.op} of {shown_in}{more}): "
                               f"{str(error)[:300]}") from None
        if len(out_shapes) != len(node.outputs):
            raise NetworkError(f"layer {quoted(name)}: {node.op} produces {len(out_shapes)} "
                               f"output(s), but {len(node.outputs)} are named")
        for t, shape in zip(node.outputs, out_shapes, strict=True):
            shape = tuple(int(s) for s in shape)
            if min(shape, default=1) < 1:
                raise NetworkError(f"layer {quoted(name)}: output {quoted(t)} would have shape "
                                   f"{list(shape)} (empty)")
            shapes[t] = shape
            total += tensor(t, shape, f"layer {quoted(name)}: output ")
        _check_given(node, wanted, weights.get(name))
        wanted_of[name] = wanted
        weight_total += sum(4 * math.prod(s) for s in wanted.values())
        if limits.max_weight_bytes is not None and weight_total > limits.max_weight_bytes:
            raise LimitError(f"the weights reach {_size(weight_total)} at layer {quoted(name)}; at "
                             f"most {_size(limits.max_weight_bytes)} are allowed")
    if limits.max_total_bytes is not None and weight_total + total > limits.max_total_bytes:
        raise LimitError(f"the network needs up to {_size(weight_total + total)} (weights "
                         f"{_size(weight_total)} + activations and inputs {_size(total)}); at "
                         f"most {_size(limits.max_total_bytes)} are allowed")

    outputs = list(d.outputs or nodes[order[-1]].outputs)
    for t in outputs:
        if t not in shapes:
            raise NetworkError(f"network output {quoted(t)} is not produced by any layer")

    return CheckedNetwork(d, [nodes[n] for n in order], shapes, outputs, graph, wanted_of)


def _check_given(node: Node, wanted: dict[str, Shape],
                 given: Mapping[str, np.ndarray] | None) -> None:
    if given is None:
        return
    extra = set(given) - set(wanted)
    missing = set(wanted) - set(given)
    if extra or missing:
        raise NetworkError(f"layer {quoted(node.name)}: weights {sorted(given)[:8]} given, "
                           f"{node.op} needs {sorted(wanted)}")
    for key, shape in wanted.items():
        got = tuple(np.shape(given[key]))
        if got != tuple(shape):
            raise NetworkError(f"layer {quoted(node.name)}: weight {key!r} has shape "
                               f"{list(got)}, expected {list(shape)}")


def _weights_for(node: Node, wanted: dict[str, Shape],
                 given: Mapping[str, np.ndarray] | None, seed: int) -> dict[str, np.ndarray]:
    if given is not None:
        return {key: np.ascontiguousarray(given[key], dtype=np.float32) for key in wanted}
    rng = np.random.default_rng([seed, zlib.crc32(node.name.encode())])
    return {key: _draw(rng, node.operator, key, shape) for key, shape in wanted.items()}


def _draw(rng: np.random.Generator, operator: Operator, key: str, shape: Shape) -> np.ndarray:
    """Weights that keep activations of a deep random network in a sane range, drawn straight
    into float32 and scaled in place (no float64 intermediate twice their size)."""
    if key == "weight" or (operator.op == "gemm" and key == "b"):
        if key == "weight":
            fan_in = math.prod(shape[1:])
        else:
            fan_in = shape[1] if operator.attrs.get("trans_b") else shape[0]
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(math.sqrt(2.0 / max(fan_in, 1)))
        return out
    low, high = (0.5, 1.5) if key in ("scale", "constant") else (-0.1, 0.1)
    out = rng.random(shape, dtype=np.float32)
    out *= np.float32(high - low)
    out += np.float32(low)
    return out
