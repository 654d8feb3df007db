"""Hypothesis strategies for random networks: residual blocks, inception-style concats,
depthwise and grouped convolutions, strides, dilation, pooling, and a classifier head.

Shapes are tracked with the operators' own shape functions only to keep every drawn layer
valid; the outputs are checked against an independent reference, never against these shapes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from convplan.kernels import operators


class LayerList:
    """A description's layers, appended one at a time: each named after its op and position,
    its output shape inferred by its own operator (so every drawn layer is valid)."""

    def __init__(self, inputs: dict[str, tuple[int, ...]]) -> None:
        self.layers: list[dict[str, Any]] = []
        self.shapes: dict[str, tuple[int, ...]] = dict(inputs)

    def add(self, op: str, inputs: list[str], **attrs: Any) -> str:
        name = f"{op}{len(self.layers)}"
        out = operators.make(op, **attrs).output_shapes([self.shapes[t] for t in inputs])[0]
        self.layers.append({"name": name, "op": op, "inputs": inputs, **attrs})
        self.shapes[name] = tuple(out)
        return name


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def network_descriptions(draw, max_blocks: int = 6, max_side: int = 20) -> dict[str, Any]:
    """A random, valid network description (batch 1 or 2, a few channels, small images)."""
    n = draw(st.integers(1, 2))
    c0 = draw(st.integers(1, 6))
    h0, w0 = draw(st.integers(8, max_side)), draw(st.integers(8, max_side))
    builder = LayerList({"x": (n, c0, h0, w0)})
    layers, shapes, add = builder.layers, builder.shapes, builder.add

    x = "x"
    for _ in range(draw(st.integers(1, max_blocks))):
        _, c, h, w = shapes[x]
        kind = draw(st.sampled_from(["conv", "conv", "residual", "inception", "depthwise",
                                     "grouped", "pool", "gate"]))
        if kind == "conv":
            k = draw(st.sampled_from([1, 2, 3, 3, 5, 7]))
            dilation = draw(st.sampled_from([1, 1, 2])) if k > 1 else 1
            pad = draw(st.integers(0, (k - 1) * dilation // 2 + 1))
            if min(h, w) + 2 * pad < dilation * (k - 1) + 1:
                k, pad, dilation = 1, 0, 1
            x = add("conv", [x], out_channels=draw(st.integers(1, 12)), kernel=k,
                    stride=draw(st.sampled_from([1, 1, 2])), padding=pad, dilation=dilation,
                    bias=draw(st.booleans()))
            x = add(draw(st.sampled_from(["relu", "relu", "sigmoid", "batchnorm"])), [x])
        elif kind == "residual":
            y = add("conv", [x], out_channels=c, kernel=3, padding=1)
            y = add("batchnorm", [y])
            y = add("relu", [y])
            y = add("conv", [y], out_channels=c, kernel=3, padding=1)
            x = add("relu", [add("add", [x, y])])
        elif kind == "inception":
            a = add("conv", [x], out_channels=draw(st.integers(1, 8)), kernel=1)
            b = add("conv", [x], out_channels=draw(st.integers(1, 8)), kernel=3, padding=1)
            p = add("maxpool", [x], kernel=3, stride=1, padding=1)
            p = add("conv", [p], out_channels=draw(st.integers(1, 8)), kernel=1)
            x = add("concat", [a, b, p], axis=1)
        elif kind == "depthwise":
            x = add("conv", [x], out_channels=c, kernel=3, padding=1, groups=c,
                    stride=draw(st.sampled_from([1, 2])))
            x = add("clip", [x], min=0.0, max=6.0)
        elif kind == "grouped":
            g = draw(st.sampled_from(_divisors(c)))
            x = add("conv", [x], out_channels=g * draw(st.integers(1, 3)), kernel=3, padding=1,
                    groups=g)
        elif kind == "pool" and min(h, w) >= 4:
            x = add(draw(st.sampled_from(["maxpool", "avgpool"])), [x], kernel=2, stride=2,
                    ceil_mode=draw(st.booleans()))
        else:
            x = add("mul", [x, add("sigmoid", [x])])
    if draw(st.booleans()):
        x = add("flatten", [add("globalavgpool", [x])])
        x = add("gemm", [x], out_features=draw(st.integers(2, 10)), trans_b=draw(st.booleans()))
        x = add("softmax", [x], axis=1)
    return {"name": "random", "seed": draw(st.integers(0, 2**31)),
            "inputs": [{"name": "x", "shape": [n, c0, h0, w0]}], "layers": layers}


# -- small hand-written networks --------------------------------------------------------------
#: The input of `small_network`: four channels of 32 x 32.
SMALL_INPUT = [1, 4, 32, 32]


def small_network(*layers: dict, outputs: list[str] | None = None):
    """A network of ``layers`` on one ``x`` of shape `SMALL_INPUT` (seeded weights)."""
    from convplan.selector.network import Network

    return Network.from_description({"inputs": [{"name": "x", "shape": SMALL_INPUT}],
                                     "layers": list(layers), "outputs": outputs})


def conv(name: str, source: str, **attrs: Any) -> dict:
    """A 3x3, padding-1 convolution layer to four channels, reading ``source``."""
    return {"name": name, "op": "conv", "inputs": [source], "out_channels": 4, "kernel": 3,
            "padding": 1, **attrs}
