"""Subgraphs exporters write for one operator that ONNX lacked at their opset, found among the
layers an import emitted and replaced by that operator: one layer computes what the nodes did,
without their intermediate tensors (memory the plan no longer holds) or their passes.

- GELU before opset 20: x * 0.5 * (1 + Erf(x / sqrt 2)), the factors in any order (PyTorch's
  ``F.gelu``, timm, Keras), becomes one ``gelu``.
- Layer norm before opset 17: ReduceMean -> Sub -> Pow 2 -> ReduceMean -> Add epsilon -> Sqrt ->
  Div, then optionally Mul by the scale and Add the bias (PyTorch's ``F.layer_norm``), becomes
  one ``layernorm``.
- Zero padding written as its own Pad before a convolution (TF-style "same" padding: timm's
  tf_* models), or -inf padding before a max pool (NASNet's, PNASNet's), becomes the
  convolution's or the pool's own padding: no padded copy of the input.
- Channels-last stretches (ConvNeXt): Transpose NCHW -> NHWC, layer norms over the last axis,
  Linear layers (MatMul and Add over the last axis) and activations, Transpose back. The same
  computation in NCHW needs neither transpose: the layer norm over the channels, each Linear a
  1x1 convolution, its bias and scale per channel (which `weights.fold_affine` then folds
  into the convolutions).

Every tensor inside a pattern must feed only the next layer of it and be no network output;
anything else is left as it was. Constants are recognised by their values as the converters
read them (`Importer.scalars`), so an import without weights finds the same patterns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from convplan.kernels import operators
from convplan.kernels.operators.elementwise import Unary

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


#: NCHW -> NHWC, and back.
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _perm(layer: Layer) -> list[int] | None:
    perm = layer.get("perm")
    return None if perm is None else [int(p) for p in perm]


def _elementwise(layer: Layer) -> bool:
    """One activation in, the same shape out, no weights: commutes with any transpose."""
    op = layer["op"]
    return op in operators.names() and issubclass(operators.operator_class(op), Unary) \
        and len(layer["inputs"]) == 1


def _last_axis_constant(layer: Layer) -> bool:
    """An add or mul of one activation and a constant that varies along the last axis only
    (so it has one value per channel of the NHWC tensor)."""
    shape = layer.get("constant_shape")
    return (layer["op"] in ("add", "mul") and len(layer["inputs"]) == 1 and shape is not None
            and 1 <= len(shape) <= 4 and shape[-1] > 1 and all(d == 1 for d in shape[:-1]))


def _commutes(layer: Layer, perm: list[int]) -> bool:
    """Whether ``layer``, reading the transpose by ``perm`` of an NCHW tensor, can run on the
    NCHW tensor instead (its output then transposed the same way)."""
    if _elementwise(layer):
        return True
    if layer["op"] == "layernorm":
        rank = len(perm)
        axes = sorted(a % rank for a in layer.get("axes", [-1]))
        mapped = [perm[a] for a in axes]
        return mapped == sorted(mapped)         # the scale's layout stays as it is
    if perm != TO_NHWC:
        return False
    if layer["op"] == "matmul":
        shape = layer.get("constant_shape")
        return len(layer["inputs"]) == 1 and shape is not None and len(shape) == 2
    return _last_axis_constant(layer)


def _in_nchw(layer: Layer, perm: list[int], weights: dict[str, dict[str, np.ndarray]],
             values: bool) -> Layer:
    """``layer`` rewritten to run on the NCHW tensor (see `_commutes`); its weights too."""
    name, rank = layer["name"], len(perm)
    kept = {k: v for k, v in layer.items() if k in ("name", "inputs", "outputs")}
    if _elementwise(layer):
        return dict(layer)
    if layer["op"] == "layernorm":
        axes = sorted(a % rank for a in layer.get("axes", [-1]))
        return {**layer, "axes": [perm[a] for a in axes]}
    w = weights.get(name, {})
    if layer["op"] == "matmul":                 # x @ W over the channels: a 1x1 convolution
        c, d = (int(v) for v in layer["constant_shape"])
        constant = w["constant"]
        weight = np.ascontiguousarray(constant.T).reshape(d, c, 1, 1) if values \
            else np.broadcast_to(np.zeros((), np.float32), (d, c, 1, 1))
        weights[name] = {"weight": weight}
        return {**kept, "op": "conv", "out_channels": d, "kernel": 1, "bias": False}
    vector = w["constant"].reshape(-1)          # per channel: a batchnorm (scale, shift)
    one, zero = np.ones_like(vector), np.zeros_like(vector)
    scale, shift = (one, vector) if layer["op"] == "add" else (vector, zero)
    weights[name] = {"scale": scale, "shift": shift}
    return {**kept, "op": "batchnorm"}


def sink_transposes(layers: list[Layer], weights: dict[str, dict[str, np.ndarray]],
                    outputs: set[str], *, values: bool = True) -> list[Layer]:
    """``layers`` with each stretch Transpose(perm) -> layers that commute with it ->
    Transpose(inverse perm) computed on the untransposed tensor, without either transpose
    (the stretch's last layer takes the second transpose's name). Every tensor inside must
    feed only the next layer and be no network output; anything else is left as it was.
    Without ``values`` only the layers are rewritten (the weights are shapes only)."""
    graph = _Graph(layers, outputs)
    removed: set[str] = set()
    replaced: dict[str, Layer] = {}
    for first in layers:
        perm = _perm(first) if first["op"] == "transpose" else None
        if perm is None or first["name"] in removed:
            continue
        inverse = [perm.index(i) for i in range(len(perm))]
        chain: list[Layer] = []
        tensor = _outputs(first)[0]
        while True:
            nxt = graph.sole(tensor)
            if nxt is None or len(_outputs(nxt)) != 1 or nxt["name"] in removed:
                chain = []
                break
            if nxt["op"] == "transpose" and _perm(nxt) == inverse:
                last = nxt
                break
            if not _commutes(nxt, perm) or nxt["inputs"] != [tensor]:
                chain = []
                break
            chain.append(nxt)
            tensor = _outputs(nxt)[0]
        if not chain:
            continue
        rewritten = [_in_nchw(layer, perm, weights, values) for layer in chain]
        rewritten[0]["inputs"] = list(first["inputs"])
        end = rewritten[-1]
        old = end["name"]
        end["name"] = last["name"]
        end.pop("outputs", None)
        if "outputs" in last:
            end["outputs"] = list(last["outputs"])
        if old in weights:
            weights[last["name"]] = weights.pop(old)
        removed.update({first["name"], last["name"], *(layer["name"] for layer in chain)})
        replaced.update({layer["name"]: new for layer, new in zip(chain[:-1], rewritten,
                                                                   strict=False)})
        replaced[last["name"]] = end
    return [replaced.get(layer["name"], layer)
            for layer in layers if layer["name"] not in removed or layer["name"] in replaced]


def _readers(graph: _Graph, tensor: str) -> list[Layer]:
    return [] if tensor in graph.outputs else graph.consumers.get(tensor, [])


def _spanning(constant: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]
              ) -> np.ndarray | None:
    """A constant broadcasting against ``shape`` along ``axes`` only, as an array of those
    axes' shape (a view), or None."""
    if constant.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - constant.ndim) + constant.shape
    if any(d != 1 for i, d in enumerate(full) if i not in axes):
        return None
    if any(full[a] not in (1, shape[a]) for a in axes):
        return None
    return np.broadcast_to(constant.reshape([full[a] for a in axes]), [shape[a] for a in axes])


