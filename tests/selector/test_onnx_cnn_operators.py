"""The operators real CNNs need beyond convolution and pooling, imported from small ONNX graphs
built by hand (every form an exporter writes: attributes and inputs across opsets) and run
against onnxruntime, on shapes hypothesis draws; and the patterns exporters write for them (the
squeeze-and-excitation block in NHWC without layout copies, GELU and layer norm written out,
ConvNeXt's channels-last stretches without their transposes, TF-style same padding computed
from the shapes)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
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


# -- normalisations -----------------------------------------------------------------------------
@st.composite
def layernorm_graphs(draw) -> onnx.ModelProto:
    """LayerNormalization (opset 17) over the axes from a drawn axis, batch 1-3, epsilon
    drawn, with and without bias, the scale and bias of the normalised shape or broadcasting
    to it."""
    shape = (draw(st.integers(1, 3)),
             *draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    r = len(shape)
    axis = draw(st.integers(-r, r - 1))
    normalized = shape[axis:]
    rng = np.random.default_rng(len(normalized))

    def weight(name: str) -> TensorProto:
        dims = [1 if draw(st.booleans()) else d for d in normalized]
        return const(name, rng.standard_normal(dims[draw(st.integers(0, len(dims) - 1)):]))

    inits = [weight("scale")]
    inputs = ["x", "scale"]
    if draw(st.booleans()):
        inits.append(weight("bias"))
        inputs.append("bias")
    attrs: dict[str, Any] = {"axis": axis}
    if draw(st.booleans()):
        attrs["epsilon"] = draw(st.sampled_from([1e-6, 1e-3, 0.5]))
    return graph_model([helper.make_node("LayerNormalization", inputs, ["y"], **attrs)], inits,
                       17, shape)


@settings(max_examples=examples(40))
@given(model=layernorm_graphs(), seed=st.integers(0, 2**16))
def test_layer_normalization_matches_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    assert_runs_like_onnxruntime(model, seed)


@st.composite
def instancenorm_graphs(draw) -> onnx.ModelProto:
    """At least two elements per image and channel: with one, the variance is 0 and
    onnxruntime's x * s + (b - mean * s), s = scale / sqrt(epsilon), loses 1e-5 to
    cancellation (convplan's x - mean is exact; the kernel tests check it in float64)."""
    spatial = st.lists(st.integers(1, 9), min_size=1, max_size=2).filter(
        lambda dims: math.prod(dims) > 1)
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), *draw(spatial))
    rng = np.random.default_rng(shape[1])
    inits = [const("scale", rng.standard_normal(shape[1])),
             const("bias", rng.standard_normal(shape[1]))]
    attrs = {"epsilon": draw(st.sampled_from([1e-5, 0.25]))} if draw(st.booleans()) else {}
    return graph_model([helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"],
                                         **attrs)], inits, draw(st.sampled_from([11, 17])),
                       shape)


@settings(max_examples=examples(25))
@given(model=instancenorm_graphs(), seed=st.integers(0, 2**16))
def test_instance_normalization_matches_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    assert_runs_like_onnxruntime(model, seed)


