"""Hypothesis strategies for networks that stress aliasing: tensors whose layout transform is
already contiguous (one channel, or H*W == 1 after global pooling: squeeze-excite gates), views
(reshape, flatten, identity) mixed with in-place element-wise steps, a tensor added to itself or
to a view of itself, fan-out to several consumers, splits and concats, and a random layout for
every layer that has a choice.

Shapes are tracked with the operators' own shape functions only to keep every drawn layer valid;
what a run computes is checked against onnxruntime, never against these shapes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from convplan.kernels import registry
from convplan.selector.network import Network
from tests.support.networks import LayerList

UNARY = ["relu", "sigmoid", "hardswish", "batchnorm", "clip"]


@st.composite
def aliasing_descriptions(draw, max_layers: int = 14) -> dict[str, Any]:
    """A random valid network of tiny tensors (1-2 channels, 1x1 to 5x5 maps, batch 1-2)."""
    n = draw(st.integers(1, 2))
    c0 = draw(st.sampled_from([1, 1, 2, 3]))
    h0 = draw(st.sampled_from([1, 1, 2, 3, 5]))
    w0 = draw(st.sampled_from([1, 2, 3, 5]))
    builder = LayerList({"x": (n, c0, h0, w0)})
    layers, shapes, add = builder.layers, builder.shapes, builder.add

    def four_d() -> list[str]:
        return [t for t, s in shapes.items() if len(s) == 4]

    def unary(t: str) -> str:
        op = draw(st.sampled_from(UNARY))
        return add(op, [t], **({"min": 0.0, "max": 0.5} if op == "clip" else {}))

    last = "x"
    for _ in range(draw(st.integers(2, max_layers))):
        # mostly build on the newest tensor, sometimes on any earlier one (fan-out)
        t = last if draw(st.integers(0, 2)) else draw(st.sampled_from(four_d()))
        _, c, h, w = shapes[t]
        kind = draw(st.sampled_from(["conv", "conv", "unary", "unary", "se", "self", "view",
                                     "identity", "concat", "split", "pool", "head"]))
        if kind == "conv":
            k = draw(st.sampled_from([1, 1, 3]))
            groups = c if draw(st.booleans()) and k == 3 else 1
            m = c if groups > 1 else draw(st.sampled_from([1, 1, 2, 4]))
            last = add("conv", [t], out_channels=m, kernel=k, padding=k // 2, groups=groups,
                       bias=draw(st.booleans()))
        elif kind == "unary":
            last = unary(t)
        elif kind == "se":          # x * sigmoid(conv1x1(gap(x))): H*W == 1 tensors
            g = add("globalavgpool", [t])
            g = add("conv", [g], out_channels=draw(st.sampled_from([1, 2])), kernel=1)
            g = add("relu", [g])
            g = add("conv", [g], out_channels=c, kernel=1)
            last = add("mul", [t, add("sigmoid", [g])])
        elif kind == "self":        # a tensor with itself
            last = add(draw(st.sampled_from(["add", "mul", "sub"])), [t, t])
        elif kind == "view":        # a tensor with a view of itself
            v = add("reshape", [t], shape=[n, c, h, w])
            last = add(draw(st.sampled_from(["add", "mul"])), draw(st.permutations([t, v])))
        elif kind == "identity":
            last = unary(add("identity", [t]))
        elif kind == "concat":
            same = [u for u in four_d() if shapes[u][0] == n and shapes[u][2:] == (h, w)]
            parts = draw(st.lists(st.sampled_from(same), min_size=1, max_size=3))
            last = add("concat", [t, *parts], axis=1)
        elif kind == "split" and c >= 2:
            first = draw(st.integers(1, c - 1))
            name = f"split{len(layers)}"
            layers.append({"name": name, "op": "split", "inputs": [t], "axis": 1,
                           "sizes": [first, c - first], "outputs": [f"{name}a", f"{name}b"]})
            shapes[f"{name}a"] = (n, first, h, w)
            shapes[f"{name}b"] = (n, c - first, h, w)
            last = unary(draw(st.sampled_from([f"{name}a", f"{name}b"])))
        elif kind == "pool":
            op = draw(st.sampled_from(["maxpool", "avgpool", "globalavgpool"]))
            last = add(op, [t]) if op == "globalavgpool" else \
                add(op, [t], kernel=3, stride=1, padding=1)
        else:                       # flatten -> gemm -> back to (n, k, 1, 1)
            f = add("flatten", [t])
            k = draw(st.sampled_from([1, 2, 3]))
            g = add("gemm", [f], out_features=k)
            last = unary(add("reshape", [g], shape=[n, k, 1, 1]))
    outputs = [last]
    extra = draw(st.sampled_from([t for t in shapes if t not in ("x", last)] or [last]))
    if extra != last and draw(st.booleans()):
        outputs.append(extra)
    return {"name": "aliasing", "seed": draw(st.integers(0, 2**31)),
            "inputs": [{"name": "x", "shape": [n, c0, h0, w0]}], "layers": layers,
            "outputs": outputs}


@st.composite
def random_plans(draw, network: Network) -> tuple[dict[str, str], dict[str, str]]:
    """Any algorithm that can run each convolution, any layout each other layer supports."""
    assignment = {node.name: draw(st.sampled_from(
        [a.name for a in registry.applicable(network.conv_spec(node))]))
        for node in network.conv_nodes}
    layouts = {node.name: draw(st.sampled_from(list(node.operator.layouts)))
               for node in network.nodes if node.op != "conv"}
    return assignment, layouts
