"""What an ONNX import holds: a file's weights once (no bytes of the file, no protobuf copy),
folded constants as views until they are weights, batch-norm folded in blocks with the same
float64 arithmetic, and a weights-free import for the descriptions of the built-ins."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from convplan.selector.inputs import random_inputs
from convplan.selector.network import CheckedNetwork, Network, check_description, zoo
from convplan.selector.onnx import load_onnx, network_to_onnx, weights
from convplan.selector.onnx.weights import fold_affine, scaled_rows
from convplan.selector.runner import run_network
from tests.support import DATA, ROOT
from tests.support.hostile_onnx import const, model

MIB = 1 << 20


def traced_peak(fn, *args, **kwargs):
    """``fn``'s result and the peak of memory traced while it ran, over what was traced before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Network, Path]:
    """GoogLeNet (27 MiB of seeded weights, 57 convolutions) written by convplan's exporter."""
    network = zoo.builtin("googlenet")
    path = tmp_path_factory.mktemp("export") / "googlenet.onnx"
    onnx.save(network_to_onnx(network), path)
    return network, path


def test_an_import_holds_the_weights_once(exported) -> None:
    """Every initializer read straight from the file into its array: the traced peak is the
    weights (not the file's bytes, a protobuf copy and the arrays), and the network computes
    what the exported one computes."""
    original, path = exported
    assert path.stat().st_size > original.weight_bytes
    descriptors = len(list(Path("/proc/self/fd").iterdir()))
    imported, peak = traced_peak(load_onnx, path)
    assert imported.weight_bytes == original.weight_bytes
    assert peak < 1.3 * imported.weight_bytes, f"{peak / MIB:.1f} MiB traced"
    # the file is neither open nor mapped any more
    assert len(list(Path("/proc/self/fd").iterdir())) == descriptors
    assert str(path) not in Path("/proc/self/maps").read_text()
    inputs = random_inputs(original, seed=1)
    want = run_network(original, inputs, algorithm="im2col", threads=1).outputs
    got = run_network(imported, inputs, algorithm="im2col", threads=1).outputs
    assert got.keys() == want.keys()
    for name, y in want.items():
        np.testing.assert_array_equal(got[name], y)


_RESIDENT_GROWTH = """
import gc, json, sys
from convplan.selector.onnx import load_onnx

def resident():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

load_onnx(sys.argv[2])      # every module the import needs, imported before measuring
gc.collect()
before = resident()["VmRSS"]
open("/proc/self/clear_refs", "w").write("5")     # the high-water mark restarts here
network = load_onnx(sys.argv[1], weights=sys.argv[3] == "weights")
gc.collect()
print(json.dumps({"peak": resident()["VmHWM"] - before, "weights": network.weight_bytes}))
"""


@pytest.mark.parametrize("mode", ["weights", "description"])
def test_the_resident_peak_of_an_import_is_its_weights(exported, mode: str) -> None:
    """In a fresh process (after the modules are imported) the resident high-water mark grows
    by the weights, not by the file's size again: no file page stays mapped and no copy is
    made; a weights-free import grows by a few MiB."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable: the high-water mark cannot restart")
    _, path = exported
    result = subprocess.run([sys.executable, "-c", _RESIDENT_GROWTH, str(path),
                             str(DATA / "torch_shufflenetish.onnx"), mode],
                            capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    grew = json.loads(result.stdout)
    limit = 1.1 * grew["weights"] + 4 * MIB if mode == "weights" else 8 * MIB
    assert grew["peak"] < limit, f"{grew['peak'] / MIB:.1f} MiB resident growth"


def test_a_weights_free_import_reads_no_weight(exported) -> None:
    """The same checked description and weight shapes, without reading the file's weights."""
    original, path = exported
    checked, peak = traced_peak(load_onnx, path, weights=False)
    assert isinstance(checked, CheckedNetwork)
    assert peak < 4 * MIB, f"{peak / MIB:.1f} MiB traced"
    full = check_description(load_onnx(path).to_description())
    assert checked.weight_shapes == full.weight_shapes
    assert checked.weight_bytes == original.weight_bytes
    assert checked.attach().to_description() == full.attach().to_description()


@pytest.mark.parametrize("light", ["resnet50", "inception_v1"])
def test_the_built_in_descriptions_come_without_weights(light: str) -> None:
    """A light model's weights-free import is what the built-in network is made of today (the
    description of its full import, checked): same layers, shapes, weight shapes and seeded
    weights; its import holds no weight (ResNet-50's ConstantOfShape weights stay views)."""
    path = zoo.light_model_path(light)
    checked, peak = traced_peak(load_onnx, path, name=light, weights=False)
    assert peak < 4 * MIB, f"{peak / MIB:.1f} MiB traced"
    full = check_description(load_onnx(path, name=light).to_description())
    assert checked.shapes == full.shapes and checked.weight_shapes == full.weight_shapes
    a, b = checked.attach(), full.attach()
    assert a.to_description() == b.to_description()
    for x, y in zip(a.nodes, b.nodes, strict=True):
        assert x.weights.keys() == y.weights.keys()
        for key in x.weights:
            np.testing.assert_array_equal(x.weights[key], y.weights[key])