def test_layer_normalization_with_training_outputs_is_refused() -> None:
    model = graph_model([helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean"])],
                        [const("scale", np.ones(3))], 17, (2, 3))
    with pytest.raises(NetworkError, match="Mean and InvStdDev"):
        load_onnx(model.SerializeToString())


def written_out_layernorm(x: str, y: str, axes: list[int], opset: int, *, affine: bool = True,
                          near_miss: bool = False, width: int = 6
                          ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """PyTorch's F.layer_norm before opset 17 (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt,
    Div, Mul, Add); ``near_miss``: the second mean over other axes (not a layer norm)."""
    rng = np.random.default_rng(4)
    make = helper.make_node
    second = [1] if near_miss else axes
    mean = ({"axes": axes}, []) if opset < 18 else ({}, ["ln/axes"])
    mean2 = ({"axes": second}, []) if opset < 18 else ({}, ["ln/axes2"])
    nodes = [make("ReduceMean", [x, *mean[1]], ["ln/mean"], **mean[0]),
             make("Sub", [x, "ln/mean"], ["ln/centred"]),
             make("Pow", ["ln/centred", "ln/two"], ["ln/square"]),
             make("ReduceMean", ["ln/square", *mean2[1]], ["ln/var"], **mean2[0]),
             make("Add", ["ln/var", "ln/eps"], ["ln/var_eps"]),
             make("Sqrt", ["ln/var_eps"], ["ln/std"]),
             make("Div", ["ln/centred", "ln/std"], ["ln/normed" if affine else y])]
    inits = [const("ln/two", 2.0), const("ln/eps", 1e-5), const("ln/axes", axes, np.int64),
             const("ln/axes2", second, np.int64)]
    if affine:
        nodes += [make("Mul", ["ln/normed", "ln/scale"], ["ln/scaled"]),
                  make("Add", ["ln/scaled", "ln/bias"], [y])]
        inits += [const("ln/scale", rng.standard_normal(width)),
                  const("ln/bias", rng.standard_normal(width))]
    return nodes, inits


@pytest.mark.parametrize(("opset", "affine", "near_miss"),
                         [(13, True, False), (18, True, False), (13, False, False),
                          (13, True, True)])
def test_a_layer_norm_written_out_becomes_one_layernorm(opset: int, affine: bool,
                                                        near_miss: bool) -> None:
    """Over the last axis of a rank-3 activation between two MatMuls, batch 2; a near miss
    stays as written (and runs: Pow and Sqrt)."""
    rng = np.random.default_rng(5)
    nodes, inits = written_out_layernorm("a", "n", [-1], opset, affine=affine,
                                         near_miss=near_miss)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), *nodes,
             helper.make_node("MatMul", ["n", "w2"], ["y"])]
    inits += [const("w", rng.standard_normal((4, 6))), const("w2", rng.standard_normal((6, 3)))]
    model = graph_model(nodes, inits, opset, (2, 5, 4))
    network = assert_runs_like_onnxruntime(model)
    ops = [n.op for n in network.nodes]
    if near_miss:
        assert "layernorm" not in ops and {"pow", "sqrt"} <= set(ops)
    else:
        assert ops == ["matmul", "layernorm", "matmul"]
        assert network.node("n").operator.attrs["bias"] == affine
    shapes_only = load_onnx(model.SerializeToString(), weights=False)
    assert [layer.op for layer in shapes_only.description.layers] == ops


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5])
def test_pow_and_sqrt_match_onnxruntime(exponent: float) -> None:
    nodes = [helper.make_node("Pow", ["x", "e"], ["p"]), helper.make_node("Sqrt", ["p"], ["y"])]
    model = graph_model(nodes, [const("e", exponent)], 13, (3, 2, 5))
    assert [n.op for n in assert_runs_like_onnxruntime(model).nodes] == ["pow", "sqrt"]


# -- ConvNeXt's channels-last stretches ----------------------------------------------------------
def convnext_block(channels: int = 8) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """timm's ConvNeXt, opset 17: the stem's LayerNorm2d (Transpose, LayerNormalization over
    the last axis, Transpose back), then a block: depthwise conv, Transpose, LayerNorm, Linear
    (MatMul + Add), GELU written with Erf, Linear, Transpose back, the layer scale, the
    residual."""
    rng = np.random.default_rng(6)
    c = channels
    make = helper.make_node

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)

    nodes = [make("Conv", ["x", "stem_w", "stem_b"], ["s"], strides=[2, 2], kernel_shape=[2, 2]),
             make("Transpose", ["s"], ["s_t"], perm=[0, 2, 3, 1]),
             make("LayerNormalization", ["s_t", "ln0_s", "ln0_b"], ["s_n"], axis=-1,
                  epsilon=1e-6),
             make("Transpose", ["s_n"], ["s0"], perm=[0, 3, 1, 2]),
             make("Conv", ["s0", "dw_w", "dw_b"], ["d"], group=c, pads=[3, 3, 3, 3]),
             make("Transpose", ["d"], ["d_t"], perm=[0, 2, 3, 1]),
             make("LayerNormalization", ["d_t", "ln1_s", "ln1_b"], ["d_n"], axis=-1,
                  epsilon=1e-6)]
    inits = [const("stem_w", w(c, 3, 2, 2)), const("stem_b", rng.standard_normal(c)),
             const("ln0_s", rng.standard_normal(c)), const("ln0_b", rng.standard_normal(c)),
             const("dw_w", w(c, 1, 7, 7)), const("dw_b", rng.standard_normal(c)),
             const("ln1_s", rng.standard_normal(c)), const("ln1_b", rng.standard_normal(c)),
             const("fc1", w(c, 4 * c)), const("fc1_b", rng.standard_normal(4 * c)),
             const("fc2", w(4 * c, c)), const("fc2_b", rng.standard_normal(c)),
             const("gamma", rng.standard_normal((c, 1, 1)))]
    gelu, gelu_inits = gelu_nodes("torch", "h1", "h2")
    nodes += [make("MatMul", ["d_n", "fc1"], ["h0"]), make("Add", ["h0", "fc1_b"], ["h1"]),
              *gelu, make("MatMul", ["h2", "fc2"], ["h3"]), make("Add", ["h3", "fc2_b"], ["h4"]),
              make("Transpose", ["h4"], ["b"], perm=[0, 3, 1, 2]),
              make("Mul", ["b", "gamma"], ["b_s"]), make("Add", ["b_s", "s0"], ["y"])]
    return nodes, inits + gelu_inits


