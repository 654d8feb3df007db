"""The memory model, step by step, on networks small enough to count by hand."""

from __future__ import annotations

import numpy as np

from convplan.kernels import registry
from convplan.selector.lowering import lower
from convplan.selector.memory import (
    EXECUTOR_BYTES,
    EXECUTOR_BYTES_PER_STEP,
    array_overhead_bytes,
    predict,
)
from convplan.selector.network import Network
from convplan.selector.runner import run_network

X = [1, 4, 32, 32]
MB = 4 * 32 * 32 * 4          # one (1, 4, 32, 32) float32 tensor
A = array_overhead_bytes(tuple(X))  # its array object, also paid by a view or in-place output
T = MB + A


def network(*layers: dict, outputs=None) -> Network:
    return Network.from_description({"inputs": [{"name": "x", "shape": X}],
                                     "layers": list(layers), "outputs": outputs})


def conv(name: str, source: str, **attrs) -> dict:
    return {"name": name, "op": "conv", "inputs": [source], "out_channels": 4, "kernel": 3,
            "padding": 1, **attrs}


def activations(net: Network, **kw) -> dict[str, int]:
    profile = predict(lower(net, **kw).program)
    return {s.name: s.activation_bytes for s in profile.steps}


def test_a_chain_holds_two_tensors_at_a_time() -> None:
    net = network(conv("a", "x"), conv("b", "a"), conv("c", "b"))
    assert activations(net, algorithm="im2col") == {"a": T, "b": 2 * T, "c": 2 * T}


def test_a_skip_connection_keeps_its_source_alive() -> None:
    net = network(conv("a", "x"), conv("b", "a"), conv("c", "b"),
                  {"name": "s", "op": "add", "inputs": ["a", "c"]})
    live = activations(net, algorithm="im2col")
    assert live == {"a": T, "b": 2 * T, "c": 3 * T, "s": 2 * T + A}   # s overwrites a


def test_in_place_only_at_the_last_use() -> None:
    net = network(conv("a", "x"), {"name": "r", "op": "relu", "inputs": ["a"]},
                  conv("b", "r"))
    steps = lower(net, algorithm="im2col").program.steps
    assert [s.inplace for s in steps] == [False, True, False]
    assert activations(net, algorithm="im2col") == {"a": T, "r": T + A, "b": 2 * T}
    # a is needed after the relu: the relu must not overwrite it
    net = network(conv("a", "x"), {"name": "r", "op": "relu", "inputs": ["a"]},
                  {"name": "s", "op": "add", "inputs": ["a", "r"]})
    steps = lower(net, algorithm="im2col").program.steps
    assert [s.inplace for s in steps] == [False, False, True]
    # the network input belongs to the caller: never overwritten
    net = network({"name": "r", "op": "relu", "inputs": ["x"]})
    assert not lower(net).program.steps[0].inplace


def test_views_cost_nothing_and_keep_their_buffer() -> None:
    net = network(conv("a", "x"), {"name": "f", "op": "flatten", "inputs": ["a"]},
                  {"name": "g", "op": "gemm", "inputs": ["f"], "out_features": 8})
    live = activations(net, algorithm="im2col")
    a2 = array_overhead_bytes((1, 4 * 32 * 32))
    # at g, a's name is gone (its last use was f) but f still holds the buffer
    assert live == {"a": T, "f": T + a2, "g": MB + a2 + 32 + array_overhead_bytes((1, 8))}


def test_layout_transforms_are_steps_with_their_own_copy() -> None:
    net = network(conv("a", "x"), conv("b", "a"))
    program = lower(net, algorithm="kn2row-aa-nhwc").program
    assert [s.name for s in program.steps] == ["x@NHWC>a", "a", "b", "b@NCHW>output"]
    live = {s.name: s.activation_bytes for s in predict(program).steps}
    assert live == {"x@NHWC>a": T, "a": 2 * T, "b": 2 * T, "b@NCHW>output": 2 * T}


