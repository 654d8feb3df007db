"""Real shapes: a network loaded for another batch or other input shapes (`load_network(batch=,
input_shapes=)`) computes, image for image, what it computes at batch 1 and what the reference
computes; a reshape that hard-codes the declared batch is rewritten when it reshapes each image
on its own and refused otherwise; the limits hold for the new shapes before anything is
allocated."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from convplan.selector.network import (
    InputShapes,
    LimitError,
    Limits,
    NetworkError,
    check_description,
    zoo,
)
from convplan.selector.onnx import load_onnx
from convplan.selector.runner import run_network
from tests.support import DATA

TORCH_SHUFFLENET = DATA / "torch_shufflenetish.onnx"


def _per_image(model: str, batch: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(outputs at ``batch``, the same images one at a time, the checked relative error)."""
    network = zoo.load_network(model, batch=batch)
    rng = np.random.default_rng(1)
    x = {k: rng.standard_normal(s, dtype=np.float32) for k, s in network.inputs.items()}
    report = run_network(network, x, threads=1, check=True)
    single = zoo.load_network(model)
    one_by_one = [next(iter(run_network(single, {k: v[i:i + 1] for k, v in x.items()},
                                        threads=1).outputs.values())) for i in range(batch)]
    assert report.max_rel_error is not None
    return next(iter(report.outputs.values())), np.concatenate(one_by_one), report.max_rel_error


@pytest.mark.parametrize("model", ["googlenet", str(TORCH_SHUFFLENET)])
def test_batch_4_is_each_image_at_batch_1_and_agrees_with_the_reference(model: str) -> None:
    batched, single, error = _per_image(model, 4)
    assert batched.shape[0] == 4
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    assert error < 1e-3


def test_the_hard_coded_flatten_of_resnet50_is_rewritten_for_batch_2() -> None:
    declared = zoo._checked("resnet50")
    [flatten] = [layer for layer in declared.description.layers if layer.op == "reshape"]
    assert flatten.attrs["shape"] == [1, 2048]
    for model in ("resnet50", "onnx:resnet50"):
        network = zoo.load_network(model, batch=2)
        node = network.node(flatten.name)
        assert list(node.operator.attrs["shape"]) == [2, 2048]
        assert network.to_description().inputs[0].shape == [2, 3, 224, 224]
        assert network.shapes[network.outputs[0]] == (2, 1000)
    report = run_network(zoo.load_network("resnet50", batch=2), threads=1, check=True,
                         owned=True)
    assert report.outputs["gpu_0/softmax_1"].shape == (2, 1000)
    assert report.max_rel_error is not None and report.max_rel_error < 1e-4
    # the description the checked network keeps is the rewritten one
    checked = check_description(declared.description, input_shapes=InputShapes(batch=2))
    layer = next(la for la in checked.description.layers if la.name == flatten.name)
    assert layer.attrs["shape"] == [2, 2048]


def _tiny(layers: list[dict], shape: list[int]) -> dict:
    return {"name": "tiny", "inputs": [{"name": "x", "shape": shape}], "layers": layers}


def test_a_reshape_that_mixes_the_batch_is_refused_naming_it() -> None:
    mixed = _tiny([{"name": "fold", "op": "reshape", "inputs": ["x"], "shape": [4, 2]}], [1, 8])
    assert check_description(mixed).shapes["fold"] == (4, 2)
    with pytest.raises(NetworkError, match=r"layer 'fold': its shape \[4, 2\] .*leading "
                                           r"dimension"):
        check_description(mixed, input_shapes=InputShapes(batch=2))
    sliced = _tiny([{"name": "first", "op": "slice", "inputs": ["x"], "starts": [0],
                     "ends": [1], "axes": [0]}], [1, 8])
    with pytest.raises(NetworkError, match="layer 'first': slice of axis 0"):
        check_description(sliced, input_shapes=InputShapes(batch=3))
    per_image = _tiny([{"name": "bias", "op": "add", "inputs": ["x"], "constant_shape": [2, 8]}],
                      [2, 8])
    with pytest.raises(NetworkError, match=r"layer 'bias': its constant of shape \[2, 8\] holds "
                                           "one value per image of batch 2"):
        check_description(per_image, input_shapes=InputShapes(batch=3))
    shared = _tiny([{"name": "bias", "op": "add", "inputs": ["x"], "constant_shape": [1, 8]}],
                   [1, 8])
    assert check_description(shared, input_shapes=InputShapes(batch=3)).shapes["bias"] == (3, 8)
    # a shape change that is not the batch is the reshape's own check
    flat = _tiny([{"name": "flat", "op": "reshape", "inputs": ["x"], "shape": [1, 8]}], [1, 8])
    with pytest.raises(NetworkError, match=r"layer 'flat'.*holds 8 elements"):
        check_description(flat, input_shapes=InputShapes(inputs={"x": [1, 16]}))