def convnext_model(leak: bool = False, batch: int = 2) -> onnx.ModelProto:
    """The block of `convnext_block`; ``leak``: its normalised NHWC tensor is also an output,
    so its transposes must stay."""
    nodes, inits = convnext_block()
    outputs = ["y", "d_n"] if leak else ["y"]
    graph = helper.make_graph(
        nodes, "convnext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 12, 12])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("algorithm", [None, "im2row"])
def test_convnext_runs_without_its_transposes(algorithm: str | None) -> None:
    """The layer norms run over the channels, the Linear layers as 1x1 convolutions whose
    biases and the layer scale fold in; in NHWC nothing but the network's input and output
    is copied."""
    model = convnext_model()
    network = assert_runs_like_onnxruntime(model, algorithm=algorithm)
    assert [n.op for n in network.nodes] == ["conv", "layernorm", "conv", "layernorm", "conv",
                                            "gelu", "conv", "add"]
    assert {tuple(n.operator.attrs["axes"]) for n in network.nodes if n.op == "layernorm"} \
        == {(1,)}
    assert [n.op for n in load_onnx(model.SerializeToString(), weights=False).nodes] \
        == [n.op for n in network.nodes]
    if algorithm is not None:
        program = lower(network, algorithm=algorithm).program
        assert {s.layout for s in program.steps if s.kind == "op" and s.operator is not None
                and s.operator.op == "layernorm"} == {"NHWC"}
        assert [s.inputs for s in program.steps if s.kind == "transform"] == [["x"], ["y"]]


def test_a_channels_last_tensor_used_elsewhere_keeps_its_transposes() -> None:
    network = assert_runs_like_onnxruntime(convnext_model(leak=True))
    ops = [n.op for n in network.nodes]
    assert ops.count("transpose") == 2 and ops.count("matmul") == 2   # the block stays NHWC


# -- padding ------------------------------------------------------------------------------------
@st.composite
def pad_graphs(draw) -> onnx.ModelProto:
    """Pad in each mode: pads and value as attributes (opset 2) or inputs (11, 13), and from
    opset 18 for some axes only; reflect's pads smaller than the side they mirror; negative
    (cropping) in constant mode."""
    shape = (draw(st.integers(1, 3)),
             *draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    r = len(shape)
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    opset = draw(st.sampled_from([2, 11, 13, 18]))
    axes = list(range(r))
    if opset >= 18 and draw(st.booleans()):
        axes = draw(st.lists(st.integers(-r, r - 1), min_size=1, max_size=r,
                             unique_by=lambda a: a % r))

    def amount(axis: int) -> int:
        """Up to 3, or less than the side for reflect; in constant mode a crop of at most
        half the side (rounded down, so one element is left)."""
        low = -((shape[axis] - 1) // 2) if mode == "constant" else 0
        return draw(st.integers(low, shape[axis] - 1 if mode == "reflect" else 3))

    pads = [amount(a) for a in axes] + [amount(a) for a in axes]
    value = draw(st.floats(-2, 2, width=32))
    attrs: dict[str, Any] = {} if mode == "constant" and draw(st.booleans()) else {"mode": mode}
    inputs, inits = ["x"], []
    if opset < 11:
        attrs.update(pads=pads, value=value)
    else:
        inputs.append("pads")
        inits.append(const("pads", pads, np.int64))
        if draw(st.booleans()):
            inputs.append("value")
            inits.append(const("value", value))
        if axes != list(range(r)):
            inputs += [""] * (3 - len(inputs)) + ["axes"]
            inits.append(const("axes", axes, np.int64))
    return graph_model([helper.make_node("Pad", inputs, ["y"], **attrs)], inits, opset, shape)


@settings(max_examples=examples(40))
@given(model=pad_graphs(), seed=st.integers(0, 2**16))
def test_pad_matches_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    assert_runs_like_onnxruntime(model, seed)


@pytest.mark.parametrize(("mode", "pads", "message"), [
    ("wrap", [0, 0, 1, 1, 0, 0, 1, 1], "mode 'wrap' is not supported"),
    ("edge", [0, 0, -1, 0, 0, 0, 0, 0], "negative pads .* only supported in constant mode"),
    ("constant", [0, 0, -2, 0, 0, 0, -1, 0], "crop all of an axis"),
    ("reflect", [0, 0, 3, 0, 0, 0, 0, 0], "must be smaller than its size 3"),
    ("constant", [0, 1, 0, 1], "4 pads do not fit 4 axes"),
])
def test_pads_convplan_cannot_honour_are_refused(mode: str, pads: list[int],
                                                 message: str) -> None:
    model = graph_model([helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)],
                        [const("pads", pads, np.int64)], 19, (1, 2, 3, 3))
    with pytest.raises(NetworkError, match=message):
        load_onnx(model.SerializeToString())


def tf_same_padding(x: str, y: str, kernel: int, stride: int) -> list[onnx.NodeProto]:
    """timm's pad_same as PyTorch's TorchScript exporter writes it (opset 17): the pads
    computed from x's shape (Shape, Gather, Cast, Div, Ceil, Sub, Mul, Add, Clip at 0, the
    halves), packed with Unsqueeze and Concat, extended to every axis with ConstantOfShape,
    reordered to ONNX's layout (Reshape to pairs, Slice reversed, Transpose, Reshape), then
    Pad."""
    make, n = helper.make_node, f"{y}/"
    c = {name: helper.make_tensor(n + name, TensorProto.FLOAT if isinstance(v, float)
                                  else TensorProto.INT64, [] if np.ndim(v) == 0 else [len(v)],
                                  np.atleast_1d(v).tolist())
         for name, v in {"stride": float(stride), "one": 1.0, "window": float(kernel),
                         "zero": 0.0, "two": 2.0, "zero_i": [0], "eight": np.int64(8),
                         "pairs": [-1, 2], "start": [-1], "end": [-(2**63) + 1],
                         "flat": [-1], "two_i": np.int64(2), "three_i": np.int64(3)}.items()}
    nodes = [make("Constant", [], [n + k], value=v) for k, v in c.items()]
    nodes.append(make("Shape", [x], [n + "shape"]))
    halves = {}
    for axis, index in (("h", "two_i"), ("w", "three_i")):
        p = n + axis
        nodes += [make("Gather", [n + "shape", n + index], [p + "size_i"], axis=0),
                  make("Cast", [p + "size_i"], [p + "size"], to=TensorProto.FLOAT),
                  make("Div", [p + "size", n + "stride"], [p + "ratio"]),
                  make("Ceil", [p + "ratio"], [p + "ceil"]),
                  make("Sub", [p + "ceil", n + "one"], [p + "less"]),
                  make("Mul", [p + "less", n + "stride"], [p + "steps"]),
                  make("Add", [p + "steps", n + "window"], [p + "reach"]),
                  make("Sub", [p + "reach", p + "size"], [p + "total"]),
                  make("Clip", [p + "total", n + "zero", ""], [p + "pad"]),
                  make("Div", [p + "pad", n + "two"], [p + "half_f"]),
                  make("Cast", [p + "half_f"], [p + "half_i"], to=TensorProto.INT64),
                  make("Cast", [p + "half_i"], [p + "half"], to=TensorProto.FLOAT),
                  make("Sub", [p + "pad", p + "half"], [p + "rest"])]
        halves[axis] = (p + "half", p + "rest")
    order = [*halves["w"], *halves["h"]]      # F.pad's (left, right, top, bottom)
    nodes += [make("Unsqueeze", [t, n + "zero_i"], [t + "/1d"]) for t in order]
    nodes += [make("Concat", [t + "/1d" for t in order], [n + "list"], axis=0),
              make("Shape", [n + "list"], [n + "list_shape"]),
              make("Gather", [n + "list_shape", n + "zero_i"], [n + "count"], axis=0),
              make("Sub", [n + "eight", n + "count"], [n + "missing"]),
              make("Cast", [n + "list"], [n + "list_i"], to=TensorProto.INT64),
              make("ConstantOfShape", [n + "missing"], [n + "zeros"],
                   value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
              make("Concat", [n + "list_i", n + "zeros"], [n + "all"], axis=0),
              make("Reshape", [n + "all", n + "pairs"], [n + "paired"]),
              make("Slice", [n + "paired", n + "start", n + "end", n + "zero_i", n + "start"],
                   [n + "reversed"]),
              make("Transpose", [n + "reversed"], [n + "columns"], perm=[1, 0]),
              make("Reshape", [n + "columns", n + "flat"], [n + "pads"]),
              make("Cast", [n + "pads"], [n + "pads_i"], to=TensorProto.INT64),
              make("Pad", [x, n + "pads_i", n + "zero"], [y], mode="constant")]
    return nodes


@pytest.mark.parametrize(("side", "kernel", "stride"), [(9, 3, 2), (8, 3, 2), (7, 5, 1),
                                                        (6, 1, 2)])
def test_tf_same_padding_folds_into_the_convolution(side: int, kernel: int, stride: int) -> None:
    """The pads fold from the shapes to constants, the Pad becomes the convolution's own
    padding, and the result is onnxruntime's, at batch 3; the same file with H and W symbolic
    folds again for the shape given."""
    rng = np.random.default_rng(7)
    nodes = [*tf_same_padding("x", "p", kernel, stride),
             helper.make_node("Conv", ["p", "w"], ["y"], strides=[stride, stride])]
    inits = [const("w", rng.standard_normal((4, 2, kernel, kernel)))]
    model = graph_model(nodes, inits, 17, (3, 2, side, side))
    network = assert_runs_like_onnxruntime(model)
    assert [n.op for n in network.nodes] == ["conv"]
    total = max((math.ceil(side / stride) - 1) * stride + kernel - side, 0)
    half = total // 2
    assert list(network.node("y").operator.attrs["padding"]) == [half, half, total - half,
                                                                 total - half]
    for axis, symbol in ((0, "n"), (2, "h"), (3, "w")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = symbol
    other = load_onnx(model.SerializeToString(), input_shapes={"x": [2, 2, side + 3, side + 1]})
    feeds = random_inputs(other, seed=1)
    expected = onnxruntime_outputs(model, feeds)[0]
    np.testing.assert_allclose(run_network(other, feeds).outputs["y"], expected, rtol=1e-5,
                               atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_a_gather_from_an_empty_axis_is_refused_by_name() -> None:
    """The Shape of a scalar is empty: taking from it is an error naming the node."""
    nodes = [helper.make_node("Shape", ["scalar"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["g"], name="take", axis=0),
             helper.make_node("Reshape", ["x", "g"], ["y"])]
    model = graph_model(nodes, [const("scalar", 1.0), const("zero", [0], np.int64)], 17, (2,))
    with pytest.raises(NetworkError, match=r"take.*index is out of range for a dimension of 0"):
        load_onnx(model.SerializeToString())


@pytest.mark.parametrize(("mode", "value", "folded"), [("constant", 0.0, True),
                                                       ("constant", 1.0, False),
                                                       ("reflect", 0.0, False)])
def test_only_a_zero_pad_becomes_the_convolutions_padding(mode: str, value: float,
                                                          folded: bool) -> None:
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 0, 0, 1])]
    inits = [const("pads", [0, 0, 1, 2, 0, 0, 2, 1], np.int64), const("value", value),
             const("w", rng.standard_normal((3, 2, 3, 3)))]
    model = graph_model(nodes, inits, 13, (2, 2, 5, 6))
    network = assert_runs_like_onnxruntime(model)
    assert [n.op for n in network.nodes] == (["conv"] if folded else ["pad", "conv"])
    if folded:
        assert list(network.node("y").operator.attrs["padding"]) == [2, 2, 2, 2]


@pytest.mark.parametrize("opset", [7, 11, 13])
def test_clip_of_constants_folds(opset: int) -> None:
    """Bounds as attributes (before opset 11) or inputs (TF-style same padding clamps the pad
    it computes at 0): the clamped constant is what the Add after it adds."""
    bounds: dict[str, Any] = {"min": 0.0, "max": 2.0} if opset < 11 else {}
    inputs = ["c"] if opset < 11 else ["c", "lo", "hi"]
    nodes = [helper.make_node("Clip", inputs, ["k"], **bounds),
             helper.make_node("Add", ["x", "k"], ["y"])]
    inits = [const("c", [-1.0, 3.0, 1.0, 0.5]), const("lo", 0.0), const("hi", 2.0)]
    network = assert_runs_like_onnxruntime(graph_model(nodes, inits, opset, (3, 2, 4)))
    assert [n.op for n in network.nodes] == ["add"]
    np.testing.assert_array_equal(network.node("y").weights["constant"], [0.0, 2.0, 1.0, 0.5])


# -- resizing -----------------------------------------------------------------------------------
@st.composite
def resize_graphs(draw) -> onnx.ModelProto:
    """Upsample (opsets 7, 9: scales as attribute or input), Resize-10 (scales), Resize-11+
    (scales or sizes, the coordinate and nearest modes PyTorch and others export) and Resize-18
    (axes), batch 1-3."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 7)),
             draw(st.integers(1, 7)))
    op, opset = draw(st.sampled_from([("Upsample", 7), ("Upsample", 9), ("Resize", 10),
                                      ("Resize", 11), ("Resize", 13), ("Resize", 18)]))
    mode = draw(st.sampled_from(["nearest", "linear"]))
    attrs: dict[str, Any] = {"mode": mode}
    modern = op == "Resize" and opset >= 11
    factors = [1.0, 1.5, 2.0, 3.0] + ([0.5, 0.75] if modern else [])    # Upsample: >= 1
    scales = [1.0, 1.0, *(s if math.floor(d * s) else 1.0 for d, s in
                          zip(shape[2:], [draw(st.sampled_from(factors)) for _ in "hw"],
                              strict=True))]
    inputs, inits = ["x"], []
    if not modern:
        if op == "Upsample" and opset < 9:
            attrs["scales"] = scales
        else:
            inputs.append("scales")
            inits.append(const("scales", scales))
        return graph_model([helper.make_node(op, inputs, ["y"], **attrs)], inits, opset, shape)
    attrs["coordinate_transformation_mode"] = draw(st.sampled_from(
        ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]))
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(
            ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
    spatial_only = opset >= 18 and draw(st.booleans())
    if spatial_only:
        attrs["axes"] = [2, 3]
    inputs.append("roi" if opset == 11 else "")     # required (empty) until opset 13
    inits.append(const("roi", np.zeros(0)))
    if draw(st.booleans()):
        inputs.append("scales")
        inits.append(const("scales", scales[2:] if spatial_only else scales))
    else:
        sizes = [draw(st.integers(1, 12)) for _ in "hw"]
        inputs += ["empty" if opset == 11 else "", "sizes"]      # 11: no optional scales
        inits.append(const("empty", np.zeros(0)))
        inits.append(const("sizes", sizes if spatial_only else [*shape[:2], *sizes], np.int64))
    return graph_model([helper.make_node(op, inputs, ["y"], **attrs)], inits, opset, shape)


@settings(max_examples=examples(50))
@given(model=resize_graphs(), seed=st.integers(0, 2**16))
def test_resize_matches_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    try:
        load_onnx(model.SerializeToString())
    except NetworkError as refused:     # a rounding tie engines decide differently
        assume("rounding tie" not in str(refused))
        raise
    assert_runs_like_onnxruntime(model, seed)


@pytest.mark.parametrize(("shape", "sizes", "attrs"), [
    ((1, 1, 7, 1), [1, 1, 2, 1], {"coordinate_transformation_mode": "asymmetric",
                                  "nearest_mode": "round_prefer_ceil"}),
    ((1, 1, 1, 7), [1, 1, 1, 1], {"coordinate_transformation_mode": "half_pixel",
                                  "nearest_mode": "floor"}),
])
def test_a_nearest_resize_on_a_rounding_tie_is_refused(shape, sizes, attrs) -> None:
    """1 / (2/7) is 3.5 exactly but 3.4999998 in float32: onnxruntime picks input 4 there, and
    input 2 (float32) for the second; neither rule holds for both, so both are refused."""
    node = helper.make_node("Resize", ["x", "roi", "empty", "sizes"], ["y"], mode="nearest",
                            **attrs)
    model = graph_model([node], [const("roi", np.zeros(0)), const("empty", np.zeros(0)),
                                 const("sizes", sizes, np.int64)], 11, shape)
    with pytest.raises(NetworkError, match="falls on a rounding tie"):
        load_onnx(model.SerializeToString())


@pytest.mark.parametrize(("attrs", "scales", "message"), [
    ({"mode": "cubic"}, [1, 1, 2, 2], "mode 'cubic' is not supported"),
    ({"coordinate_transformation_mode": "tf_crop_and_resize"}, [1, 1, 2, 2],
     "tf_crop_and_resize' is not supported"),
    ({}, [1, 2, 2, 2], "only H and W are resized"),
])
def test_resizes_convplan_does_not_implement_are_refused(attrs: dict[str, Any],
                                                         scales: list[float],
                                                         message: str) -> None:
    model = graph_model([helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)],
                        [const("scales", scales)], 13, (1, 2, 3, 3))
    with pytest.raises(NetworkError, match=message):
        load_onnx(model.SerializeToString())


def test_a_decoder_upsamples_in_nhwc_without_layout_copies() -> None:
    """Conv -> bilinear x2 (align_corners, as FCN's head exports) -> Conv, at batch 2."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["u"], mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Conv", ["u", "w2"], ["y"])]
    model = graph_model(nodes, [const("w", rng.standard_normal((4, 3, 3, 3))),
                                const("scales", [1, 1, 2, 2]),
                                const("w2", rng.standard_normal((2, 4, 1, 1)))], 13,
                        (2, 3, 5, 6))
    network = assert_runs_like_onnxruntime(model, algorithm="im2row")
    program = lower(network, algorithm="im2row").program
    assert next(s for s in program.steps if s.name == "u").layout == "NHWC"
    assert [s.inputs for s in program.steps if s.kind == "transform"] == [["x"], ["y"]]


def test_weight_standardisation_of_constants_folds() -> None:
    """BiT's StdConv as PyTorch exports it: each filter's mean and variance by ReduceMean, a
    training-mode BatchNormalization of the reshaped weights, Reshape back, Conv; the weights
    fold, and GroupNorm (Reshape, InstanceNormalization, Reshape, Mul, Add) runs after it."""
    rng = np.random.default_rng(10)
    make = helper.make_node
    nodes = [make("Reshape", ["w", "rows"], ["w/rows"]),
             make("ReduceMean", ["w/rows"], ["w/mean"], axes=[0, 2], keepdims=0),
             make("Sub", ["w/rows", "w/mean_b"], ["w/centred"]),
             make("Mul", ["w/centred", "w/centred"], ["w/square"]),
             make("ReduceMean", ["w/square"], ["w/var"], axes=[0, 2], keepdims=0),
             make("BatchNormalization", ["w/rows", "ones", "zeros", "w/mean", "w/var"],
                  ["w/std", "w/running_mean", "w/running_var"], epsilon=1e-8, momentum=1.0,
                  training_mode=1),
             make("Reshape", ["w/std", "w_shape"], ["w/standard"]),
             make("Conv", ["x", "w/standard"], ["c"], pads=[1, 1, 1, 1]),
             make("Reshape", ["c", "groups"], ["c/groups"]),
             make("InstanceNormalization", ["c/groups", "g_scale", "g_bias"], ["c/normed"]),
             make("Reshape", ["c/normed", "c_shape"], ["c/back"]),
             make("Mul", ["c/back", "gamma"], ["c/scaled"]),
             make("Add", ["c/scaled", "beta"], ["y"])]
    inits = [const("w", rng.standard_normal((6, 3, 3, 3))), const("rows", [1, 6, -1], np.int64),
             const("w/mean_b", np.zeros((1, 6, 1))), const("ones", np.ones(6)),
             const("zeros", np.zeros(6)), const("w_shape", [6, 3, 3, 3], np.int64),
             const("groups", [2, 3, -1], np.int64), const("g_scale", np.ones(3)),
             const("g_bias", np.zeros(3)), const("c_shape", [2, 6, 5, 5], np.int64),
             const("gamma", rng.standard_normal((6, 1, 1))),
             const("beta", rng.standard_normal((6, 1, 1)))]
    network = assert_runs_like_onnxruntime(graph_model(nodes, inits, 17, (2, 3, 5, 5)))
    assert [n.op for n in network.nodes] == ["conv", "reshape", "instancenorm", "reshape",
                                            "batchnorm"]


@pytest.mark.parametrize(("ceil_mode", "folded"), [(0, True), (1, False)])
def test_a_minus_infinity_pad_becomes_the_max_pools_padding(ceil_mode: int,
                                                            folded: bool) -> None:
    """NASNet's TF-style same max pool; with ceil_mode the pool's last window depends on what
    is input, so the Pad stays (and a network holding a -inf pad is refused in its
    description: JSON has no infinity)."""
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"]),
             helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=ceil_mode)]
    model = graph_model(nodes, [const("pads", [0, 0, 0, 1, 0, 0, 1, 1], np.int64),
                                const("value", -np.inf)], 13, (2, 3, 6, 7))
    if not folded:
        with pytest.raises(NetworkError, match="value must be a finite number"):
            load_onnx(model.SerializeToString())
        return
    network = assert_runs_like_onnxruntime(model)
    assert [n.op for n in network.nodes] == ["maxpool"]
    assert list(network.node("y").operator.attrs["padding"]) == [0, 1, 1, 1]


# -- Expand and Tile on activations ----------------------------------------------------------------
@st.composite
def expand_tile_graphs(draw) -> onnx.ModelProto:
    """A squeeze-excite gate expanded to its feature map (torch's expand_as before a Mul), an
    Expand that grows the batch or prepends axes, and Tile: each on an activation."""
    n, c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), \
        draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["expand_as", "expand", "tile", "noop"]))
    inits = []
    if kind == "expand_as":
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                 helper.make_node("Sigmoid", ["g"], ["s"]),
                 helper.make_node("Expand", ["s", "shape"], ["e"]),
                 helper.make_node("Mul", ["x", "e"], ["y"])]
        inits.append(const("shape", [n, c, h, w], np.int64))
    elif kind in ("expand", "noop"):
        target = [n, c, h, w] if kind == "noop" else \
            [draw(st.integers(1, 3)), *(draw(st.sampled_from([1, d])) for d in (n, c, h, w))]
        nodes = [helper.make_node("Relu", ["x"], ["r"]),
                 helper.make_node("Expand", ["r", "shape"], ["y"])]
        inits.append(const("shape", target, np.int64))
    else:
        repeats = [draw(st.integers(1, 3)) for _ in range(4)]
        nodes = [helper.make_node("Relu", ["x"], ["r"]),
                 helper.make_node("Tile", ["r", "repeats"], ["y"])]
        inits.append(const("repeats", repeats, np.int64))
    return graph_model(nodes, inits, draw(st.sampled_from([13, 17])), (n, c, h, w))