def _layernorm_members(first: Layer, graph: _Graph, scalars: Mapping[str, tuple[float, float]],
                       shapes: Mapping[str, tuple[int, ...]],
                       weights: Mapping[str, Mapping[str, np.ndarray]]
                       ) -> tuple[Layer, list[Layer]] | None:
    """(the layernorm, the layers it replaces) when ``first`` is the first ReduceMean of a
    layer norm written out."""
    x = first["inputs"][0]
    shape = shapes.get(x)
    if shape is None or not first.get("keepdims", True) or first.get("axes") is None:
        return None
    rank = len(shape)
    axes = tuple(sorted(int(a) % rank for a in first["axes"]))
    mean = _outputs(first)[0]
    sub = graph.sole(mean)
    if sub is None or sub["op"] != "sub" or sub["inputs"] != [x, mean] \
            or sub.get("constant_shape") is not None:
        return None
    centred = _outputs(sub)[0]
    readers = _readers(graph, centred)
    square = next((r for r in readers if r["op"] == "pow" and r.get("exponent") == 2), None)
    divide = next((r for r in readers if r["op"] == "div"), None)
    if len(readers) != 2 or square is None or divide is None:
        return None
    chain, tensor = [], _outputs(square)[0]
    for test in (lambda r: r["op"] == "reducemean" and r.get("keepdims", True)
                 and r.get("axes") is not None
                 and tuple(sorted(int(a) % rank for a in r["axes"])) == axes,
                 lambda r: r["op"] in ("add", "batchnorm") and len(r["inputs"]) == 1
                 and scalars.get(r["name"], (None, None))[0] == 1.0,
                 lambda r: r["op"] == "sqrt"):
        layer = graph.sole(tensor)
        if layer is None or not test(layer):
            return None
        chain.append(layer)
        tensor = _outputs(layer)[0]
    if divide["inputs"] != [centred, tensor] or graph.sole(tensor) is not divide:
        return None
    epsilon = scalars[chain[1]["name"]][1]
    members = [first, sub, square, *chain, divide]
    found: dict[str, np.ndarray] = {}
    tensor = _outputs(divide)[0]
    for op, key in (("mul", "scale"), ("add", "bias")):
        layer = graph.sole(tensor)
        if layer is None or layer["op"] != op or len(layer["inputs"]) != 1 \
                or layer.get("constant_shape") is None:
            continue
        value = _spanning(weights[layer["name"]]["constant"], shape, axes)
        if value is None:
            continue
        found[key] = value
        members.append(layer)
        tensor = _outputs(layer)[0]
    if "scale" not in found:
        found["scale"] = np.broadcast_to(np.ones((), np.float32), [shape[a] for a in axes])
    last = members[-1]
    norm = {"name": last["name"], "op": "layernorm", "inputs": [x],
            **({"outputs": last["outputs"]} if "outputs" in last else {}),
            "axes": list(axes), "epsilon": epsilon, "bias": "bias" in found}
    return {**norm, "_weights": found}, members