def _symbolic(tmp_path: Path, dims: list) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), path)
    return path


def test_input_shapes_set_the_symbolic_dims_of_an_onnx_file(tmp_path: Path) -> None:
    network = zoo.load_network(DATA / "torch_resnetish.onnx", input_shapes={"input": [3, 3, 32,
                                                                                    32]})
    assert network.inputs == {"input": (3, 3, 32, 32)} and network.source is not None
    path = _symbolic(tmp_path, ["n", 3, "h", "w"])
    network = zoo.load_network(path, batch=2, input_shapes={"x": [2, 3, 5, 7]})
    assert network.shapes["y"] == (2, 3, 5, 7)
    with pytest.raises(NetworkError, match="input 'x': dimension 1 is fixed to 3 in the file; "
                                           "the shape given asks for 4"):
        load_onnx(path, input_shapes={"x": (1, 4, 5, 7)})
    with pytest.raises(NetworkError, match="batch 1, but the batch asked for is 2"):
        zoo.load_network(path, batch=2, input_shapes={"x": [1, 3, 5, 7]})
    with pytest.raises(NetworkError, match="'data' is not an input of the model; its inputs: "
                                           "'x'"):
        load_onnx(path, input_shapes={"data": (1, 3, 5, 7)})
    with pytest.raises(NetworkError, match="'data' is not an input of network 'googlenet'"):
        zoo.load_network("googlenet", input_shapes={"data": [1, 3, 224, 224]})


@pytest.mark.parametrize("text", ["x=1x3xab", "x", "=1x2", "x=", "x=0x3", "x=1x-3", "x=1x3=4",
                                  "x=" + "x".join(["1"] * 9)])
def test_bad_input_shape_text_is_one_clear_error(text: str) -> None:
    with pytest.raises(NetworkError, match=r"input shape|dimensions"):
        InputShapes.parse([text])


def test_input_shape_text_reads_as_shapes() -> None:
    shapes = InputShapes.parse(["data = 2X3x224x224", "mask=2x1"], batch=2)
    assert shapes.inputs == {"data": [2, 3, 224, 224], "mask": [2, 1]} and shapes.batch == 2
    assert shapes.text() == "batch 2, data=2x3x224x224, mask=2x1"
    with pytest.raises(NetworkError, match="two shapes"):
        InputShapes.parse(["x=1", "x=2"])
    with pytest.raises(NetworkError, match="invalid input shapes: batch"):
        InputShapes(batch=0)


@pytest.mark.parametrize("model", ["resnet50", "onnx:resnet50", str(TORCH_SHUFFLENET),
                                   "vgg16"])
def test_the_limits_refuse_a_huge_batch_before_anything_is_made(model: str) -> None:
    started = time.perf_counter()
    with pytest.raises(LimitError, match=r"\[1000000, 3, (224|32)"):
        zoo.load_network(model, Limits.of_this_machine(), batch=10**6)
    assert time.perf_counter() - started < 5.0


def test_run_plan_refuses_a_plan_made_for_other_shapes() -> None:
    """`run_plan` itself holds a plan to the input shapes it records, as the CLI and the
    service do before it."""
    from convplan.profiles.profiler import Profiler
    from convplan.selector.network import zoo
    from convplan.selector.planning import PlanError, make_plan
    from convplan.selector.runner import run_plan

    def estimated(requests):
        return Profiler(None, threads=1).costs(requests, measure_missing=False)

    one = zoo.load_network("onnx:squeezenet")
    plan = make_plan(one, estimated, None, machine={}, threads=1, with_baselines=False)
    two = zoo.load_network("onnx:squeezenet", batch=2)
    with pytest.raises(PlanError, match="the plan was made for inputs"):
        run_plan(two, plan, threads=1)
