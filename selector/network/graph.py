"""A checked network: its nodes in execution order, every tensor's shape and the weights;
built by `checking` (`Network.from_description`), described back by `to_description`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convplan.kernels import ConvSpec
from convplan.kernels.operators import Operator, Shape
from convplan.kernels.operators.conv import Conv

from .description import NetworkDescription
from .limits import Limits
from .shapes import InputShapes


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
    seed: int = 0
    #: The ONNX file the network was imported from, if any (the reference check runs it).
    source: Path | None = None
    #: Layers whose weights were drawn from ``seed`` (none given): they can be drawn again.
    seeded: frozenset[str] = frozenset()
    #: Convolutions whose weights were handed to a program (`release_conv_weights`).
    released: set[str] = field(default_factory=set)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_description(cls, description: NetworkDescription | Mapping[str, Any] | str | bytes,
                         weights: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
                         limits: Limits | None = None,
                         input_shapes: InputShapes | None = None) -> Network:
        """Check the description (names, ops, arity, attributes, shapes, cycles, weight shapes
        and ``limits``, for ``input_shapes`` if given) and only then attach weights: those
        given (layer name -> weight name -> array) or seeded random ones."""
        from .checking import check_description  # checking builds Networks

        return check_description(description, weights, limits=limits,
                                 input_shapes=input_shapes).attach(weights)

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

    # -- weights handed over ------------------------------------------------------------------
    def release_conv_weights(self) -> None:
        """Drop every convolution's weights from this network (its nodes only: a program
        lowered from it keeps its own references). For a network whose owner hands it to the
        runner, so that preparing a layer can free the layer's original; a network given to
        convplan by a caller is never released."""
        for node in self.conv_nodes:
            if node.weights:
                node.weights = {}
                self.released.add(node.name)

    @property
    def restorable(self) -> bool:
        """Whether every released layer can get its weights back (`restore_weights`)."""
        return self.released <= self.seeded

    def restore_weights(self) -> None:
        """Give released layers their weights again, drawn from the seed as they first were
        (the same bits): for the reference check, which needs the originals."""
        from .weights import weights_for  # weights builds on Node

        if not self.restorable:
            raise ValueError("the released weights were not seeded and cannot be drawn again: "
                             f"{', '.join(sorted(self.released - self.seeded))}")
        for node in self.nodes:
            if node.name in self.released:
                wanted = node.operator.weight_shapes([self.shapes[t] for t in node.inputs])
                node.weights = weights_for(node, {k: tuple(v) for k, v in wanted.items()},
                                           None, self.seed)
        self.released.clear()

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
