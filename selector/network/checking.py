"""Checking a description: names, operators, arity, attributes, cycles, shapes, weight shapes
and every limit, all before the first weight is drawn; `CheckedNetwork.attach` then makes the
`Network`."""

from __future__ import annotations

import graphlib
import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from convplan.kernels.operators import Shape

from .attributes import make_operator
from .description import (
    InputDescription,
    LayerDescription,
    NetworkDescription,
    description_of,
    parse_description,
)
from .errors import LimitError, NetworkError, quoted
from .graph import Network, Node
from .limits import Limits, size_text
from .shapes import InputShapes, batch_reshape
from .weights import weights_for


@dataclass
class CheckedNetwork:
    """A description that passed every check (names, ops, arity, attributes, cycles, shapes,
    weight shapes, limits) and holds no weight yet: the first of the two steps of building a
    `Network`; `attach` is the second."""

    description: NetworkDescription
    nodes: list[Node]                     # in execution order, weights not attached
    shapes: dict[str, Shape]
    outputs: list[str]
    weight_shapes: dict[str, dict[str, Shape]]

    @property
    def weight_bytes(self) -> int:
        """What `attach` will allocate for the weights (float32)."""
        return sum(4 * math.prod(s) for w in self.weight_shapes.values() for s in w.values())

    def attach(self, weights: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
               draw: bool = True) -> Network:
        """A new network with ``weights`` (layer -> name -> array, as checked) or, for a layer
        not given, seeded random ones drawn straight into float32 (drawn again on every call:
        the checked description holds none). ``draw=False`` leaves a layer not given without
        weights: a compiled plan's loader attaches its convolutions' prepared ones instead."""
        weights = weights or {}
        d = self.description
        nodes = [replace(node, weights=weights_for(
            node, self.weight_shapes[node.name], weights.get(node.name), d.seed)
            if draw or node.name in weights else {})
            for node in self.nodes]
        seeded = frozenset(n.name for n in self.nodes
                           if self.weight_shapes[n.name] and n.name not in weights and draw)
        return Network(d.name, {i.name: tuple(i.shape) for i in d.inputs}, nodes,
                       list(self.outputs), dict(self.shapes), d.seed,
                       seeded=seeded)


def check_description(description: NetworkDescription | Mapping[str, Any] | str | bytes,
                      weights: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
                      limits: Limits | None = None, input_shapes: InputShapes | None = None
                      ) -> CheckedNetwork:
    """Everything checked and every limit applied to the inferred shapes, allocating nothing
    the size of a tensor; a limit error says which tensor or layer crossed it. Given
    ``weights`` are checked against the shapes their layers need.

    ``input_shapes`` (a batch, or whole shapes of named inputs) replace the declared ones
    before shapes are inferred, so the limits hold for them; a reshape whose literal shape
    hard-codes the declared batch is rewritten for the new one when it reshapes each image on
    its own (`batch_reshape`), else refused naming the layer, as is a slice or split of the
    batch axis and a constant holding one value per image of the declared batch. The checked
    description is the one with the new shapes."""
    if isinstance(description, str | bytes):
        description = parse_description(description, limits)
    else:
        description = description_of(description, limits)
    limits = limits or Limits()
    changed = input_shapes.resolve({i.name: i.shape for i in description.inputs},
                                   f"network {quoted(description.name)}") \
        if input_shapes else {}
    if not changed:
        return _check(description, weights or {}, limits)
    for name, shape in changed.items():     # before anything is walked
        _tensor_limit(limits, name, shape, "input ")
    declared = _check(description, {}, Limits(max_layers=limits.max_layers))
    inputs = [InputDescription(name=i.name, shape=list(changed.get(i.name, i.shape)))
              for i in description.inputs]
    return _check(description.model_copy(update={"inputs": inputs}), weights or {}, limits,
                  declared)


def _tensor_limit(limits: Limits, name: str, shape: Shape, where: str) -> int:
    size = 4 * math.prod(shape)
    if limits.max_tensor_bytes is not None and size > limits.max_tensor_bytes:
        raise LimitError(f"{where}tensor {quoted(name)} of shape {list(shape)} takes "
                         f"{size_text(size)}; at most {size_text(limits.max_tensor_bytes)} "
                         "per tensor are allowed")
    return size


