"""The static arena: which buffers a program needs and for how long, their placement, and the
check of a layout (which the compiled-plan loader runs on offsets it did not plan)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convplan.kernels.arena import (
    ALIGNMENT,
    ArenaLayout,
    Buffer,
    aligned,
    buffers,
    check_layout,
    live_bytes,
    output_bytes,
    place,
)
from convplan.kernels.base import TAP_TABLE_BYTES, run_overhead_bytes
from convplan.kernels.executor import Program
from convplan.selector.lowering import lower
from convplan.selector.memory import array_overhead_bytes, predict, tensor_bytes
from convplan.selector.network import zoo
from tests.support.networks import SMALL_INPUT, conv, small_network

X = SMALL_INPUT
MB = 4 * 32 * 32 * 4          # one (1, 4, 32, 32) float32 tensor, a multiple of ALIGNMENT


# -- random interval sets --------------------------------------------------------------------
@st.composite
def interval_sets(draw, max_buffers: int = 30, max_step: int = 25) -> list[Buffer]:
    """Buffers of 0-48 alignment units (sizes repeat, as a network's do) over short and long
    lifetimes."""
    drawn = draw(st.lists(st.tuples(st.integers(0, max_step), st.integers(0, 10),
                                    st.sampled_from([0, 1, 2, 3, 4, 8, 8, 16, 16, 48])),
                          max_size=max_buffers))
    return [Buffer(f"b{i}", units * ALIGNMENT, first, first + length)
            for i, (first, length, units) in enumerate(drawn)]


def overlapping_pairs(bufs: list[Buffer], offsets: dict[str, int]) -> list[tuple[str, str]]:
    """Every pair alive at a common step sharing a byte, by brute force (the oracle)."""
    return [(a.key, b.key) for i, a in enumerate(bufs) for b in bufs[i + 1:]
            if a.first <= b.last and b.first <= a.last
            and max(offsets[a.key], offsets[b.key])
            < min(offsets[a.key] + a.nbytes, offsets[b.key] + b.nbytes)]


@given(interval_sets())
def test_a_placement_is_valid_and_no_smaller_than_the_live_bound(bufs: list[Buffer]) -> None:
    layout = place(bufs)
    check_layout(bufs, layout)
    assert not overlapping_pairs(bufs, layout.offsets)
    assert layout.max_live_bytes == max(live_bytes(bufs), default=0)
    assert layout.max_live_bytes <= layout.size <= sum(b.nbytes for b in bufs)


@given(interval_sets(), st.randoms(use_true_random=False))
def test_the_same_buffers_give_the_same_layout_in_any_order(bufs: list[Buffer], rng) -> None:
    shuffled = list(bufs)
    rng.shuffle(shuffled)
    assert place(bufs) == place(bufs) == place(shuffled)
    assert place(bufs, seed=3) == place(shuffled, seed=3)


@given(interval_sets())
def test_the_search_only_ever_improves_on_the_orderings(bufs: list[Buffer]) -> None:
    searched, greedy = place(bufs), place(bufs, search_iterations=0)
    assert searched.size <= greedy.size
    assert searched.placement.endswith("+search") == (searched.size < greedy.size)
    assert greedy.placement in ("greedy-size", "greedy-breadth", "lifetime")


@given(interval_sets(), st.data())
def test_check_layout_rejects_exactly_the_overlapping_layouts(bufs: list[Buffer], data) -> None:
    offsets = {b.key: data.draw(st.integers(0, 40)) * ALIGNMENT for b in bufs}
    size = max((offsets[b.key] + b.nbytes for b in bufs), default=0)
    layout = ArenaLayout(size, max(live_bytes(bufs), default=0), offsets, "drawn")
    pairs = overlapping_pairs(bufs, offsets)
    if pairs:
        with pytest.raises(ValueError, match="are alive at step"):
            check_layout(bufs, layout)
    else:
        check_layout(bufs, layout)


def test_one_buffer_sits_at_zero() -> None:
    layout = place([Buffer("only", 640, 2, 5)])
    assert layout == ArenaLayout(640, 640, {"only": 0}, "greedy-size")
    assert place([]) == ArenaLayout(0, 0, {}, "greedy-size")


def test_buffers_alive_at_different_steps_reuse_offset_zero() -> None:
    bufs = [Buffer(f"b{i}", 64 * (i + 1), 2 * i, 2 * i + 1) for i in range(6)]
    layout = place(bufs)
    assert set(layout.offsets.values()) == {0}
    assert layout.size == layout.max_live_bytes == 64 * 6


def test_empty_buffers_take_no_room() -> None:
    bufs = [Buffer("empty", 0, 0, 3), Buffer("full", 128, 0, 3)]
    layout = place(bufs)
    assert layout.size == 128
    check_layout(bufs, replace(layout, offsets={"empty": 64, "full": 0}))


def test_buffers_must_be_aligned_intervals() -> None:
    with pytest.raises(ValueError, match="100 bytes is not a non-negative multiple of 64"):
        Buffer("x", 100, 0, 1)
    with pytest.raises(ValueError, match=r"steps 3\.\.1 are not an interval"):
        Buffer("x", 64, 3, 1)
    assert aligned(0) == 0 and aligned(1) == aligned(64) == 64 and aligned(65) == 128
    twice = [Buffer("x", 64, 0, 1), Buffer("x", 64, 2, 3)]
    for call in (lambda: place(twice), lambda: check_layout(twice, place(twice[:1]))):
        with pytest.raises(ValueError, match="two buffers are named 'x'"):
            call()


# -- check_layout on crafted layouts -------------------------------------------------------------
BUFS = [Buffer("a", 128, 0, 2), Buffer("b", 64, 2, 3), Buffer("c", 128, 3, 4)]
GOOD = ArenaLayout(192, 192, {"a": 0, "b": 128, "c": 0}, "crafted")


def test_a_valid_crafted_layout_passes() -> None:
    check_layout(BUFS, GOOD)                   # c reuses a's bytes: they never share a step
    check_layout(BUFS, replace(GOOD, size=4096))


@pytest.mark.parametrize(("offsets", "size", "message"), [
    ({"a": 0, "b": 64, "c": 0}, 192,
     "buffers 'a' and 'b' are alive at step 2 and share bytes 64..128"),
    ({"a": 0, "b": 128, "c": 64}, 192,
     "buffers 'b' and 'c' are alive at step 3 and share bytes 128..192"),
    ({"a": 0, "b": 160, "c": 0}, 256, "buffer 'b': offset 160 is not a non-negative multiple"),
    ({"a": 0, "b": -64, "c": 0}, 192, "buffer 'b': offset -64 is not"),
    ({"a": 0, "b": True, "c": 0}, 192, "buffer 'b': offset True is not"),
    ({"a": 0, "b": 128.0, "c": 0}, 192, "buffer 'b': offset 128.0 is not"),
    ({"a": 0, "b": 128}, 192, "the layout has no offset for buffer 'c'"),
    ({"a": 0, "b": 128, "c": 0, "d": 0}, 192, "the layout places 'd', which is no buffer"),
    ({"a": 0, "b": 128, "c": 128}, 192, "buffer 'c': bytes 128..256 end beyond the arena's 192"),
])
def test_check_layout_rejects(offsets: dict, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_layout(BUFS, ArenaLayout(size, 192, offsets, "crafted"))


def test_check_layout_rejects_a_wrong_bound_or_size() -> None:
    with pytest.raises(ValueError, match="states max_live_bytes 128; its buffers have 192"):
        check_layout(BUFS, replace(GOOD, max_live_bytes=128))
    with pytest.raises(ValueError, match="the layout's arena size -1 is not a byte count"):
        check_layout(BUFS, replace(GOOD, size=-1))
    with pytest.raises(ValueError, match="the layout's max_live_bytes '192' is not a byte"):
        check_layout(BUFS, replace(GOOD, max_live_bytes="192"))


def test_check_layout_sweeps_thousands_of_buffers() -> None:
    """Each buffer alive for 3 of 4000 steps, 3 alive at a time: a sweep, not all pairs."""
    bufs = [Buffer(f"t{i}", 64 * (1 + i % 7), i, i + 2) for i in range(4000)]
    layout = place(bufs)
    check_layout(bufs, layout)
    assert layout.size == layout.max_live_bytes


# -- buffers of lowered programs -------------------------------------------------------------


def tensors(program: Program) -> dict[str, tuple[int, int]]:
    """Arena buffers that are tensors (not workspaces), as key -> (first, last)."""
    return {b.key: (b.first, b.last) for b in buffers(program) if "#" not in b.key}


def test_an_in_place_output_shares_its_input_buffer_until_its_last_use() -> None:
    program = lower(small_network(conv("a", "x"), {"name": "r", "op": "relu", "inputs": ["a"]},
                            conv("b", "r")), algorithm="im2col").program
    assert [s.inplace for s in program.steps] == [False, True, False]
    assert tensors(program) == {"a": (0, 2)}          # r writes over a; b is the output
    assert output_bytes(program) == MB


def test_a_view_keeps_its_buffer_alive() -> None:
    program = lower(small_network(conv("a", "x"), {"name": "f", "op": "flatten", "inputs": ["a"]},
                            {"name": "g", "op": "gemm", "inputs": ["f"], "out_features": 8}),
                    algorithm="im2col").program
    assert tensors(program) == {"a": (0, 2)}
    assert output_bytes(program) == 8 * 4


def test_a_buffer_an_output_views_is_outside_the_arena() -> None:
    """The caller keeps the output, so the buffer it views is allocated per run; a view of the
    network input is the caller's own array."""
    program = lower(small_network(conv("a", "x"), {"name": "f", "op": "flatten", "inputs": ["a"]}),
                    algorithm="im2col").program
    assert tensors(program) == {}
    assert output_bytes(program) == MB
    program = lower(small_network({"name": "f", "op": "flatten", "inputs": ["x"]})).program
    assert buffers(program) == [] and output_bytes(program) == 0


def test_layout_copies_are_buffers_of_their_transform_step() -> None:
    program = lower(small_network(conv("a", "x"), conv("b", "a")),
                    algorithm="kn2row-aa-nhwc").program
    assert [s.name for s in program.steps] == ["x@NHWC>a", "a", "b", "b@NCHW>output"]
    assert tensors(program) == {"x@NHWC>a": (0, 1), "a": (1, 2), "b": (2, 3)}
    assert output_bytes(program) == MB                 # the NCHW copy the caller gets


def test_workspaces_are_the_declared_shapes_of_their_step_only() -> None:
    """One buffer per named shape, of convolutions and operators alike, and the operators'
    buffers are their whole temporary bytes (`workspace_bytes` less the allowance)."""
    program = lower(small_network(conv("a", "x"), {"name": "p", "op": "avgpool", "inputs": ["a"],
                                             "kernel": 3, "stride": 1, "padding": 1},
                            {"name": "s", "op": "softmax", "inputs": ["p"]}),
                    algorithm="im2col").program
    workspaces = {b.key: b for b in buffers(program) if "#" in b.key}
    declared = {(i, step.name): (step.algorithm.workspace_shapes(step.spec) if i == 0
                                 else step.operator.workspace_shapes([tuple(X)], step.layout))
                for i, step in enumerate(program.steps)}
    assert workspaces == {f"{name}#{k}": Buffer(f"{name}#{k}", aligned(tensor_bytes(s)), i, i)
                          for (i, name), shapes in declared.items() for k, s in shapes.items()}
    assert set(declared[1, "p"]) == {"buffer", "saved", "row_counts", "col_counts", "divisor"}
    assert set(declared[2, "s"]) == {"reduced"} and declared[0, "a"]
    for i, step in enumerate(program.steps[1:], start=1):
        assert sum(tensor_bytes(s) for s in declared[i, step.name].values()) == (
            step.operator.workspace_bytes([tuple(X)], 4) - run_overhead_bytes(4))


def test_a_buffer_never_released_lives_to_the_end() -> None:
    program = lower(small_network(conv("a", "x"), conv("b", "a"), conv("c", "b")),
                    algorithm="im2col").program
    assert tensors(program) == {"a": (0, 1), "b": (1, 2)}
    for step in program.steps:
        step.release = []
    assert tensors(program) == {"a": (0, 2), "b": (1, 2)}


def test_a_tensor_named_like_a_workspace_is_refused() -> None:
    program = lower(small_network(conv("a", "x"), {"name": "a#patches", "op": "relu",
                                             "inputs": ["a"]}, conv("b", "a")),
                    algorithm="im2col").program
    with pytest.raises(ValueError, match="two arena buffers are named 'a#patches'"):
        buffers(program)


# -- every built-in network ------------------------------------------------------------------
@pytest.mark.parametrize("name", zoo.names())
def test_a_builtin_network_places_within_5_percent_of_its_bound(name: str) -> None:
    """Lowered as it comes and with im2col everywhere (one load of the network for both)."""
    network = zoo.builtin(name)
    for algorithm in (None, "im2col"):
        program = lower(network, algorithm=algorithm).program
        bufs = buffers(program)
        layout = place(bufs)
        check_layout(bufs, layout)
        assert layout.size <= 1.05 * layout.max_live_bytes, algorithm
        assert_live_buffers_are_the_memory_model(program, bufs)


def test_the_search_is_what_places_densenet_at_its_bound() -> None:
    bufs = buffers(lower(zoo.builtin("onnx:densenet121"), algorithm="im2col").program)
    greedy, searched = place(bufs, search_iterations=0), place(bufs)
    assert greedy.size > 1.04 * greedy.max_live_bytes
    assert (searched.size, searched.placement) == (searched.max_live_bytes, "greedy-size+search")


def assert_live_buffers_are_the_memory_model(program: Program, bufs: list[Buffer]) -> None:
    """At every step, the memory model's activations are the arena's tensors, the output
    buffers made so far and every live array object; its workspace is the arena's workspaces
    of the step and the allowances (`run_overhead_bytes`, tap tables). Each arena buffer is
    its unaligned size rounded up to ALIGNMENT. So max_live_bytes is the model's largest
    activations + workspace less those objects, output buffers and allowances, aligned."""
    profile = predict(program)
    shapes, overhead = program.shapes, run_overhead_bytes(4)
    workspace_of = {f"{s.name}#{k}": (i, tensor_bytes(shape, s.spec.itemsize))
                    for i, s in enumerate(program.steps) if s.kind == "conv"
                    for k, shape in s.algorithm.workspace_shapes(s.spec).items()}
    workspace_of.update({f"{s.name}#{k}": (i, tensor_bytes(shape))
                         for i, s in enumerate(program.steps) if s.kind == "op"
                         for k, shape in s.operator.workspace_shapes(
                             [shapes[t] for t in s.inputs], s.layout).items()})
    unaligned = {b.key: workspace_of[b.key][1] if b.key in workspace_of
                 else tensor_bytes(shapes[b.key]) for b in bufs}
    assert all(b.nbytes == aligned(unaligned[b.key]) for b in bufs)
    assert all(b.first == b.last == workspace_of[b.key][0] for b in bufs if b.key in workspace_of)

    # the buffers the outputs hold (found by following views and in-place outputs back)
    root = dict.fromkeys(program.inputs)
    made: list[tuple[int, str]] = []
    for i, step in enumerate(program.steps):
        for t in step.outputs:
            root[t] = root[step.inputs[0]] if step.aliases_input else t
            made.append((i, t))
    held = {root[t] for t in program.outputs} - {None}
    assert output_bytes(program) == sum(tensor_bytes(shapes[t]) for t in held)

    released = {t: i for i, s in enumerate(program.steps) for t in s.release}
    for i, (step, memory) in enumerate(zip(program.steps, profile.steps, strict=True)):
        live = [b for b in bufs if b.first <= i <= b.last]
        objects = sum(array_overhead_bytes(shapes[t]) for j, t in made
                      if j <= i and released.get(t, i) >= i)
        outputs_made = sum(tensor_bytes(shapes[t]) for j, t in made if j <= i and t in held)
        assert memory.activation_bytes == objects + outputs_made + sum(
            unaligned[b.key] for b in live if b.key not in workspace_of)
        taps = (step.spec.kh * step.spec.kw * TAP_TABLE_BYTES
                if step.kind == "conv" and step.algorithm.tabulates_taps else 0)
        assert memory.workspace_bytes == overhead + taps + sum(
            unaligned[b.key] for b in live if b.key in workspace_of)
