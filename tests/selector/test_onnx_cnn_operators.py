"""The operators real CNNs need beyond convolution and pooling, imported from small ONNX graphs
built by hand (every form an exporter writes: attributes and inputs across opsets) and run
against onnxruntime, on shapes hypothesis draws; and the patterns exporters write for them (the
squeeze-and-excitation block in NHWC without layout copies)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from convplan.selector.inputs import random_inputs
from convplan.selector.lowering import lower
from convplan.selector.network import Network, NetworkError
from convplan.selector.onnx import load_onnx
from convplan.selector.runner import run_network
from tests.support.strategies import examples

Shape = tuple[int, ...]


def const(name: str, value: Any, dtype: Any = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def graph_model(nodes: list[onnx.NodeProto], inits: list[TensorProto], opset: int,
                shape: Shape, output: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    return model


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]
                        ) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def assert_runs_like_onnxruntime(model: onnx.ModelProto, seed: int = 0,
                                 algorithm: str | None = None, tolerance: float = 1e-5
                                 ) -> Network:
    """convplan's import and run of ``model`` gives onnxruntime's outputs (relative to the
    largest magnitude, at least 1), within the memory it predicts."""
    network = load_onnx(model.SerializeToString())
    feeds = random_inputs(network, seed=seed)
    report = run_network(network, feeds, algorithm=algorithm, threads=1)
    expected = onnxruntime_outputs(model, feeds)
    assert len(expected) == len(report.outputs)
    for got, want in zip(report.outputs.values(), expected, strict=True):
        assert got.shape == want.shape
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * scale)
    assert report.measured_peak_bytes <= report.predicted_peak_bytes
    return network


# -- reductions ---------------------------------------------------------------------------------
#: The opset from which each reduction takes its axes as an input (an attribute before).
AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceL2": 18}


@st.composite
def reduce_graphs(draw) -> onnx.ModelProto:
    op = draw(st.sampled_from(sorted(AXES_INPUT_SINCE)))
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple))
    r = len(shape)
    opset = draw(st.sampled_from([11, 13, 17, 18]))
    axes = draw(st.none() | st.lists(st.integers(-r, r - 1), min_size=1, max_size=r,
                                     unique_by=lambda a: a % r))
    attrs: dict[str, Any] = {}
    if draw(st.booleans()):
        attrs["keepdims"] = int(draw(st.booleans()))
    inputs, inits = ["x"], []
    if axes is not None and opset >= AXES_INPUT_SINCE[op]:
        inputs.append("axes")
        inits.append(const("axes", axes, np.int64))
    elif axes is not None:
        attrs["axes"] = axes
    return graph_model([helper.make_node(op, inputs, ["y"], **attrs)], inits, opset, shape)


@settings(max_examples=examples(40))
@given(model=reduce_graphs(), seed=st.integers(0, 2**16))
def test_reductions_match_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    assert_runs_like_onnxruntime(model, seed)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_empty_axes_reduce_everything_or_with_noop_nothing(op: str) -> None:
    for noop, ops in ((0, [op.lower()]), (1, ["identity"])):
        model = graph_model([helper.make_node(op, ["x", "axes"], ["y"],
                                              noop_with_empty_axes=noop)],
                            [const("axes", np.zeros(0), np.int64)], 18, (2, 3, 4))
        network = assert_runs_like_onnxruntime(model)
        assert [n.op for n in network.nodes] == ops


def test_reduce_l2_over_no_axes_is_refused() -> None:
    """ONNX's text says the output is the input, its arithmetic sqrt(x^2) = |x|: refused."""
    model = graph_model([helper.make_node("ReduceL2", ["x"], ["y"], noop_with_empty_axes=1)],
                        [], 18, (2, 3))
    with pytest.raises(NetworkError, match="ReduceL2 over no axes"):
        load_onnx(model.SerializeToString())


def test_reduce_axes_may_be_computed_from_constants() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),     # [2, 1]: folds to a constant
             helper.make_node("Gather", ["s", "one"], ["last"]),
             helper.make_node("ReduceMean", ["x", "last"], ["y"])]
    model = graph_model(nodes, [const("one", [1], np.int64)], 18, (2, 1))
    assert [n.op for n in assert_runs_like_onnxruntime(model).nodes] == ["reducemean"]


