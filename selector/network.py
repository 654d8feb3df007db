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
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernels import ConvSpec, operators
from kernels.operators import Operator, Shape
from kernels.operators.conv import Conv

Name = Annotated[str, Field(min_length=1, max_length=256)]


class NetworkError(ValueError):
    """A description that cannot be a network: the message says where and why."""


class InputDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=8)]
    dtype: Literal["float32"] = "float32"


class LayerDescription(BaseModel):
    """One layer; every key other than name/op/inputs/outputs is an attribute of the op."""

    model_config = ConfigDict(extra="allow")
    name: Name
    op: Name
    inputs: Annotated[list[Name], Field(min_length=1)]
    outputs: Annotated[list[Name], Field(min_length=1)] | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NetworkDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name = "network"
    inputs: Annotated[list[InputDescription], Field(min_length=1)]
    layers: Annotated[list[LayerDescription], Field(min_length=1)]
    #: The network's outputs; default: the outputs of the last layer.
    outputs: list[Name] | None = None
    #: Seed for the weights drawn when the network carries none.
    seed: int = 0


def parse_description(text: str | bytes) -> NetworkDescription:
    """A description from JSON text; NetworkError saying what is wrong (with its location)."""
    try:
        return NetworkDescription.model_validate_json(text)
    except ValidationError as error:
        problems = []
        for e in error.errors()[:10]:
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            problems.append(f"{where}: {e['msg']}")
        more = f" (and {error.error_count() - 10} more)" if error.error_count() > 10 else ""
        raise NetworkError("invalid network description: " + "; ".join(problems) + more
                           ) from None


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
    def from_description(cls, description: NetworkDescription | Mapping[str, Any] | str,
                         weights: Mapping[str, Mapping[str, np.ndarray]] | None = None
                         ) -> Network:
        """Check the description (names, ops, arity, attributes, shapes, cycles) and attach
        weights: those given (layer name -> weight name -> array) or seeded random ones."""
        if isinstance(description, str | bytes):
            description = parse_description(description)
        elif not isinstance(description, NetworkDescription):
            try:
                description = NetworkDescription.model_validate(description)
            except ValidationError:
                description = parse_description(json.dumps(description, default=str))
        return _build(description, weights or {})

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


def _build(d: NetworkDescription, weights: Mapping[str, Mapping[str, np.ndarray]]) -> Network:
    shapes: dict[str, Shape] = {}
    producer: dict[str, str] = {}
    for inp in d.inputs:
        if inp.name in shapes:
            raise NetworkError(f"input {inp.name!r} is declared twice")
        shapes[inp.name] = tuple(inp.shape)
        producer[inp.name] = ""

    # Names, operators and attributes first; the order of layers comes from the graph.
    seen: set[str] = set()
    nodes: dict[str, Node] = {}
    graph = nx.DiGraph()
    for index, layer in enumerate(d.layers):
        if layer.name in seen:
            raise NetworkError(f"layer name {layer.name!r} is used twice")
        seen.add(layer.name)
        try:
            operator = operators.make(layer.op, **layer.attrs)
            operator.check_arity(len(layer.inputs))
        except ValueError as error:
            raise NetworkError(f"layer {layer.name!r}: {error}") from None
        outputs = list(layer.outputs or [layer.name])
        for out in outputs:
            if out in producer:
                what = "an input" if producer[out] == "" else f"layer {producer[out]!r}"
                raise NetworkError(f"layer {layer.name!r}: output {out!r} is already produced "
                                   f"by {what}")
            producer[out] = layer.name
        nodes[layer.name] = Node(layer.name, operator, list(layer.inputs), outputs)
        graph.add_node(layer.name, index=index)
    for node in nodes.values():
        for tensor in node.inputs:
            if tensor not in producer:
                raise NetworkError(f"layer {node.name!r}: input {tensor!r} is neither a network "
                                   "input nor the output of a layer")
            if producer[tensor]:
                graph.add_edge(producer[tensor], node.name, tensor=tensor)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([cycle[0][0]] + [v for _, v in cycle])
        raise NetworkError(f"the layers form a cycle: {path}")
    order = list(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["index"]))

    rng_seed = d.seed
    for name in order:
        node = nodes[name]
        in_shapes = [shapes[t] for t in node.inputs]
        try:
            out_shapes = node.operator.output_shapes(in_shapes)
            wanted = node.operator.weight_shapes(in_shapes)
        except ValueError as error:
            shown = ", ".join(f"{t} {list(s)}" for t, s in zip(node.inputs, in_shapes, strict=True))
            raise NetworkError(f"layer {name!r} ({node.op} of {shown}): {error}") from None
        if len(out_shapes) != len(node.outputs):
            raise NetworkError(f"layer {name!r}: {node.op} produces {len(out_shapes)} output(s), "
                               f"but {len(node.outputs)} are named")
        for tensor, shape in zip(node.outputs, out_shapes, strict=True):
            if min(shape, default=1) < 1:
                raise NetworkError(f"layer {name!r}: output {tensor!r} would have shape "
                                   f"{list(shape)} (empty)")
            shapes[tensor] = tuple(int(s) for s in shape)
        node.weights = _weights_for(node, wanted, weights.get(name), rng_seed)

    outputs = list(d.outputs or nodes[order[-1]].outputs)
    for tensor in outputs:
        if tensor not in shapes:
            raise NetworkError(f"network output {tensor!r} is not produced by any layer")
    return Network(d.name, {i.name: tuple(i.shape) for i in d.inputs},
                   [nodes[n] for n in order], outputs, shapes, graph, d.seed)


def _weights_for(node: Node, wanted: dict[str, Shape],
                 given: Mapping[str, np.ndarray] | None, seed: int) -> dict[str, np.ndarray]:
    if given is not None:
        extra = set(given) - set(wanted)
        missing = set(wanted) - set(given)
        if extra or missing:
            raise NetworkError(f"layer {node.name!r}: weights {sorted(given)} given, "
                               f"{node.op} needs {sorted(wanted)}")
        out = {}
        for key, shape in wanted.items():
            array = np.ascontiguousarray(given[key], dtype=np.float32)
            if array.shape != tuple(shape):
                raise NetworkError(f"layer {node.name!r}: weight {key!r} has shape "
                                   f"{list(array.shape)}, expected {list(shape)}")
            out[key] = array
        return out
    rng = np.random.default_rng([seed, zlib.crc32(node.name.encode())])
    return {key: _draw(rng, node.operator, key, shape) for key, shape in wanted.items()}


def _draw(rng: np.random.Generator, operator: Operator, key: str, shape: Shape) -> np.ndarray:
    """Weights that keep activations of a deep random network in a sane range."""
    if key == "weight" or (operator.op == "gemm" and key == "b"):
        if key == "weight":
            fan_in = int(np.prod(shape[1:]))
        else:
            fan_in = shape[1] if operator.attrs.get("trans_b") else shape[0]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    if key in ("scale", "constant"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)