def _for_new_shapes(node: Node, in_shapes: list[Shape], declared: CheckedNetwork
                    ) -> list[int] | None:
    """What a layer becomes when its input's leading dimension changed: a reshape's new
    literal shape (or None: unchanged), or a NetworkError for a layer whose attributes
    hard-code the declared batch (ConstantOfShape, Expand and Tile are folded into such
    constants at import)."""
    before = [declared.shapes[t] for t in node.inputs]
    if not before or not in_shapes[0] or not before[0] or in_shapes[0][0] == before[0][0]:
        return None
    if node.op == "reshape":
        return batch_reshape(node.name, node.operator.attrs["shape"], before[0], in_shapes[0],
                             declared.shapes[node.outputs[0]])
    attrs = node.operator.attrs
    rank = len(in_shapes[0])
    constant = attrs.get("constant_shape")
    if constant and len(constant) == rank and constant[0] == before[0][0] > 1:
        raise NetworkError(f"layer {quoted(node.name)}: its constant of shape {list(constant)} "
                           f"holds one value per image of batch {before[0][0]} and cannot be "
                           f"used for batch {in_shapes[0][0]}; load the network with its "
                           "declared batch")
    if node.op == "split":
        axes = [attrs["axis"]]
    elif node.op == "slice":
        axes = attrs["axes"] if attrs["axes"] is not None else range(len(attrs["starts"]))
    else:
        return None
    if any(int(a) % rank == 0 for a in axes):
        raise NetworkError(f"layer {quoted(node.name)}: {node.op} of axis 0 with literal "
                           f"bounds was written for batch {before[0][0]} and cannot be "
                           f"rewritten for {in_shapes[0][0]}; load the network with its "
                           "declared batch")
    return None


def _check(d: NetworkDescription, weights: Mapping[str, Mapping[str, np.ndarray]],
           limits: Limits, declared: CheckedNetwork | None = None) -> CheckedNetwork:
    """The checks, in order; with ``declared`` (the same layers checked at the declared input
    shapes), ``d``'s inputs are new shapes and layers that hard-code the batch are rewritten
    (`_for_new_shapes`)."""
    if limits.max_layers is not None and len(d.layers) > limits.max_layers:
        raise LimitError(f"the network has {len(d.layers)} layers; at most {limits.max_layers} "
                         "are allowed")
    shapes: dict[str, Shape] = {}
    producer: dict[str, str] = {}
    total = 0

    def tensor(name: str, shape: Shape, where: str) -> int:
        return _tensor_limit(limits, name, shape, where)

    for inp in d.inputs:
        if inp.name in shapes:
            raise NetworkError(f"input {quoted(inp.name)} is declared twice")
        shapes[inp.name] = tuple(inp.shape)
        producer[inp.name] = ""
        total += tensor(inp.name, shapes[inp.name], "input ")

    # Names, operators and attributes first; the order of layers comes from their inputs.
    nodes: dict[str, Node] = {}
    index: dict[str, int] = {}
    for layer in d.layers:
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
        index[layer.name] = len(index)
    for node in nodes.values():
        for t in node.inputs:
            if t not in producer:
                raise NetworkError(f"layer {quoted(node.name)}: input {quoted(t)} is neither a "
                                   "network input nor the output of a layer")
    order = _execution_order(nodes, producer, index)

    # Shapes, weight shapes and every limit, in execution order; no weight exists yet.
    wanted_of: dict[str, dict[str, Shape]] = {}
    weight_total = 0
    rewritten: dict[str, list[int]] = {}
    for name in order:
        node = nodes[name]
        in_shapes = [shapes[t] for t in node.inputs]
        if declared is not None:
            target = _for_new_shapes(node, in_shapes, declared)
            if target is not None:
                node.operator = make_operator("reshape", {"shape": target})
                rewritten[name] = target
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
            raise LimitError(f"the weights reach {size_text(weight_total)} at layer "
                             f"{quoted(name)}; at most {size_text(limits.max_weight_bytes)} are "
                             "allowed")
    if limits.max_total_bytes is not None and weight_total + total > limits.max_total_bytes:
        raise LimitError(f"the network needs up to {size_text(weight_total + total)} (weights "
                         f"{size_text(weight_total)} + activations and inputs "
                         f"{size_text(total)}); at most {size_text(limits.max_total_bytes)} are "
                         "allowed")

    outputs = list(d.outputs or nodes[order[-1]].outputs)
    for t in outputs:
        if t not in shapes:
            raise NetworkError(f"network output {quoted(t)} is not produced by any layer")

    if rewritten:
        d = d.model_copy(update={"layers": [
            LayerDescription.model_validate({**layer.model_dump(), "shape": rewritten[layer.name]})
            if layer.name in rewritten else layer for layer in d.layers]})
    return CheckedNetwork(d, [nodes[n] for n in order], shapes, outputs, wanted_of)


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


def _execution_order(nodes: Mapping[str, Node], producer: Mapping[str, str],
                     index: Mapping[str, int]) -> list[str]:
    """The layers in dependency order, the earliest-declared ready layer first (so a
    description already in order keeps it); a NetworkError naming the cycle if there is one."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for node in nodes.values():
        sorter.add(node.name, *(producer[t] for t in node.inputs if producer[t]))
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        path = list(error.args[1])      # [a, b, ..., a], each an input of the next
        shown = " -> ".join(quoted(n) for n in path[:8]) + (" -> ..." if len(path) > 8 else "")
        raise NetworkError(f"the layers form a cycle: {shown}") from None
    ready = [(index[n], n) for n in sorter.get_ready()]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        sorter.done(name)
        for n in sorter.get_ready():
            heapq.heappush(ready, (index[n], n))
    return order