@settings(max_examples=examples(40))
@given(model=expand_tile_graphs(), seed=st.integers(0, 2**16))
def test_expand_and_tile_of_activations_match_onnxruntime(model: onnx.ModelProto,
                                                          seed: int) -> None:
    network = assert_runs_like_onnxruntime(model, seed)
    kinds = {n.op_type for n in model.graph.node}
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    target = [numpy_helper.to_array(t).tolist() for t in model.graph.initializer]
    if "Expand" in kinds and target[0] == list(shape) and "Mul" not in kinds:
        assert "expand" not in {n.op for n in network.nodes}     # a no-op expand is a view


def test_an_expand_that_does_not_broadcast_is_refused() -> None:
    model = graph_model([helper.make_node("Expand", ["x", "shape"], ["y"])],
                        [const("shape", [1, 3, 5, 5], np.int64)], 17, (1, 2, 5, 5))
    with pytest.raises(NetworkError, match="Expand"):
        load_onnx(model.SerializeToString())


@pytest.mark.parametrize(("op", "value"), [("Expand", [65536, 65536, 1, 1]),
                                           ("Tile", [1, 65536, 65536, 1])])
def test_an_activation_blown_up_by_expand_or_tile_is_refused_before_allocating(
        op: str, value: list[int]) -> None:
    import tracemalloc

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r", "s"], ["y"])]
    model = graph_model(nodes, [const("s", value, np.int64)], 17, (1, 1, 4, 4))
    tracemalloc.start()
    try:
        with pytest.raises(NetworkError, match=r"274877906944 bytes; one tensor may have"):
            load_onnx(model.SerializeToString())
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


