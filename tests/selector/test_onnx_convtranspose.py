"""ConvTranspose from ONNX: single nodes in every padding form ONNX has (pads, auto_pad
NOTSET / SAME_UPPER / SAME_LOWER / VALID, output_shape) against onnxruntime on shapes hypothesis
draws; a small decoder planned and run under its plan, matching onnxruntime within the memory
it predicts; and hostile attributes refused by name before anything is allocated."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import convplan
from convplan.kernels import operators
from convplan.selector.inputs import random_inputs
from convplan.selector.network import NetworkError
from convplan.selector.onnx import load_onnx
from tests.selector.test_onnx_cnn_operators import (
    assert_runs_like_onnxruntime,
    const,
    graph_model,
    onnxruntime_outputs,
)
from tests.support.strategies import examples

Shape = tuple[int, ...]


def convtranspose_model(shape: Shape, out_per_group: int, kernel: tuple[int, int],
                        groups: int = 1, bias: bool = True, seed: int = 0,
                        **attrs: Any) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [const("w", rng.standard_normal((shape[1], out_per_group, *kernel)))]
    inputs = ["x", "w"]
    if bias:
        inits.append(const("b", rng.standard_normal(out_per_group * groups)))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], group=groups, **attrs)
    return graph_model([node], inits, 17, shape)


@st.composite
def convtranspose_graphs(draw) -> onnx.ModelProto:
    groups = draw(st.integers(1, 2))
    shape = (draw(st.integers(1, 2)), groups * draw(st.integers(1, 3)),
             draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    attrs: dict[str, Any] = {"strides": strides,
                             "dilations": [draw(st.integers(1, 2)), draw(st.integers(1, 2))]}
    if draw(st.booleans()):
        attrs["output_padding"] = [draw(st.integers(0, s - 1)) for s in strides]
    form = draw(st.sampled_from(["pads", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID",
                                 "output_shape"]))
    if form == "pads":
        attrs["pads"] = [draw(st.integers(0, 3)) for _ in range(4)]
    elif form == "output_shape":
        # at most the natural size (no negative padding): the two fit together
        natural = [s * (d - 1) + attrs.get("output_padding", [0, 0])[i]
                   + attrs["dilations"][i] * (kernel[i] - 1) + 1
                   for i, (s, d) in enumerate(zip(strides, shape[2:], strict=True))]
        attrs["output_shape"] = [draw(st.integers(1, n)) for n in natural]
    else:
        attrs["auto_pad"] = form
    return convtranspose_model(shape, draw(st.integers(1, 3)), kernel, groups,
                               draw(st.booleans()), draw(st.integers(0, 99)), **attrs)


@settings(max_examples=examples(40), deadline=None)
@given(model=convtranspose_graphs(), seed=st.integers(0, 99))
def test_convtranspose_matches_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    try:
        load_onnx(model.SerializeToString())
    except NetworkError as error:
        # SAME_* on a stride wider than the kernel reaches asks for negative padding; pads
        # larger than the output leave none: both refused, as tested below
        assume("negative padding" not in str(error) and "leaves no output" not in str(error))
        raise
    assert_runs_like_onnxruntime(model, seed)


def test_same_padding_puts_the_odd_row_where_onnx_says() -> None:
    """A stride-2, 3-wide kernel under SAME_UPPER / SAME_LOWER: total padding 1 per axis, at
    the end (UPPER) or the start (LOWER); output = input * stride."""
    for auto, pads in (("SAME_UPPER", (0, 0, 1, 1)), ("SAME_LOWER", (1, 1, 0, 0))):
        model = convtranspose_model((1, 2, 5, 5), 3, (3, 3), strides=[2, 2], auto_pad=auto)
        network = assert_runs_like_onnxruntime(model)
        (node,) = network.nodes
        assert node.operator.attrs["padding"] == pads
        assert network.shapes[node.outputs[0]] == (1, 3, 10, 10)


def decoder() -> onnx.ModelProto:
    """Conv down by 2, then two ConvTransposes up: a stride-2 4x4 one with padding (PyTorch's
    usual upsampler) and a grouped, dilated one with output_padding; batch 2."""
    rng = np.random.default_rng(1)

    def w(name: str, *shape: int) -> TensorProto:
        return const(name, rng.standard_normal(shape) * 0.3)

    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], strides=[2, 2], pads=[1] * 4),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("ConvTranspose", ["r0", "w1", "b1"], ["t1"], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "w2"], ["y"], strides=[3, 2],
                         dilations=[1, 2], output_padding=[2, 1], group=2, pads=[0, 1, 2, 0]),
    ]
    inits = [w("w0", 8, 3, 3, 3), w("b0", 8), w("w1", 8, 6, 4, 4), w("b1", 6),
             w("w2", 6, 2, 3, 3)]
    return graph_model(nodes, inits, 17, (2, 3, 16, 16))


def test_a_decoder_is_planned_and_runs_like_onnxruntime() -> None:
    model = decoder()
    network = load_onnx(model.SerializeToString())
    ops = [n.op for n in network.nodes]
    assert ops.count("convtranspose") == 2
    plan = convplan.plan(network, measure=False, threads=1)
    feeds = random_inputs(network, seed=3)
    report = convplan.run(network, plan, feeds, threads=1)
    (expected,) = onnxruntime_outputs(model, feeds)
    (got,) = report.outputs.values()
    assert got.shape == expected.shape == (2, 4, 48, 35)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert report.measured_peak_bytes <= report.predicted_peak_bytes
    steps = {layer.name: layer for layer in report.layers}
    for node in network.nodes:
        if node.op == "convtranspose":     # the step's workspace is the one it declares
            shapes = [network.shapes[t] for t in node.inputs]
            assert steps[node.name].workspace_bytes == node.operator.workspace_bytes(shapes, 4)


def test_the_two_algorithms_trade_memory() -> None:
    """Many input channels to few outputs: col2im's columns ((M/g) k² H W) are small, the
    zero-inserted input (C (sH) (sW)) large; the other way round, zero-insert is smaller.
    col2im is the default."""
    def declared(c: int, m: int, **algorithm: str) -> int:
        op = operators.make("convtranspose", out_channels=m, kernel=4, stride=2, padding=1,
                            **algorithm)
        return op.workspace_bytes([(1, c, 16, 16)], 4)

    for c, m, smaller in ((64, 4, "col2im"), (4, 64, "zero-insert")):
        other = "zero-insert" if smaller == "col2im" else "col2im"
        assert declared(c, m, algorithm=smaller) < declared(c, m, algorithm=other)
        assert declared(c, m) == declared(c, m, algorithm="col2im")


def test_the_decoder_runs_alike_under_either_algorithm() -> None:
    """The description's algorithm attribute reaches the run: both give onnxruntime's answer
    within their own declared memory."""
    network = load_onnx(decoder().SerializeToString())
    feeds = random_inputs(network, seed=5)
    outputs = []
    for algorithm in ("col2im", "zero-insert"):
        for node in network.nodes:
            if node.op == "convtranspose":
                node.operator.attrs["algorithm"] = algorithm
        report = convplan.run(network, None, feeds, threads=1)
        assert report.measured_peak_bytes <= report.predicted_peak_bytes
        outputs.append(next(iter(report.outputs.values())))
    (expected,) = onnxruntime_outputs(decoder(), feeds)
    for got in outputs:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(("attrs", "words"), [
    ({"strides": [0, 2]}, "strides"),
    ({"strides": [2, -1]}, "strides"),
    ({"strides": [2, 2], "output_padding": [2, 0]}, "output_padding"),
    ({"strides": [1, 1], "output_padding": [0, 1]}, "output_padding"),
    ({"output_padding": [-1, 0]}, "output_padding"),
    ({"pads": [1, 1, 1, 1], "output_shape": [6, 6]}, "both given"),
    ({"output_shape": [4, 4, 4]}, "output_shape"),
    ({"strides": [2, 2], "output_shape": [40, 40]}, "negative padding"),
    ({"pads": [9, 0, 9, 0]}, "no output"),
    ({"auto_pad": "SAME"}, "auto_pad"),
    ({"kernel_shape": [2, 2]}, "kernel_shape"),
])
def test_hostile_attributes_are_refused_by_name(attrs: dict[str, Any], words: str) -> None:
    model = convtranspose_model((1, 2, 5, 5), 3, (3, 3), **attrs)
    with pytest.raises(NetworkError, match=words):
        load_onnx(model.SerializeToString())


def test_a_huge_output_is_refused_before_anything_is_allocated() -> None:
    """A stride of 2**20 on a 4x4 input asks for a ~2**42-element output: refused by the
    import's tensor limit from the shapes alone."""
    model = convtranspose_model((1, 2, 4, 4), 3, (1, 1), strides=[2**20, 2**20])
    with pytest.raises(NetworkError, match="one tensor may have at most"):
        load_onnx(model.SerializeToString())


@pytest.mark.parametrize(("attrs", "words"), [
    ({"stride": 0}, "stride"), ({"stride": -2}, "stride"),
    ({"stride": 2, "output_padding": 2}, "output_padding"),
    ({"output_padding": (0, -1), "stride": 2}, "output_padding"),
    ({"groups": 0}, "groups"), ({"groups": 2, "out_channels": 3}, "divisible"),
    ({"algorithm": "fft"}, "algorithm"), ({"kernel": 0}, "kernel"),
    ({"bias": 1}, "bias"),
])
def test_the_operator_refuses_bad_attributes(attrs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        operators.make("convtranspose", **{"out_channels": 4, "kernel": 3, **attrs})
