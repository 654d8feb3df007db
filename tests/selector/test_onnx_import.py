"""ONNX import: PyTorch exports and hand-built opset 13-17 graphs run and match the reference;
corrupt files, external data and unsupported operators each give one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convplan.selector.baselines import lowest_memory_assignment, uniform_assignment
from convplan.selector.inputs import random_inputs
from convplan.selector.network import NetworkError
from convplan.selector.onnx import load_onnx, reference_outputs
from convplan.selector.runner import run_network
from tests.support import DATA

TORCH_EXPORTS = sorted(DATA.glob("torch_*.onnx"))


def assert_matches_reference(network, assignment=None, algorithm=None) -> None:
    inputs = random_inputs(network, seed=3)
    report = run_network(network, inputs, assignment=assignment, algorithm=algorithm, threads=1)
    expected = reference_outputs(network, inputs)
    for name, y in report.outputs.items():
        ref = expected[name]
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4 * scale + 1e-6)
    assert report.measured_peak_bytes <= report.predicted_peak_bytes


def test_the_torch_exports_are_present() -> None:
    assert len(TORCH_EXPORTS) == 7


@pytest.mark.parametrize(("stem", "ops"), [
    # ConvNeXt: the layer norms over the channels, the Linear layers as 1x1 convolutions; no
    # transpose left (the head's LayerNorm over the pooled features stays as it is)
    ("torch_convnextish", {"conv": 8, "layernorm": 5, "gelu": 2, "add": 2}),
    ("torch_convnextish_opset13", {"conv": 8, "layernorm": 5, "gelu": 2, "add": 2}),
    # TF-style same padding from the shapes: folded into the convolutions
    ("torch_tfsameish", {"conv": 3}),
    ("torch_denseish", {"pad": 2, "instancenorm": 2, "resize": 3}),
])
def test_the_torch_exports_import_to_these_layers(stem: str, ops: dict[str, int]) -> None:
    counts: dict[str, int] = {}
    for node in load_onnx(DATA / f"{stem}.onnx").nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    assert {op: counts.get(op, 0) for op in ops} == ops
    assert "transpose" not in counts


@pytest.mark.parametrize("path", TORCH_EXPORTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("choice", ["default", "im2col", "lowest-memory", "kn2row-aa-nhwc"])
def test_pytorch_exports_match_onnxruntime(path: Path, choice: str) -> None:
    network = load_onnx(path)
    if choice == "lowest-memory":
        assert_matches_reference(network, assignment=lowest_memory_assignment(network))
    elif choice == "im2col":
        assert_matches_reference(network, assignment=uniform_assignment(network, "im2col"))
    elif choice == "default":
        assert_matches_reference(network)
    else:
        assert_matches_reference(network, algorithm=choice)


def _const(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, opset: int, x_shape=(1, 4, 9, 9), out_name: str = "y"):
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _handmade(opset: int) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> Split -> (Clip | MaxPool ceil) -> Concat ->
    Sub/Div by constants -> Slice -> Transpose -> Reshape via Shape arithmetic -> Gemm."""
    rng = np.random.default_rng(0)
    f = np.float32
    inits = [
        _const("w", rng.standard_normal((8, 4, 3, 3)).astype(f)),
        _const("b", rng.standard_normal(8).astype(f)),
        _const("gamma", rng.uniform(0.5, 2, 8).astype(f)),
        _const("beta", rng.standard_normal(8).astype(f)),
        _const("mean", rng.standard_normal(8).astype(f)),
        _const("var", rng.uniform(0.5, 2, 8).astype(f)),
        _const("split", np.array([3, 5], np.int64)),
        _const("lo", np.array(0.0, f)), _const("hi", np.array(2.0, f)),
        _const("shift", rng.standard_normal((8, 1, 1)).astype(f)),
        _const("div", np.array(1.5, f)),
        _const("starts", np.array([1, 0], np.int64)), _const("ends", np.array([-1, 100], np.int64)),
        _const("axes", np.array([2, 3], np.int64)), _const("steps", np.array([1, 2], np.int64)),
        _const("zero", np.array([0], np.int64)), _const("minus1", np.array([-1], np.int64)),
        _const("fc", rng.standard_normal((10, 8 * 7 * 5)).astype(f)),
        _const("fcb", rng.standard_normal(10).astype(f)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"],
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Split", ["r", "split"], ["s0", "s1"], axis=1),
        helper.make_node("Clip", ["s0", "lo", "hi"], ["c0"]),
        helper.make_node("MaxPool", ["s1"], ["p1"], kernel_shape=[3, 3], strides=[1, 1],
                         pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Concat", ["c0", "p1"], ["cat"], axis=1),
        helper.make_node("Sub", ["cat", "shift"], ["sub"]),
        helper.make_node("Div", ["sub", "div"], ["dv"]),
        helper.make_node("Slice", ["dv", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("Transpose", ["sl"], ["tr"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["tr"], ["tr2"], perm=[0, 1, 3, 2]),
        helper.make_node("Shape", ["tr2"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["tr2", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    return _model(nodes, inits, opset)


@pytest.mark.parametrize("opset", [13, 15, 17])
def test_handmade_opset_graph_imports_folds_and_matches(opset: int, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_handmade(opset), path)
    network = load_onnx(path)
    ops = [n.op for n in network.nodes]
    assert ops[:3] == ["conv", "relu", "split"]      # BatchNormalization folded into the conv
    assert ops.count("batchnorm") == 1               # Sub and Div by constants: one affine
    assert "gemm" in ops and "softmax" in ops
    assert_matches_reference(network)
    assert_matches_reference(network, algorithm="kn2row-aa-nhwc")


def test_standalone_batchnorm_and_per_channel_mul_add_become_one_affine(tmp_path: Path) -> None:
    f = np.float32
    inits = [_const(k, v) for k, v in {
        "gamma": np.full(4, 2, f), "beta": np.ones(4, f), "mean": np.zeros(4, f),
        "var": np.ones(4, f), "m": np.arange(4, dtype=f).reshape(4, 1, 1),
        "a": np.ones((1, 4, 1, 1), f)}.items()]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"],
                              ["bn"]),
             helper.make_node("Mul", ["bn", "m"], ["mul"]),
             helper.make_node("Add", ["mul", "a"], ["y"])]
    path = tmp_path / "bn.onnx"
    onnx.save(_model(nodes, inits, 15), path)
    network = load_onnx(path)
    assert [n.op for n in network.nodes] == ["relu", "batchnorm"]
    assert_matches_reference(network)


# -- bad files ----------------------------------------------------------------------------------
def test_truncated_and_garbage_files_are_refused(tmp_path: Path) -> None:
    data = TORCH_EXPORTS[0].read_bytes()
    for name, content in (("truncated", data[: len(data) // 3]), ("garbage", b"\x00\xffnot onnx"),
                          ("empty", b"")):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        with pytest.raises(NetworkError, match="not a valid ONNX file"):
            load_onnx(path)


def test_external_data_is_refused_without_reading_it(tmp_path: Path) -> None:
    model = onnx.load(TORCH_EXPORTS[0])
    onnx.external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="secret.bin", size_threshold=0)
    path = tmp_path / "external.onnx"
    onnx.save(model, path)
    (tmp_path / "secret.bin").unlink()       # if the importer tried to read it, it would fail
    with pytest.raises(NetworkError, match="external data"):
        load_onnx(path)


def test_every_unsupported_operator_is_listed_once(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Sin", ["a"], ["b"]),
             helper.make_node("Sin", ["b"], ["c"]),
             helper.make_node("Softplus", ["c"], ["d"]),
             helper.make_node("MyOp", ["d"], ["y"], domain="com.example")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, path)
    with pytest.raises(NetworkError) as caught:
        load_onnx(path)
    message = str(caught.value)
    assert "Sin (x2)" in message and "Softplus" in message and "com.example.MyOp" in message


@pytest.mark.parametrize(("nodes", "inits", "message"), [
    ([helper.make_node("Conv", ["x", "x"], ["y"])], [], "must be a constant"),
    ([helper.make_node("Conv", ["x", "w"], ["y"])],
     [_const("w", np.ones((2, 4, 3, 3, 3), np.float32))], "only 2-D Conv"),
    ([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)], [], "Cast"),
])
def test_unsupported_uses_of_supported_operators(nodes, inits, message: str,
                                                 tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(nodes, inits, 15), path)
    with pytest.raises(NetworkError, match=message):
        load_onnx(path)


def test_a_symbolic_batch_is_one_and_other_symbolic_dims_are_refused(tmp_path: Path) -> None:
    network = load_onnx(TORCH_EXPORTS[0])      # exported with a dynamic batch axis
    assert next(iter(network.inputs.values()))[0] == 1
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "height", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "sym.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), path)
    with pytest.raises(NetworkError, match="symbolic dimension 2"):
        load_onnx(path)
    assert load_onnx(path, input_shapes={"x": (1, 3, 5, 8)}).shapes["y"] == (1, 3, 5, 8)