def squeeze_excitation(opset: int, channels: int = 8, side: int = 7) -> onnx.ModelProto:
    """Conv -> Relu -> SE (ReduceMean over H, W kept -> 1x1 Conv -> Relu -> 1x1 Conv ->
    HardSigmoid -> Mul) -> mean-pooling head (ReduceMean over H, W dropped) -> Gemm."""
    rng = np.random.default_rng(1)
    c, r = channels, channels // 4

    def weights(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]))

    inits = [const("w", weights(c, 3, 3, 3)), const("w1", weights(r, c, 1, 1)),
             const("b1", rng.standard_normal(r)), const("w2", weights(c, r, 1, 1)),
             const("b2", rng.standard_normal(c)), const("fc", weights(5, c)),
             const("hw", [2, 3], np.int64)]
    axes: dict[str, Any] = {} if opset >= 18 else {"axes": [2, 3]}
    axes_input = ["hw"] if opset >= 18 else []
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", *axes_input], ["squeezed"], keepdims=1,
                              **axes),
             helper.make_node("Conv", ["squeezed", "w1", "b1"], ["e1"]),
             helper.make_node("Relu", ["e1"], ["e2"]),
             helper.make_node("Conv", ["e2", "w2", "b2"], ["e3"]),
             helper.make_node("HardSigmoid", ["e3"], ["gate"], alpha=1 / 6),
             helper.make_node("Mul", ["r", "gate"], ["excited"]),
             helper.make_node("ReduceMean", ["excited", *axes_input], ["pooled"], keepdims=0,
                              **axes),
             helper.make_node("Gemm", ["pooled", "fc"], ["y"], transB=1)]
    if not axes_input:
        inits.pop()
    return graph_model(nodes, inits, opset, (2, 3, side, side))


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("algorithm", [None, "kn2row-aa-nhwc", "im2row"])
def test_a_squeeze_excitation_block_runs_in_nhwc_without_layout_copies(
        opset: int, algorithm: str | None) -> None:
    model = squeeze_excitation(opset)
    network = assert_runs_like_onnxruntime(model, algorithm=algorithm)
    program = lower(network, algorithm=algorithm).program
    reductions = [s for s in program.steps if s.kind == "op" and s.operator is not None
                  and s.operator.op == "reducemean"]
    assert len(reductions) == 2
    if algorithm is not None:       # NHWC convolutions: the block and the head stay NHWC
        assert {s.layout for s in reductions} == {"NHWC"}
        copies = [s for s in program.steps if s.kind == "transform"]
        assert [c.inputs for c in copies] == [["x"]]     # the network's input, nothing else


# -- activations --------------------------------------------------------------------------------
@st.composite
def activation_graphs(draw) -> onnx.ModelProto:
    """One activation node with attributes drawn (or ONNX's defaults), opset 20 for Gelu."""
    op = draw(st.sampled_from(["LeakyRelu", "Elu", "Selu", "Erf", "Gelu", "PRelu"]))
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple))
    factor = st.floats(-2.0, 2.0, width=32)
    attrs: dict[str, Any] = {}
    inputs, inits = ["x"], []
    if op in ("LeakyRelu", "Elu", "Selu") and draw(st.booleans()):
        attrs["alpha"] = draw(factor)
    if op == "Selu" and draw(st.booleans()):
        attrs["gamma"] = draw(factor)
    if op == "Gelu" and draw(st.booleans()):
        attrs["approximate"] = draw(st.sampled_from(["none", "tanh"]))
    if op == "PRelu":       # unidirectional broadcasting: a trailing part of x's shape
        rank = draw(st.integers(1, len(shape)))
        slope = [1 if draw(st.booleans()) else d for d in shape[-rank:]]
        inputs.append("slope")
        inits.append(const("slope", np.random.default_rng(rank).standard_normal(slope)))
    return graph_model([helper.make_node(op, inputs, ["y"], **attrs)], inits,
                       20 if op == "Gelu" else draw(st.sampled_from([13, 17])), shape)


@settings(max_examples=examples(40))
@given(model=activation_graphs(), seed=st.integers(0, 2**16))
def test_activations_match_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    assert_runs_like_onnxruntime(model, seed)


