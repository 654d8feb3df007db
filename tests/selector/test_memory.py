"""The memory model, step by step, on networks small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pytest

from convplan.kernels import registry
from convplan.kernels.arena import ALIGNMENT
from convplan.kernels.base import run_overhead_bytes
from convplan.selector.lowering import lower
from convplan.selector.memory import (
    EXECUTOR_BYTES,
    EXECUTOR_BYTES_PER_STEP,
    PREPARED_OBJECT_BYTES,
    SLOT_BYTES_PER_STEP,
    array_overhead_bytes,
    predict,
)
from convplan.selector.network import Network
from convplan.selector.runner import run_network
from tests.support.networks import SMALL_INPUT, conv, small_network

X = SMALL_INPUT
MB = 4 * 32 * 32 * 4          # one (1, 4, 32, 32) float32 tensor
A = array_overhead_bytes(tuple(X))  # its array object, also paid by a view or in-place output
T = MB + A




def activations(net: Network, **kw) -> dict[str, int]:
    profile = predict(lower(net, **kw).program)
    return {s.name: s.activation_bytes for s in profile.steps}


def test_a_chain_holds_two_tensors_at_a_time() -> None:
    net = small_network(conv("a", "x"), conv("b", "a"), conv("c", "b"))
    assert activations(net, algorithm="im2col") == {"a": T, "b": 2 * T, "c": 2 * T}


def test_a_skip_connection_keeps_its_source_alive() -> None:
    net = small_network(conv("a", "x"), conv("b", "a"), conv("c", "b"),
                  {"name": "s", "op": "add", "inputs": ["a", "c"]})
    live = activations(net, algorithm="im2col")
    assert live == {"a": T, "b": 2 * T, "c": 3 * T, "s": 2 * T + A}   # s overwrites a


def test_in_place_only_at_the_last_use() -> None:
    net = small_network(conv("a", "x"), {"name": "r", "op": "relu", "inputs": ["a"]},
                  conv("b", "r"))
    steps = lower(net, algorithm="im2col").program.steps
    assert [s.inplace for s in steps] == [False, True, False]
    assert activations(net, algorithm="im2col") == {"a": T, "r": T + A, "b": 2 * T}
    # a is needed after the relu: the relu must not overwrite it
    net = small_network(conv("a", "x"), {"name": "r", "op": "relu", "inputs": ["a"]},
                  {"name": "s", "op": "add", "inputs": ["a", "r"]})
    steps = lower(net, algorithm="im2col").program.steps
    assert [s.inplace for s in steps] == [False, False, True]
    # the network input belongs to the caller: never overwritten
    net = small_network({"name": "r", "op": "relu", "inputs": ["x"]})
    assert not lower(net).program.steps[0].inplace


def test_views_cost_nothing_and_keep_their_buffer() -> None:
    net = small_network(conv("a", "x"), {"name": "f", "op": "flatten", "inputs": ["a"]},
                  {"name": "g", "op": "gemm", "inputs": ["f"], "out_features": 8})
    live = activations(net, algorithm="im2col")
    a2 = array_overhead_bytes((1, 4 * 32 * 32))
    # at g, a's name is gone (its last use was f) but f still holds the buffer
    assert live == {"a": T, "f": T + a2, "g": MB + a2 + 32 + array_overhead_bytes((1, 8))}


def test_layout_transforms_are_steps_with_their_own_copy() -> None:
    net = small_network(conv("a", "x"), conv("b", "a"))
    program = lower(net, algorithm="kn2row-aa-nhwc").program
    assert [s.name for s in program.steps] == ["x@NHWC>a", "a", "b", "b@NCHW>output"]
    live = {s.name: s.activation_bytes for s in predict(program).steps}
    assert live == {"x@NHWC>a": T, "a": 2 * T, "b": 2 * T, "b@NCHW>output": 2 * T}


def test_a_copy_lives_for_its_consumer_step_only() -> None:
    """Two NHWC consumers of an NCHW tensor: each makes its own copy, dropped right after."""
    net = small_network(conv("a", "x"), conv("b", "a"), conv("c", "a"),
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


def test_a_step_holds_the_weights_the_whole_arena_and_the_outputs_made_so_far() -> None:
    """Counted by hand: the arena (a, and each step's im2col patches) is allocated once, so
    every step holds all of it, with one view of it per buffer a step writes into; b, the
    output, is a buffer of its own, made at its step."""
    net = small_network(conv("a", "x"), conv("b", "a", bias=False))
    lowered = lower(net, algorithm="im2col")
    profile = predict(lowered.program)
    im2col = registry.get("im2col")
    spec = net.conv_spec(net.node("a"))
    prepared = im2col.prepared_bytes(spec, True) + im2col.prepared_bytes(spec, False)
    assert profile.prepared_bytes == prepared
    assert profile.input_bytes == MB
    patches = 4 * 3 * 3 * 32 * 32 * 4         # im2col's one workspace, a multiple of 64
    assert im2col.workspace_shapes(spec) == {"patches": (4, 3, 3, 32, 32)}
    assert (profile.arena_bytes, profile.max_live_bytes, profile.output_bytes) == (
        MB + patches, MB + patches, MB)
    views = A + 2 * array_overhead_bytes((4, 3, 3, 32, 32)) + 2 * SLOT_BYTES_PER_STEP
    arena = MB + patches + ALIGNMENT + views
    fixed = (prepared + MB + EXECUTOR_BYTES + EXECUTOR_BYTES_PER_STEP * 2
             + 2 * PREPARED_OBJECT_BYTES)
    overhead = run_overhead_bytes(4)
    step_a, step_b = profile.steps
    assert step_a.total_bytes == fixed + arena + A + overhead
    assert step_b.total_bytes == fixed + arena + MB + 2 * A + overhead
    assert (step_b.activation_bytes, step_b.workspace_bytes) == (2 * T, patches + overhead)
    assert profile.peak_bytes == step_b.total_bytes and profile.peak_step == "b"


def test_the_arena_is_its_placement_not_the_live_sum_of_the_step() -> None:
    """A chain's activations fall as it narrows, but the arena, allocated once, is held at
    every step: the peak is the arena's, though no one step has that much alive."""
    layers = [conv("c0", "x", out_channels=32), conv("c1", "c0", out_channels=4),
              conv("c2", "c1"), conv("c3", "c2")]
    profile = predict(lower(small_network(*layers), algorithm="kn2row").program)
    totals = [s.total_bytes for s in profile.steps]     # four kn2row steps: one allowance
    assert profile.arena_bytes == profile.max_live_bytes > 8 * MB
    assert profile.steps[-1].activation_bytes < 3 * T
    assert max(totals) - min(totals) < MB + 4 * A    # the output buffer, and array objects
    assert profile.peak_bytes > profile.weight_bytes + profile.input_bytes + profile.arena_bytes


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
    # the input, the arena's two tensors (a chain needs no more), the output: and allowances
    assert report.measured_peak_bytes < report.prepared_bytes + 4 * tensor + 64 * 1024


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
    net = small_network(conv("a", "x"), {"name": "f", "op": "flatten", "inputs": ["a"]},
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


def test_a_run_after_the_first_allocates_only_its_outputs_and_allowances() -> None:
    """The first run allocates the arena and its views; a later run only its output buffers
    and what the allowances cover (array objects, ufunc buffers, the executor's tables):
    nothing of an activation's or a workspace's size. Traced, it still measures the arena,
    held from before the trace, within its prediction."""
    import tracemalloc

    from convplan.kernels.arena import allocation_bytes
    from convplan.kernels.executor import Executor
    from convplan.selector.memory import views_bytes

    program = lower(_chain(channels=64, count=6), algorithm="im2col").program
    profile = predict(program)
    executor = Executor(program)
    x = {"x": np.ones((1, 16, 16, 16), np.float32)}
    first = executor.run(x).outputs["c5"]
    held = (profile.weight_bytes + profile.input_bytes + allocation_bytes(profile.arena_bytes)
            + views_bytes(program))
    allowed = profile.peak_bytes - held     # outputs, array objects, allowances
    assert profile.output_bytes <= allowed < profile.arena_bytes / 4
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        second = executor.run(x).outputs["c5"]
        allocated = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert profile.output_bytes <= allocated <= allowed, (allocated, allowed)
    assert second is not first and not np.shares_memory(first, second)
    traced = executor.run(x, trace=True).measured_peak_bytes
    assert traced <= profile.peak_bytes <= traced + 96 * 1024


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "winograd-2x2-3x3"])
@pytest.mark.parametrize("owned", [False, True])
def test_hundreds_of_layers_keep_measured_under_predicted(algorithm: str, owned: bool) -> None:
    """400 tiny convolutions: what each prepared layer keeps beyond its weights' data (its
    record, views and table slot) adds up past the fixed allowances unless it is counted."""
    layers = [conv("c0", "x")] + [conv(f"c{i}", f"c{i - 1}") for i in range(1, 400)]
    net = Network.from_description({"inputs": [{"name": "x", "shape": [1, 4, 4, 4]}],
                                    "layers": layers, "seed": 0})
    report = run_network(net, {"x": np.ones((1, 4, 4, 4), np.float32)}, threads=1,
                         algorithm=algorithm, owned=owned)
    assert report.measured_peak_bytes <= report.predicted_peak_bytes
