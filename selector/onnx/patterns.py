"""Subgraphs exporters write for one operator that ONNX lacked at their opset, found among the
layers an import emitted and replaced by that operator: one layer computes what the nodes did,
without their intermediate tensors (memory the plan no longer holds) or their passes.

- GELU before opset 20: x * 0.5 * (1 + Erf(x / sqrt 2)), the factors in any order (PyTorch's
  ``F.gelu``, timm, Keras), becomes one ``gelu``.

Every tensor inside a pattern must feed only the next layer of it and be no network output;
anything else is left as it was. Constants are recognised by their values as the converters
read them (`Importer.scalars`), so an import without weights finds the same patterns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

Layer = dict[str, Any]


def _outputs(layer: Layer) -> list[str]:
    return layer.get("outputs", [layer["name"]])


def _close(value: float, target: float) -> bool:
    """Equal up to float32 rounding of a constant written in a model (a few ulp)."""
    return abs(value - target) <= 1e-6 * abs(target)


class _Graph:
    """The layers' producers and consumers."""

    def __init__(self, layers: list[Layer], outputs: set[str]) -> None:
        self.producer = {t: layer for layer in layers for t in _outputs(layer)}
        self.consumers: dict[str, list[Layer]] = {}
        for layer in layers:
            for t in dict.fromkeys(layer["inputs"]):
                self.consumers.setdefault(t, []).append(layer)
        self.outputs = outputs

    def sole(self, tensor: str) -> Layer | None:
        """The one layer reading ``tensor``, when it is the only reader and no network output
        needs the tensor."""
        readers = self.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in self.outputs:
            return None
        return readers[0]


def _scale(layer: Layer | None, scalars: Mapping[str, tuple[float, float]]) -> float | None:
    """The factor of a layer that multiplies its one input by a constant scalar."""
    if layer is None or len(_outputs(layer)) != 1:
        return None
    scale, shift = scalars.get(layer["name"], (None, None))
    return scale if scale is not None and shift == 0 else None


def _gelu_members(erf: Layer, graph: _Graph, scalars: Mapping[str, tuple[float, float]]
                  ) -> tuple[str, list[Layer]] | None:
    """(x, the layers computing gelu(x)) when ``erf`` is the Erf of the pattern."""
    before = graph.producer.get(erf["inputs"][0])
    scale = _scale(before, scalars)
    if before is None or scale is None or not _close(scale, 1 / math.sqrt(2)) \
            or graph.sole(erf["inputs"][0]) is not erf:
        return None
    x = before["inputs"][0]
    plus_one = graph.sole(_outputs(erf)[0])
    if plus_one is None or len(_outputs(plus_one)) != 1:
        return None
    a, b = scalars.get(plus_one["name"], (0.0, None))
    if not a or b is None or not _close(b, a):          # a * (1 + erf)
        return None
    factor, members, multiplied = a, [before, erf, plus_one], False
    tensor = _outputs(plus_one)[0]
    while not (multiplied and _close(factor, 0.5)):
        nxt = graph.sole(tensor)
        if nxt is None or len(_outputs(nxt)) != 1:
            return None
        step = _scale(nxt, scalars)
        if step is not None:
            factor *= step
        elif (nxt["op"] == "mul" and not multiplied and len(nxt["inputs"]) == 2
              and nxt.get("constant_shape") is None and nxt["inputs"].count(tensor) == 1):
            other = next(t for t in nxt["inputs"] if t != tensor)
            if other != x:                               # x scaled first: (0.5 x) * (...)
                scaled = graph.producer.get(other)
                step = _scale(scaled, scalars)
                if scaled is None or step is None or scaled["inputs"][0] != x \
                        or graph.sole(other) is not nxt:
                    return None
                factor *= step
                members.append(scaled)
            multiplied = True
        else:
            return None
        members.append(nxt)
        tensor = _outputs(nxt)[0]
    return x, members


def fuse_gelu(layers: list[Layer], weights: dict[str, dict[str, np.ndarray]],
              outputs: set[str], scalars: Mapping[str, tuple[float, float]]) -> list[Layer]:
    """``layers`` with each Erf-based GELU replaced by one ``gelu`` layer, named as the
    pattern's last layer (which ``scalars`` -- layer name -> (scale, shift) of the layers that
    compute x * scale + shift with scalar constants -- identify); their weights dropped."""
    graph = _Graph(layers, outputs)
    replaced: dict[str, Layer] = {}
    removed: set[str] = set()
    for layer in layers:
        if layer["op"] != "erf" or layer["name"] in removed:
            continue
        found = _gelu_members(layer, graph, scalars)
        if found is None or any(m["name"] in removed for m in found[1]):
            continue
        x, members = found
        last = members[-1]
        replaced[last["name"]] = {"name": last["name"], "op": "gelu", "inputs": [x],
                                  **({"outputs": last["outputs"]} if "outputs" in last else {}),
                                  "approximate": "none"}
        removed.update(m["name"] for m in members)
    kept = []
    for layer in layers:
        if layer["name"] in replaced:
            kept.append(replaced[layer["name"]])
        elif layer["name"] not in removed:
            kept.append(layer)
    for name in removed:
        weights.pop(name, None)
    return kept