def test_a_per_channel_prelu_runs_in_nhwc() -> None:
    slope = np.linspace(-1, 1, 4).reshape(4, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c", "slope"], ["p"]),
             helper.make_node("Conv", ["p", "w2"], ["y"])]
    rng = np.random.default_rng(2)
    model = graph_model(nodes, [const("w", rng.standard_normal((4, 3, 3, 3))),
                                const("slope", slope),
                                const("w2", rng.standard_normal((2, 4, 1, 1)))], 17,
                        (1, 3, 6, 5))
    network = assert_runs_like_onnxruntime(model, algorithm="kn2row-aa-nhwc")
    step = next(s for s in lower(network, algorithm="kn2row-aa-nhwc").program.steps
                if s.name == "p")
    assert step.layout == "NHWC"


def gelu_nodes(variant: str, x: str, y: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """x * 0.5 * (1 + erf(x / sqrt 2)) as exporters write it (constants as initializers or
    Constant nodes, the factors in several orders), or a near miss."""
    inits = [const("sqrt2", math_sqrt2()), const("one", 1.0), const("half", 0.5),
             const("inv_sqrt2", 1 / math_sqrt2()), const("near", 0.7)]
    make = helper.make_node
    if variant == "torch":          # F.gelu's opset-17 export: ((x * (erf(x / s) + 1)) * 0.5)
        nodes = [make("Div", [x, "sqrt2"], ["g/div"]), make("Erf", ["g/div"], ["g/erf"]),
                 make("Add", ["g/erf", "one"], ["g/add"]), make("Mul", [x, "g/add"], ["g/mul"]),
                 make("Mul", ["g/mul", "half"], [y])]
    elif variant == "half-first":   # 0.5 * (1 + erf(x * (1 / s))) * x, Constant nodes
        nodes = [make("Constant", [], ["g/c"], value=const("c", 1 / math_sqrt2())),
                 make("Mul", [x, "g/c"], ["g/scaled"]), make("Erf", ["g/scaled"], ["g/erf"]),
                 make("Add", ["one", "g/erf"], ["g/add"]),
                 make("Mul", ["half", "g/add"], ["g/half"]), make("Mul", ["g/half", x], [y])]
    elif variant == "half-x":       # (0.5 * x) * (1 + erf(x / s))
        nodes = [make("Mul", [x, "half"], ["g/hx"]), make("Mul", [x, "inv_sqrt2"], ["g/s"]),
                 make("Erf", ["g/s"], ["g/erf"]), make("Add", ["g/erf", "one"], ["g/add"]),
                 make("Mul", ["g/hx", "g/add"], [y])]
    elif variant == "near-miss":    # erf(0.7 x): not GELU
        nodes = [make("Mul", [x, "near"], ["g/s"]), make("Erf", ["g/s"], ["g/erf"]),
                 make("Add", ["g/erf", "one"], ["g/add"]), make("Mul", [x, "g/add"], ["g/mul"]),
                 make("Mul", ["g/mul", "half"], [y])]
    else:
        raise ValueError(variant)
    return nodes, inits


def math_sqrt2() -> float:
    return float(np.sqrt(np.float32(2)))


@pytest.mark.parametrize("variant", ["torch", "half-first", "half-x", "near-miss"])
def test_the_erf_gelu_pattern_becomes_one_gelu(variant: str) -> None:
    """Between two convolutions, with and without weights (the same layers either way)."""
    rng = np.random.default_rng(3)
    nodes, inits = gelu_nodes(variant, "c", "g")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *nodes,
             helper.make_node("Conv", ["g", "w2"], ["y"])]
    inits += [const("w", rng.standard_normal((6, 3, 3, 3))),
              const("w2", rng.standard_normal((2, 6, 1, 1)))]
    model = graph_model(nodes, inits, 17, (1, 3, 5, 5))
    network = assert_runs_like_onnxruntime(model)
    ops = [n.op for n in network.nodes]
    if variant == "near-miss":
        assert "erf" in ops and "gelu" not in ops
    else:
        assert ops == ["conv", "gelu", "conv"]
        assert network.node("g").operator.attrs["approximate"] == "none"
    shapes_only = load_onnx(model.SerializeToString(), weights=False)
    assert [layer.op for layer in shapes_only.description.layers] == ops


def test_a_gelu_whose_inner_tensor_is_also_used_stays_as_written() -> None:
    nodes, inits = gelu_nodes("torch", "x", "y")
    nodes.append(helper.make_node("Relu", ["g/erf"], ["r"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "r")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    network = assert_runs_like_onnxruntime(model)
    assert "gelu" not in [n.op for n in network.nodes]