def test_a_copy_lives_for_its_consumer_step_only() -> None:
    """Two NHWC consumers of an NCHW tensor: each makes its own copy, dropped right after."""
    net = network(conv("a", "x"), conv("b", "a"), conv("c", "a"),
                  {"name": "s", "op": "add", "inputs": ["b", "c"]})
    program = lower(net, {"a": "im2col", "b": "im2row", "c": "im2row"},
                    layouts={"s": "NCHW"}).program
    names = [s.name for s in program.steps]
    assert names == ["a", "a@NHWC>b", "b", "a@NHWC>c", "c", "b@NCHW>s", "c@NCHW>s", "s"]
    live = {s.name: s.activation_bytes for s in predict(program).steps}
    assert live["b"] == 3 * T                 # a, its copy, b
    assert live["a@NHWC>c"] == 3 * T          # a, b, the new copy (b's copy is gone)
    assert live["c@NCHW>s"] == 3 * T          # b's copy (b was released after it), c, c's copy
    assert live["s"] == 2 * T + A             # the two copies; s overwrites one


def test_fixed_part_is_prepared_weights_inputs_and_the_executor() -> None:
    net = network(conv("a", "x"), conv("b", "a", bias=False))
    lowered = lower(net, algorithm="im2col")
    profile = predict(lowered.program)
    im2col = registry.get("im2col")
    spec = net.conv_spec(net.node("a"))
    prepared = im2col.prepared_bytes(spec, True) + im2col.prepared_bytes(spec, False)
    assert profile.prepared_bytes == prepared
    assert profile.input_bytes == MB
    fixed = prepared + MB + EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * 2
    step_b = profile.steps[1]
    assert step_b.total_bytes == fixed + 2 * T + im2col.workspace_bytes(spec)
    assert profile.peak_bytes == max(s.total_bytes for s in profile.steps)


def test_a_long_chain_measures_what_is_predicted() -> None:
    """Big enough that forgetting to free (or freeing too early) shows beyond the allowances."""
    layers = [conv("c0", "x", out_channels=16)]
    layers += [conv(f"c{i}", f"c{i - 1}", out_channels=16) for i in range(1, 12)]
    net = Network.from_description({"inputs": [{"name": "x", "shape": [1, 16, 64, 64]}],
                                    "layers": layers})
    report = run_network(net, {"x": np.ones((1, 16, 64, 64), np.float32)}, threads=1,
                         algorithm="kn2row-aa")
    tensor = 16 * 64 * 64 * 4
    assert report.measured_peak_bytes <= report.predicted_peak_bytes
    assert report.predicted_peak_bytes <= report.measured_peak_bytes + 128 * 1024
    assert report.measured_peak_bytes < report.prepared_bytes + 4 * tensor


def test_weights_held_from_before_the_trace_are_measured_too() -> None:
    """im2col keeps a view of the network's weights (allocated before any trace), kn2row a copy
    made inside it; prepared before the run, every prepared byte predates the trace. Each way the
    measured peak holds the prepared weights, so it stays tight against the prediction."""
    from convplan.kernels.executor import Executor

    layers = [conv("c0", "x", out_channels=64)]
    layers += [conv(f"c{i}", f"c{i - 1}", out_channels=64) for i in range(1, 4)]
    net = Network.from_description({"inputs": [{"name": "x", "shape": [1, 16, 16, 16]}],
                                    "layers": layers})
    x = {"x": np.ones((1, 16, 16, 16), np.float32)}
    for algorithm, prepare_first in [("im2col", False), ("kn2row", False), ("im2col", True)]:
        program = lower(net, algorithm=algorithm).program
        executor = Executor(program)
        if prepare_first:
            executor.prepare()
        result = executor.run(x, trace=True)
        predicted = predict(program).peak_bytes
        assert result.prepared_bytes > 64 * 1024
        assert result.measured_peak_bytes <= predicted, algorithm
        assert predicted <= result.measured_peak_bytes + 96 * 1024, (algorithm, prepare_first)