def test_the_light_resnet50_import_peak_is_its_weights() -> None:
    """ResNet-50's weights are ConstantOfShape outputs: views until each becomes a weight, and
    its batch norms folded in blocks (no float64 copy of a weight)."""
    network, peak = traced_peak(load_onnx, zoo.light_model_path("resnet50"))
    assert peak < 1.1 * network.weight_bytes, f"{peak / MIB:.1f} MiB traced"


def test_a_constant_of_shape_is_a_view_until_it_is_a_weight() -> None:
    """A 64 MiB ConstantOfShape whose shape only is used costs nothing; one that becomes a
    convolution's weights is materialised once, contiguous and writeable."""
    nodes = [helper.make_node("ConstantOfShape", ["big_shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Shape", ["big"], ["n"]),
             helper.make_node("ConstantOfShape", ["w_shape"], ["w"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "n"], ["y"])]
    m = model(nodes, inits=[const("big_shape", [1, 1 << 24], np.int64),
                            const("w_shape", [1, 4, 3, 3], np.int64)], x_shape=(1, 4, 64, 64))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 4096
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 4096
    network, peak = traced_peak(load_onnx, m.SerializeToString())
    assert peak < 2 * MIB, f"{peak / MIB:.1f} MiB traced"
    (conv,) = [n for n in network.nodes if n.op == "conv"]
    w = conv.weights["weight"]
    assert w.flags.c_contiguous and w.flags.writeable and w.flags.owndata
    np.testing.assert_array_equal(w, np.full((1, 4, 3, 3), 0.25, np.float32))


def _old_scaled(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The formula the fold used before it worked in blocks."""
    return (w * scale[:, None, None, None]).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 32, 3, 3), (7, 1, 1, 1), (3, 4096, 11, 11), (1, 2, 5, 5)])
def test_scaled_rows_is_bit_identical_to_the_float64_formula(shape, monkeypatch) -> None:
    """In blocks of rows (one row here is larger than a block, another block is a partial one):
    every element as the float64 product rounded once, as before."""
    monkeypatch.setattr(weights, "FOLD_BLOCK_BYTES", 8 * 1000)
    rng = np.random.default_rng(4)
    w = rng.standard_normal(shape, dtype=np.float32)
    scale = rng.uniform(-3, 3, shape[0]) / np.sqrt(rng.uniform(1e-6, 2, shape[0]) + 1e-5)
    out = scaled_rows(w, scale)
    assert out.dtype == np.float32
    assert out.tobytes() == _old_scaled(w, scale).tobytes()


def _conv_and_batchnorm(w: np.ndarray, scale: np.ndarray, shift: np.ndarray):
    layers = [{"name": "c", "op": "conv", "inputs": ["x"], "out_channels": len(w),
               "kernel": list(w.shape[2:])},
              {"name": "bn", "op": "batchnorm", "inputs": ["c"]}]
    return layers, {"c": {"weight": w}, "bn": {"scale": scale, "shift": shift}}


@pytest.mark.parametrize("owned", [False, True], ids=["new-array", "in-place"])
def test_fold_affine_folds_in_blocks_without_float64_temporaries(owned: bool) -> None:
    """A 16 MiB conv weight and a batch norm: the folded weight equals the old formula bit for
    bit, and the fold holds the new float32 weight (none when the weight is the caller's own)
    plus at most one block of float64."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((512, 512, 4, 4), dtype=np.float32)
    scale, shift = rng.uniform(0.5, 2, 512), rng.uniform(-1, 1, 512)
    expected = _old_scaled(w, scale)
    layers, held = _conv_and_batchnorm(w.copy() if owned else w, scale, shift)
    kept, peak = traced_peak(fold_affine, layers, held, {"bn"}, owned=owned)
    assert [layer["name"] for layer in kept] == ["c"] and kept[0]["outputs"] == ["bn"]
    assert held["c"]["weight"].tobytes() == expected.tobytes()
    np.testing.assert_array_equal(held["c"]["bias"], shift.astype(np.float32))
    kept_bytes = 0 if owned else w.nbytes
    assert peak < kept_bytes + 2 * weights.FOLD_BLOCK_BYTES + 64 * 1024, f"{peak} bytes traced"
    if not owned:
        assert w.tobytes() != expected.tobytes(), "the caller's array was written"


def test_fold_affine_never_writes_a_weight_another_layer_shares() -> None:
    """One initializer used by two convs (the same array in both): folding one's batch norm
    leaves the other's weight as it was."""
    w = np.ones((4, 4, 3, 3), np.float32)
    layers, held = _conv_and_batchnorm(w, np.full(4, 2.0), np.zeros(4))
    layers.append({"name": "d", "op": "conv", "inputs": ["x"], "out_channels": 4,
                   "kernel": [3, 3]})
    held["d"] = {"weight": w}
    fold_affine(layers, held, {"bn", "d"}, owned=True)
    np.testing.assert_array_equal(held["d"]["weight"], np.ones((4, 4, 3, 3), np.float32))
    np.testing.assert_array_equal(held["c"]["weight"], np.full((4, 4, 3, 3), 2, np.float32))