def fuse_layernorm(layers: list[Layer], weights: dict[str, dict[str, np.ndarray]],
                   outputs: set[str], scalars: Mapping[str, tuple[float, float]],
                   shapes: Mapping[str, tuple[int, ...]]) -> list[Layer]:
    """``layers`` with each layer norm written out (module docstring) replaced by one
    ``layernorm`` named as the pattern's last layer; ``shapes``: every tensor's shape."""
    graph = _Graph(layers, outputs)
    replaced: dict[str, Layer] = {}
    removed: set[str] = set()
    for layer in layers:
        if layer["op"] != "reducemean" or layer["name"] in removed:
            continue
        found = _layernorm_members(layer, graph, scalars, shapes, weights)
        if found is None or any(m["name"] in removed for m in found[1]):
            continue
        norm, members = found
        found_weights = norm.pop("_weights")
        for m in members:
            weights.pop(m["name"], None)
        weights[norm["name"]] = {k: np.ascontiguousarray(v, dtype=np.float32)
                                 for k, v in found_weights.items()}
        replaced[norm["name"]] = norm
        removed.update(m["name"] for m in members)
    return [replaced.get(layer["name"], layer) for layer in layers
            if layer["name"] not in removed or layer["name"] in replaced]


#: The layer a constant pad of H and W folds into, by the pad's value: a convolution's padding
#: is zeros; a max pool's (without ceil_mode, whose last window depends on what is input) is
#: never picked, as -inf.
_PAD_FOLDS = {0.0: "conv", -math.inf: "maxpool"}


def fuse_pad_into_conv(layers: list[Layer], outputs: set[str]) -> list[Layer]:
    """``layers`` with each constant Pad of H and W only, read by one convolution (zeros) or
    max pool (-inf) alone, folded into that layer's padding (the Pad's layer dropped)."""
    graph = _Graph(layers, outputs)
    replaced: dict[str, Layer] = {}
    removed: set[str] = set()
    for layer in layers:
        pads = layer.get("pads")
        if layer["op"] != "pad" or layer.get("mode", "constant") != "constant" \
                or pads is None or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) \
                or min(pads) < 0:
            continue
        target = _PAD_FOLDS.get(float(layer.get("value", 0.0)))
        reader = graph.sole(_outputs(layer)[0])
        if reader is None or reader["op"] != target or reader["name"] in replaced \
                or reader["inputs"][0] != _outputs(layer)[0] or reader.get("ceil_mode"):
            continue
        attrs = operators.make(target, **{k: v for k, v in reader.items()
                                          if k not in ("name", "op", "inputs", "outputs")}).attrs
        top, left, bottom, right = attrs["padding"]
        replaced[reader["name"]] = {**reader,
                                    "inputs": [layer["inputs"][0], *reader["inputs"][1:]],
                                    "padding": [top + pads[2], left + pads[3],
                                                bottom + pads[6], right + pads[7]]}
        removed.add(layer["name"])
    return [replaced.get(layer["name"], layer) for layer in layers
            if layer["name"] not in removed]