def _chain(channels: int = 64, count: int = 4) -> Network:
    layers = [conv("c0", "x", out_channels=channels)]
    layers += [conv(f"c{i}", f"c{i - 1}", out_channels=channels) for i in range(1, count)]
    return Network.from_description({"inputs": [{"name": "x", "shape": [1, 16, 16, 16]}],
                                     "layers": layers})


def test_an_owned_network_holds_each_weight_once() -> None:
    """Handed over (``owned``), each copying layer's original is freed once prepared: the
    measured peak (originals held from before the trace, freed inside it) stays within the
    prediction, which counts the preparation phase, and the network keeps no conv weight. A
    network not handed over keeps its very arrays."""
    x = {"x": np.ones((1, 16, 16, 16), np.float32)}
    for algorithm in ("kn2row", "im2col", "winograd-2x2-3x3"):
        net = _chain()
        kept = {n.name: n.weights["weight"] for n in net.conv_nodes}
        borrowed = run_network(net, x, algorithm=algorithm, threads=1)
        assert all(n.weights["weight"] is kept[n.name] for n in net.conv_nodes)
        assert not borrowed.weights_released and not net.released
        report = run_network(net, x, algorithm=algorithm, threads=1, owned=True)
        assert report.weights_released and all(not n.weights for n in net.conv_nodes)
        measured, predicted = report.measured_peak_bytes, report.predicted_peak_bytes
        assert measured <= predicted <= measured + 96 * 1024, (algorithm, measured, predicted)
        assert report.original_weight_bytes == borrowed.original_weight_bytes
        np.testing.assert_array_equal(report.outputs["c3"], borrowed.outputs["c3"])


def test_preparing_is_predicted_layer_by_layer() -> None:
    """While layer l is prepared: the layers before it prepared, l and the later ones their
    originals (owned), and l's new copy besides."""
    from convplan.selector.memory import preparation_peak

    program = lower(_chain(), algorithm="kn2row").program
    program.owns_weights = True
    convs = [s for s in program.steps if s.kind == "conv"]
    weights = [s.original_bytes() for s in convs]
    copy = [s.algorithm.prepared_bytes(s.spec, bias=False) for s in convs]
    assert [s.prepared_bytes() for s in convs] == weights     # kn2row: a reordered copy
    # the first of the largest layers peaks: every weight held once, and its copy besides
    assert copy[0] < copy[1] == copy[2] == copy[3]
    assert preparation_peak(program) == (sum(weights) + copy[1], "c1")
    # the caller's originals are not counted: the copies grow to every prepared weight
    program.owns_weights = False
    assert preparation_peak(program) == (sum(weights), "c3")


def test_other_layers_weights_count_once_each() -> None:
    """A gemm's weights and a constant count at every step; two layers holding one buffer
    count it once."""
    net = network(conv("a", "x"), {"name": "f", "op": "flatten", "inputs": ["a"]},
                  {"name": "g", "op": "gemm", "inputs": ["f"], "out_features": 8},
                  {"name": "m", "op": "mul", "inputs": ["g"], "constant_shape": [8]},
                  {"name": "n", "op": "mul", "inputs": ["m"], "constant_shape": [8]})
    gemm = sum(w.nbytes for w in net.node("g").weights.values())
    net.node("n").weights["constant"] = net.node("m").weights["constant"]   # one buffer
    profile = predict(lower(net, algorithm="im2col").program)
    assert profile.constant_bytes == gemm + 8 * 4
    assert profile.weight_bytes == profile.prepared_bytes + profile.constant_bytes
    report = run_network(net, threads=1)
    assert report.constant_bytes == gemm + 8 * 4
    assert report.measured_peak_bytes <= report.predicted_peak_bytes
    assert report.predicted_peak_bytes <= report.measured_peak_bytes + 96 * 1024