# -- 1-D convolution (ECA's channel attention) -------------------------------------------------
@st.composite
def conv1d_graphs(draw) -> onnx.ModelProto:
    """Conv over an N, C, L tensor with stride, pads or auto_pad, dilation, groups and bias,
    between the reshapes ECA writes around it."""
    groups = draw(st.integers(1, 3))
    c, m = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    n, length, k = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 5))
    dilation, stride = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    assume((k - 1) * dilation + 1 <= length + 2)
    attrs: dict[str, Any] = {"strides": [stride], "dilations": [dilation], "group": groups}
    if draw(st.booleans()):
        attrs["pads"] = [draw(st.integers(0, 2)), draw(st.integers(0, 2))]
    else:
        attrs["auto_pad"] = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = attrs.get("pads", [1, 1] if attrs.get("auto_pad", "VALID") != "VALID" else [0, 0])
    assume((length + sum(pads) - (k - 1) * dilation - 1) // stride + 1 >= 1)
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    inits = [const("w", rng.standard_normal((m, c // groups, k)))]
    inputs = ["r", "w"]
    if draw(st.booleans()):
        inits.append(const("b", rng.standard_normal(m)))
        inputs.append("b")
    inits.append(const("flat", [n, c, length], np.int64))
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["r"]),
             helper.make_node("Conv", inputs, ["c"], **attrs),
             helper.make_node("Sigmoid", ["c"], ["y"])]
    return graph_model(nodes, inits, 17, (n, c, 1, length))


@settings(max_examples=examples(40))
@given(model=conv1d_graphs(), seed=st.integers(0, 2**16))
def test_a_1d_convolution_matches_onnxruntime(model: onnx.ModelProto, seed: int) -> None:
    try:
        onnxruntime_outputs(model, {"x": np.zeros(
            [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim], np.float32)})
    except Exception:           # a geometry onnxruntime refuses too (SAME with huge kernels)
        assume(False)
    network = assert_runs_like_onnxruntime(model, seed)
    assert [n.op for n in network.nodes if n.op == "conv"] == ["conv"]
