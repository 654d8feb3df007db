"""Hostile and malformed ONNX files: each is refused with one short NetworkError that names the
problem, in bounded time and memory, and nothing hostile ever becomes a network; valid corner
cases (old opsets, negative axes) still import and compute what ONNX says."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper

from convplan.selector.network import NetworkError
from convplan.selector.onnx import load_onnx
from convplan.selector.onnx.reading import MAX_SCANNED_FIELDS, refuse_external_data
from convplan.selector.runner import run_network
from tests.support import ROOT
from tests.support import hostile_onnx as h
from tests.support.hostile_onnx import F, const, model, plus_constant, relu_then
from tests.support.processes import run_convplan

MIB = 1 << 20


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def as_bytes(m: onnx.ModelProto | bytes) -> bytes:
    return m if isinstance(m, bytes) else m.SerializeToString()


def refused(m: onnx.ModelProto | bytes, match: str, max_peak: int = 64 * MIB, **limits) -> str:
    """Load ``m``: it must raise NetworkError (any other exception fails the test) matching
    ``match``, short, one line, without a heap address, within 10 s and ``max_peak`` bytes."""
    data = as_bytes(m)
    tracemalloc.start()
    try:
        with deadline(10), pytest.raises(NetworkError) as caught:
            load_onnx(data, **limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert re.search(match, message), message
    assert len(message) < 300, message
    assert "0x" not in message and "\n" not in message, message
    assert peak < max_peak, f"{peak} bytes traced"
    return message


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


W = const("w", np.ones((4, 4, 3, 3), F))


def _raw_attribute(name: str, kind: int, **fields) -> AttributeProto:
    attr = AttributeProto(name=name, type=kind)
    for key, value in fields.items():
        setattr(attr, key, value)
    return attr


def _with_attribute(n: onnx.NodeProto, attr: AttributeProto) -> onnx.NodeProto:
    n.attribute.append(attr)
    return n


def _rank0(op: str) -> onnx.ModelProto:
    """x (1,1,1,1) reshaped to a rank-0 tensor, then ``op``."""
    return model([node("Reshape", ["x", "empty"], ["z"]), node(op, ["z"])],
                 inits=[const("empty", np.zeros(0, np.int64))], x_shape=(1, 1, 1, 1))


# -- every hostile case: (builder, what the message must say, load keywords) ----------------------
CASES = [
    # control flow: never run, refused by name
    pytest.param(h.loop_forever, r"'_?.*' \(Loop\).*control flow", {}, id="loop-forever"),
    pytest.param(h.loop_growth, r"\(Loop\).*control flow", {}, id="loop-growth"),
    pytest.param(h.scan_growth, r"\(Scan\).*control flow", {}, id="scan-growth"),
    pytest.param(h.loop_without_inputs, r"\(Loop\).*control flow", {}, id="loop-no-inputs"),
    pytest.param(h.if_on_activation, r"\(If\).*control flow", {}, id="if"),
    # bombs: the size is predicted and refused before anything is allocated
    pytest.param(h.tile_bomb, r"\(Tile\).*1073741824 elements", {}, id="tile-bomb"),
    pytest.param(h.constant_of_shape_bomb, r"\(ConstantOfShape\).*at most", {},
                 id="constantofshape-bomb"),
    pytest.param(h.expand_bomb, r"\(Expand\).*at most", {}, id="expand-bomb"),
    pytest.param(h.range_bomb, r"\(Range\).*1000000000 elements", {}, id="range-bomb"),
    # an operator convplan neither runs nor folds is named before any constant is built
    pytest.param(h.cos_of_big_constant, r"does not support: Cos$", {}, id="cos-of-bomb"),
    pytest.param(h.cos_of_small_constant, r"does not support: Cos", {}, id="cos-not-folded"),
    pytest.param(h.doubling_concat, r"\(Concat\).*the weight limit", {"max_weight_bytes": MIB},
                 id="doubling-concat"),
    pytest.param(h.gather_bomb, r"\(ConstantOfShape\).*at most", {}, id="gather-bomb"),
    pytest.param(h.huge_declared_initializer, r"initializer 'w'.*at most", {},
                 id="huge-declared-initializer"),
    pytest.param(h.lying_initializer, r"initializer 'w' declares shape \[1000\] but holds 4 "
                 "bytes", {}, id="lying-initializer"),
    pytest.param(h.huge_input, r"input: 'x'.*at most", {}, id="huge-input"),
    pytest.param(h.huge_padding, r"\(conv\).*at most", {}, id="huge-padding"),
    pytest.param(lambda: h.many_constants(12, 1 << 18), r"the weight limit",
                 {"max_weight_bytes": 8 * MIB}, id="many-constants"),
    pytest.param(lambda: h.many_constants(1, 1 << 20), r"one tensor may have at most 1048576",
                 {"max_tensor_bytes": MIB}, id="tensor-limit-keyword"),
    pytest.param(lambda: relu_then(node("Add", ["r", "w"]),
                                   inits=[const("w", np.ones((1, 4, 8, 8), F))]),
                 r"initializer 'w'.*the weight limit", {"max_weight_bytes": 1000},
                 id="initializer-over-weight-limit"),
    pytest.param(lambda: relu_then(node("Concat", ["r", "r"], axis=1)),
                 r"'y' of shape \[1, 8, 8, 8\] would take 2048 bytes",
                 {"max_tensor_bytes": 1500}, id="activation-limit-keyword"),
    # sparse tensors and external data, anywhere
    pytest.param(lambda: h.sparse_constant("/etc/hostname"), r"sparse_value.*sparse tensor", {},
                 id="sparse-constant"),
    pytest.param(lambda: h.sparse_in_if_branch("/etc/hostname"), r"sparse tensor", {},
                 id="sparse-in-if-branch"),
    pytest.param(h.sparse_initializer, r"initializer 's' is a sparse tensor", {},
                 id="sparse-initializer"),
    pytest.param(h.sparse_tensors_attribute, r"'extra'.*sparse tensor", {},
                 id="sparse-tensors-attribute"),
    pytest.param(lambda: h.external_initializer("/etc/hostname"), r"'w' refers to an external",
                 {}, id="external-initializer"),
    pytest.param(lambda: h.external_constant_value("/etc/hostname"), r"external data", {},
                 id="external-constant-value"),
    pytest.param(lambda: h.external_in_tensors_attribute("/etc/hostname"), r"external data",
                 {}, id="external-tensors-attribute"),
    pytest.param(lambda: h.external_in_nested_branch("/etc/hostname"), r"external data", {},
                 id="external-in-nested-branch"),
    # the wire format, as the scan for initializer payloads meets it
    pytest.param(h.truncated_in_a_payload, r"^not a valid ONNX file \(truncated\)$", {},
                 id="truncated-in-a-payload"),
    pytest.param(h.length_past_the_end, r"^not a valid ONNX file \(truncated\)$", {},
                 id="length-past-the-end"),
    pytest.param(h.initializer_length_past_its_graph, r"^not a valid ONNX file \(truncated\)$",
                 {}, id="initializer-past-its-graph"),
    pytest.param(h.varint_overflow, r"^not a valid ONNX file \(a varint longer than 10 bytes\)$",
                 {}, id="varint-overflow"),
    pytest.param(h.raw_data_twice, r"^not a valid ONNX file \(initializer 0 holds raw_data "
                 r"twice\)$", {}, id="raw-data-twice"),
    pytest.param(h.group_field, r"^not a valid ONNX file \(a field of wire type 3", {},
                 id="group-field"),
    pytest.param(h.raw_data_in_a_branch, r"\(If\).*control flow", {}, id="raw-data-in-a-branch"),
    pytest.param(lambda: h.many_tiny_fields(MAX_SCANNED_FIELDS), r"^not a valid ONNX file "
                 r"\(more than 1048576 fields", {}, id="a-million-tiny-fields"),
    pytest.param(lambda: h.deep_nesting_bytes(900), r"nested too deeply", {}, id="nesting-900"),
    pytest.param(lambda: h.deep_nesting_bytes(10_000), r"nested too deeply", {},
                 id="nesting-10000"),
    # malformed nodes, checked against the operator's schema
    pytest.param(lambda: relu_then(node("Concat", ["r", "r"])),
                 r"\(Concat\): the required attribute 'axis' is missing", {},
                 id="concat-without-axis"),
    pytest.param(lambda: relu_then(node("LRN", ["r"])), r"\(LRN\).*'size' is missing", {},
                 id="lrn-without-size"),
    pytest.param(lambda: relu_then(node("Conv", ["r"])), r"\(Conv\) has 1 input.*takes 2-3",
                 {}, id="conv-one-input"),
    pytest.param(lambda: relu_then(node("Flatten", ["r"], ["f"]), node("Gemm", ["f", "b"]),
                                   inits=[const("b", np.ones(256, F))]),
                 r"Gemm's B must be 2-D", {}, id="gemm-1d-b"),
    pytest.param(lambda: relu_then(node("Split", ["r"], ["a", "b"], axis=4),
                                   node("Add", ["a", "b"])),
                 r"\(Split\): axis 4 is out of range", {}, id="split-axis-out-of-range"),
    pytest.param(lambda: relu_then(node("Split", ["r"], []), node("Relu", ["r"])),
                 r"\(Split\) has no output", {}, id="split-no-outputs"),
    pytest.param(lambda: relu_then(node("Split", ["r"], ["a", "b"], axis=1, split=[3, 3]),
                                   node("Add", ["a", "b"]), opset=11),
                 r"sizes \[3, 3\] do not split a dimension of 4", {}, id="split-bad-sizes"),
    pytest.param(lambda: _rank0("Squeeze"), r"\(Squeeze\): Squeeze of a rank-0", {},
                 id="squeeze-rank0"),
    pytest.param(lambda: _rank0("Softmax"), r"\(Softmax\): Softmax of a rank-0", {},
                 id="softmax-rank0"),
    pytest.param(lambda: relu_then(node("Reshape", ["r"]), opset=4),
                 r"\(Reshape\).*needs its shape attribute", {}, id="reshape-opset4-no-shape"),
    pytest.param(lambda: relu_then(node("Reshape", ["r", "s"], shape=[1, -1]),
                                   inits=[const("s", [1, -1], np.int64)]),
                 r"\(Reshape\): Reshape \(opset 15\) has no attribute 'shape'", {},
                 id="reshape-shape-attribute-at-opset15"),
    pytest.param(lambda: relu_then(node("Slice", ["r"], starts=[0], ends=[2]), opset=13),
                 r"\(Slice\) has 1 input", {}, id="slice-attributes-at-opset13"),
    pytest.param(lambda: relu_then(node("Slice", ["r"], starts=[0]), opset=9),
                 r"'ends' is missing", {}, id="slice-opset9-without-ends"),
    pytest.param(lambda: relu_then(node("MaxPool", ["r"])),
                 r"\(MaxPool\).*'kernel_shape' is missing", {}, id="maxpool-without-kernel"),
    pytest.param(lambda: model([node("Conv", ["x", "w"], group="2")], inits=[W]),
                 r"attribute 'group' must be INT, not STRING", {}, id="string-for-int"),
    pytest.param(lambda: model([_with_attribute(node("Conv", ["x", "w"]),
                                                _raw_attribute("group", AttributeProto.UNDEFINED,
                                                               i=1))], inits=[W]),
                 r"attribute 'group' must be INT, not UNDEFINED", {}, id="untyped-attribute"),
    pytest.param(lambda: relu_then(node("Relu", ["r"], foo=1)), r"has no attribute 'foo'", {},
                 id="unknown-attribute"),
    pytest.param(lambda: model([_with_attribute(_with_attribute(
        node("Conv", ["x", "w"]), _raw_attribute("group", AttributeProto.INT, i=1)),
        _raw_attribute("group", AttributeProto.INT, i=1))], inits=[W]),
                 r"'group' is given twice", {}, id="attribute-twice"),
    pytest.param(lambda: relu_then(node("Relu", ["r", "r"])), r"has 2 input", {},
                 id="too-many-inputs"),
    pytest.param(lambda: relu_then(node("Conv", ["r", ""])), r"input 1 \(W\) is required", {},
                 id="empty-required-input"),
    pytest.param(lambda: model([node("HardSwish", ["x"])], opset=9),
                 r"HardSwish is not an operator of ONNX opset 9", {}, id="op-from-later-opset"),
    pytest.param(lambda: model([node("Relu", ["x"])], opset=10_000), r"opset 10000", {},
                 id="opset-too-new"),
    # strictness: what would silently compute something else is refused
    pytest.param(lambda: model([node("Conv", ["x", "w"], auto_pad="JUNK")], inits=[W]),
                 r"auto_pad 'JUNK' is not one of", {}, id="auto-pad-junk"),
    pytest.param(lambda: model([node("Conv", ["x", "w"], kernel_shape=[5, 5])], inits=[W]),
                 r"kernel_shape \[5, 5\] contradicts the weights of shape \[4, 4, 3, 3\]", {},
                 id="kernel-shape-contradicts-weights"),
    pytest.param(lambda: model([node("Conv", ["x", "w"], strides=[0, 1])], inits=[W]),
                 r"strides \[0, 1\] must be positive", {}, id="zero-stride"),
    pytest.param(lambda: model([node("Conv", ["x", "w"], pads=[1, 1])], inits=[W]),
                 r"pads \[1, 1\] are not the four", {}, id="two-pads"),
    pytest.param(lambda: model([node("Conv", ["x", "w"])],
                               inits=[const("w", np.ones((4, 3, 3, 3), F))]),
                 r"4 channels does not fit weights of shape \[4, 3, 3, 3\]", {},
                 id="conv-channel-mismatch"),
    pytest.param(lambda: relu_then(node("Concat", ["r", "r"], axis=4)),
                 r"\(Concat\): axis 4 is out of range for a rank-4", {}, id="concat-axis"),
    pytest.param(lambda: relu_then(node("Concat", ["r", "r"], axis=-5)),
                 r"axis -5 is out of range", {}, id="concat-negative-axis"),
    pytest.param(lambda: relu_then(node("Softmax", ["r"], axis=4)),
                 r"\(Softmax\): axis 4 is out of range", {}, id="softmax-axis"),
    pytest.param(lambda: relu_then(node("Softmax", ["r"], axis=7), opset=11),
                 r"\(Softmax\): axis 7 is out of range", {}, id="softmax-axis-opset11"),
    pytest.param(lambda: relu_then(node("Flatten", ["r"], axis=5)),
                 r"\(Flatten\): axis 5 is out of range", {}, id="flatten-axis"),
    pytest.param(lambda: relu_then(node("Squeeze", ["r", "ax"]),
                                   inits=[const("ax", [7], np.int64)]),
                 r"\(Squeeze\): axis 7 is out of range for a rank-4", {}, id="squeeze-axis"),
    pytest.param(lambda: relu_then(node("Squeeze", ["r", "ax"]),
                                   inits=[const("ax", [1], np.int64)]),
                 r"axes \[1\] of shape \[1, 4, 8, 8\] are not all 1", {}, id="squeeze-not-1"),
    pytest.param(lambda: relu_then(node("Transpose", ["r"], perm=[0, 1, 2, 5])),
                 r"perm \[0, 1, 2, 5\] is not a permutation", {}, id="transpose-perm"),
    pytest.param(lambda: relu_then(node("Transpose", ["r"], perm=[0, 1, 2])),
                 r"perm \[0, 1, 2\] is not a permutation of the 4 axes", {},
                 id="transpose-short-perm"),
    pytest.param(lambda: plus_constant([node("Gather", ["k", "i"], ["c"], axis=3)], "c",
                                       inits=[const("k", np.ones(4, F)),
                                              const("i", [0], np.int64)]),
                 r"\(Gather\): axis 3 is out of range", {}, id="gather-axis"),
    pytest.param(lambda: plus_constant([node("Gather", ["k", "i"], ["c"])], "c",
                                       inits=[const("k", np.ones(4, F)),
                                              const("i", [4], np.int64)]),
                 r"index is out of range", {}, id="gather-index"),
    pytest.param(lambda: plus_constant([node("Div", ["a", "b"], ["c"])], "c",
                                       inits=[const("a", [4], np.int64),
                                              const("b", [0], np.int64)]),
                 r"integer division by zero", {}, id="int-division-by-zero"),
    pytest.param(lambda: plus_constant([node("Range", ["a", "b", "d"], ["c"])], "c",
                                       inits=[const("a", 0, np.int64), const("b", 5, np.int64),
                                              const("d", 0, np.int64)]),
                 r"delta is 0", {}, id="range-zero-delta"),
    pytest.param(lambda: plus_constant([node("Add", ["a", "b"], ["c"])], "c",
                                       inits=[const("a", [1.0], F), const("b", [1], np.int64)]),
                 r"operands of different types", {}, id="mixed-types"),
    pytest.param(lambda: relu_then(node("Reshape", ["r", "s"]),
                                   inits=[const("s", [-1, -1], np.int64)]),
                 r"more than one -1", {}, id="reshape-two-minus-ones"),
    pytest.param(lambda: relu_then(node("Reshape", ["r", "s"]),
                                   inits=[const("s", [3, -1], np.int64)]),
                 r"cannot infer the -1", {}, id="reshape-indivisible"),
    pytest.param(lambda: relu_then(node("BatchNormalization", ["r", "g", "g", "g", "g"],
                                        training_mode=1),
                                   inits=[const("g", np.ones(4, F))]),
                 r"training_mode=1 is not supported", {}, id="batchnorm-training"),
    pytest.param(lambda: relu_then(node("BatchNormalization", ["r", "g", "g", "g", "g"]),
                                   inits=[const("g", np.ones(3, F))]),
                 r"statistics must have shape \[4\]", {}, id="batchnorm-wrong-stats"),
    pytest.param(lambda: relu_then(node("Dropout", ["r"], ["d", "mask"]),
                                   node("Add", ["d", "mask"])),
                 r"reads 'mask', the mask of a Dropout", {}, id="dropout-mask-read"),
    pytest.param(lambda: relu_then(node("Add", ["r", "w"], broadcast=1, axis=1),
                                   inits=[const("w", np.ones(4, F))], opset=6),
                 r"broadcasting with an axis attribute", {}, id="old-broadcast-axis"),
    pytest.param(lambda: model([node("Relu", ["x"], ["x"]), node("Relu", ["x"])]),
                 r"tensor 'x' is produced twice", {}, id="output-overwrites-input"),
    pytest.param(lambda: model([node("Relu", ["a"]), node("Relu", ["x"], ["a"])]),
                 r"reads 'a', which no earlier node produces", {}, id="not-topological"),
    pytest.param(lambda: relu_then(node("Split", ["r"], ["a", "a"], axis=1),
                                   node("Relu", ["a"])),
                 r"names an output twice", {}, id="split-same-output-twice"),
    pytest.param(lambda: model([node("Relu", ["x"], ["z"])]), r"output 'y' is not produced",
                 {}, id="output-not-produced"),
    pytest.param(lambda: plus_constant([node("Constant", [], ["c"], value_string="hello")], "c"),
                 r"value_string Constant is not supported", {}, id="string-constant"),
    pytest.param(lambda: plus_constant([node("Cast", ["k"], ["c"], to=TensorProto.STRING)], "c",
                                       inits=[const("k", np.ones(2, F))]),
                 r"Cast to STRING is not supported", {}, id="cast-to-string"),
    pytest.param(lambda: plus_constant([], "s", inits=[helper.make_tensor(
        "s", TensorProto.BFLOAT16, [2], [1, 2])]), r"element type BFLOAT16", {},
                 id="bfloat16-initializer"),
    pytest.param(lambda: plus_constant([], "s", inits=[helper.make_tensor(
        "s", TensorProto.STRING, [1], [b"a"])]), r"element type STRING", {},
                 id="string-initializer"),
    pytest.param(lambda: relu_then(node("Relu", ["r"], ["z"]), node("Add", ["z", "k"]),
                                   inits=[const("k", np.ones(4, F)), const("k", np.ones(4, F))]),
                 r"initializer 'k' is given twice", {}, id="initializer-twice"),
    # messages stay short: nothing huge is echoed
    pytest.param(lambda: model([node("Conv", ["x", "w"], pads=list(range(150_000)))],
                               inits=[W]),
                 r"pads \[0, 1, 2, .*\.\.\. are not the four", {}, id="600kb-attribute"),
    pytest.param(lambda: model([helper.make_node("Relu", ["x"], ["y"], name="n" * 600_000,
                                                 foo=1)]),
                 r"'nnnn.*\.\.\.' \(Relu\)", {}, id="600kb-node-name"),
    pytest.param(lambda: model([node("Q" * 600_000, ["x"])]), r"does not support: QQQ.*\.\.\.$",
                 {}, id="600kb-op-type"),
    pytest.param(lambda: relu_then(node("Reshape", ["r", "s"]),
                                   inits=[const("s", np.full(150_000, 2, np.int64))]),
                 r"\(Reshape\): the shape has 150000 values", {}, id="600kb-shape"),
]


@pytest.mark.parametrize(("build", "match", "limits"), CASES)
def test_hostile_file_is_refused_cleanly(build, match: str, limits: dict) -> None:
    refused(build(), match, **limits)


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | Path):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)     # audit hooks cannot be removed; this one records only when asked


@pytest.mark.parametrize("builder", [h.sparse_constant, h.sparse_in_if_branch,
                                     h.external_initializer, h.external_constant_value,
                                     h.external_in_nested_branch],
                         ids=lambda b: b.__name__)
def test_no_file_existence_oracle(builder, tmp_path: Path) -> None:
    """A data file that exists, one that does not, a directory: the same message each time,
    and nothing under tmp_path is opened."""
    global _OPENED
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 4096)
    _OPENED = []
    try:
        messages = {refused(builder(str(where)), r"sparse tensor|external data")
                    for where in (secret, tmp_path / "missing.bin", tmp_path)}
        opened = [p for p in _OPENED if p.startswith(str(tmp_path))]
    finally:
        _OPENED = None
    assert len(messages) == 1, messages
    assert not opened, opened


def test_a_device_or_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo, tmp_path):
        with deadline(5), pytest.raises(NetworkError, match="not a regular file"):
            load_onnx(path)


def test_truncated_at_every_byte_is_refused_cleanly() -> None:
    """A valid model's file cut after any number of bytes: refused with one clear error (never
    another exception, a crash or a read past the end), or, cut at a field boundary that leaves
    a whole model, imported."""
    data = h.conv_with_weight().SerializeToString()
    messages = set()
    with deadline(30):
        for end in range(len(data)):
            try:
                load_onnx(data[:end])
            except NetworkError as error:
                messages.add(re.sub(r"\d+", "N", str(error))[:60])
    assert "not a valid ONNX file (truncated)" in messages, messages
    assert all(m.startswith(("not a valid ONNX file", "the model", "node", "input",
                             "initializer")) for m in messages), messages


def test_many_fields_within_the_scan_budget_import() -> None:
    """Half a million fields more than a model needs (ir_version repeated) still import."""
    network = load_onnx(h.many_tiny_fields(500_000))
    assert [n.op for n in network.nodes] == ["relu"]


def test_a_graph_given_twice_is_merged_as_protobuf_merges_it(tmp_path: Path) -> None:
    """Two graph fields (protobuf merges them): the initializers of both are read, numbered on,
    from bytes and from a file alike."""
    data, w = h.graph_given_twice()
    path = tmp_path / "twice.onnx"
    path.write_bytes(data)
    for source in (data, path):
        network = load_onnx(source)
        (conv,) = network.nodes
        np.testing.assert_array_equal(conv.weights["weight"], w)
        np.testing.assert_array_equal(conv.weights["bias"], np.arange(4, dtype=np.float32))


def test_deep_nesting_in_memory_is_walked_without_recursion() -> None:
    """10,000 subgraphs deep (only possible in memory): the external tensor at the bottom is
    found, without RecursionError."""
    m = h.deep_nesting_in_memory(10_000, "/etc/hostname")
    with deadline(20), pytest.raises(NetworkError, match="'deep' refers to an external"):
        refuse_external_data(m)


def test_the_loop_that_never_ends_is_refused_in_a_fresh_process(tmp_path: Path) -> None:
    path = tmp_path / "loop.onnx"
    path.write_bytes(as_bytes(h.loop_forever()))
    assert path.stat().st_size < 400
    code = ("import sys\nfrom convplan.selector.onnx import load_onnx\n"
            "from convplan.selector.network import NetworkError\n"
            "try:\n    load_onnx(sys.argv[1])\nexcept NetworkError as e:\n"
            "    print(e)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 3, result.stderr
    assert "control flow (Loop)" in result.stdout


@pytest.mark.parametrize("builder", [h.loop_forever, lambda: h.tile_bomb(1 << 50),
                                     lambda: h.sparse_constant("/etc/hostname"),
                                     lambda: relu_then(node("Concat", ["r", "r"]))],
                         ids=["loop", "tile-bomb", "sparse", "concat-no-axis"])
def test_the_cli_refuses_with_one_line_and_status_2(builder, tmp_path: Path) -> None:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(as_bytes(builder()))
    exe = ROOT / ".venv" / "bin" / "convplan"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "convplan"]
    result = subprocess.run([*command, "plan", str(path), "--no-profile"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "CONVPLAN_DB": str(tmp_path / "db.sqlite")})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr
    assert "0x" not in lines[0]


@pytest.mark.parametrize("builder", [h.tile_bomb, h.constant_of_shape_bomb,
                                     h.cos_of_big_constant],
                         ids=["tile-4GiB", "constantofshape-4GiB", "cos-of-2GiB"])
def test_the_cli_refuses_a_bomb_before_building_it(builder, tmp_path: Path) -> None:
    """Through the CLI, whose limits come from this machine's memory: the process stays small
    (its own peak RSS), however big the constant the file describes."""
    path = tmp_path / "bomb.onnx"
    path.write_bytes(as_bytes(builder()))
    status, stderr, peak = run_convplan(["plan", str(path), "--no-profile"], cwd=tmp_path,
                                        env={"CONVPLAN_DB": str(tmp_path / "db.sqlite")})
    assert status == 2 and "Traceback" not in stderr, stderr
    assert 0 < peak < 512 * MIB, f"peak RSS {peak} bytes"


# -- valid corner cases keep working and compute what ONNX says ---------------------------------
def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    network = load_onnx(as_bytes(m))
    (y,) = run_network(network, {"x": x}, threads=1).outputs.values()
    return y


X = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(F)


@pytest.mark.parametrize(("nodes", "inits", "opset", "expected"), [
    ([node("Concat", ["r", "r"], axis=-3)], [], 15, lambda r: np.concatenate([r, r], 1)),
    ([node("Softmax", ["r"], axis=-1)], [], 15,
     lambda r: np.exp(r) / np.exp(r).sum(-1, keepdims=True)),
    ([node("Flatten", ["r"], axis=-2)], [], 15, lambda r: r.reshape(4, 64)),
    ([node("Transpose", ["r"], perm=[0, 2, 3, 1])], [], 15, lambda r: r.transpose(0, 2, 3, 1)),
    ([node("Split", ["r"], ["a", "b"], axis=-3), node("Sub", ["a", "b"])], [], 15,
     lambda r: r[:, :2] - r[:, 2:]),
    ([node("Unsqueeze", ["r", "ax"], ["u"]), node("Squeeze", ["u", "ax"])],
     [const("ax", [-1], np.int64)], 15, lambda r: r),
    ([node("Reshape", ["r"], shape=[1, -1])], [], 4, lambda r: r.reshape(1, -1)),
    ([node("Slice", ["r"], starts=[1, -3], ends=[3, 100], axes=[1, -1])], [], 9,
     lambda r: r[:, 1:3, :, -3:]),
    ([node("Slice", ["r", "s", "e", "a", "st"])],
     [const("s", [-1], np.int64), const("e", [-100], np.int64), const("a", [-2], np.int64),
      const("st", [-2], np.int64)], 13, lambda r: r[:, :, ::-2]),
    # shape arithmetic folded at import: Reshape to (N, C*H*W) computed from Shape and Gather
    ([node("Shape", ["r"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0),
      node("Unsqueeze", ["n", "ax0"], ["n1"]), node("Concat", ["n1", "minus1"], ["t"], axis=0),
      node("Reshape", ["r", "t"])],
     [const("zero", 0, np.int64), const("ax0", [0], np.int64),
      const("minus1", [-1], np.int64)], 13, lambda r: r.reshape(1, -1)),
    # a constant made by Range, Tile, Expand, Where and arithmetic, then added
    ([node("Range", ["a", "b", "d"], ["rg"]), node("Tile", ["rg", "two"], ["tl"]),
      node("Expand", ["tl", "shape"], ["ex"]), node("Less", ["ex", "three"], ["lt"]),
      node("Where", ["lt", "ex", "three"], ["wh"]), node("Cast", ["wh"], ["cf"], to=1),
      node("Div", ["cf", "half"], ["k"]), node("Add", ["r", "k"])],
     [const("a", 0, np.int64), const("b", 4, np.int64), const("d", 1, np.int64),
      const("two", [2], np.int64), const("shape", [8, 1], np.int64), const("three", 3, np.int64),
      const("half", 0.5, F)], 15,
     lambda r: r + np.tile(np.minimum(np.arange(4), 3), 2).astype(F) / 0.5),
], ids=["concat-axis-3", "softmax-axis-1", "flatten-axis-2", "transpose", "split-axis-3",
        "unsqueeze-squeeze-1", "reshape-opset4", "slice-opset9", "slice-negative-step",
        "shape-arithmetic", "folded-range-tile-expand-where"])
def test_valid_corner_cases_compute_what_onnx_says(nodes, inits, opset, expected) -> None:
    m = relu_then(*nodes, inits=inits, opset=opset)
    r = np.maximum(X, 0)
    np.testing.assert_allclose(_run(m, X), expected(r), rtol=1e-5, atol=1e-6)


# -- random damage to a valid model: refused cleanly, or imported and computing what
# onnxruntime computes --------------------------------------------------------------------------
def _victim() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [const("w", rng.standard_normal((6, 4, 3, 3)).astype(F)),
             const("b", rng.standard_normal(6).astype(F)),
             const("g", rng.uniform(0.5, 2, 6).astype(F)), const("z", np.zeros(6, F)),
             const("v", np.ones(6, F)), const("fc", rng.standard_normal((5, 6)).astype(F)),
             const("shape", [1, -1], np.int64)]
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
             node("BatchNormalization", ["c", "g", "z", "z", "v"], ["bn"]),
             node("Relu", ["bn"], ["r"]),
             node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
             node("Split", ["p"], ["s0", "s1"], axis=1),
             node("Concat", ["s1", "s0"], ["cat"], axis=1),
             node("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Reshape", ["ap", "shape"], ["flat"]),
             node("Gemm", ["flat", "fc"], ["gm"], transB=1),
             node("Softmax", ["gm"], ["y"], axis=1)]
    return model(nodes, inits, opset=13, x_shape=(1, 4, 8, 8))


_VALUES = [-5, -1, 0, 1, 2, 3, 1 << 40, "SAME_UPPER", "JUNK", 0.5, [], [0], [1, 1], [2, 2],
           [1, 1, 1, 1], [-1, 0, 2, 1], [0, 1, 2, 3], [1 << 31] * 4]


def _damage(m: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for _ in range(rng.randint(1, 2)):
        victim = rng.choice(list(out.graph.node))
        action = rng.choice(["set", "set", "delete", "drop-input", "add-input", "op"])
        if action == "set":
            names = [a.name for a in victim.attribute] + ["axis", "pads", "kernel_shape",
                                                          "strides", "auto_pad", "group"]
            name = rng.choice(names)
            kept = [a for a in victim.attribute if a.name != name]
            del victim.attribute[:]
            victim.attribute.extend(kept)
            value = rng.choice(_VALUES)
            kind = AttributeProto.INTS if value == [] else None
            victim.attribute.append(helper.make_attribute(name, value, attr_type=kind))
        elif action == "delete" and len(victim.attribute):
            del victim.attribute[rng.randrange(len(victim.attribute))]
        elif action == "drop-input" and len(victim.input):
            del victim.input[rng.randrange(len(victim.input))]
        elif action == "add-input":
            victim.input.append(rng.choice(["x", "w", "b", "shape", "r", ""]))
        elif action == "op":
            victim.op_type = rng.choice(["Conv", "MaxPool", "Concat", "Split", "Gemm",
                                         "Softmax", "Flatten", "Reshape", "Relu", "Squeeze",
                                         "Transpose", "BatchNormalization", "Add"])
    return out


def test_damaged_models_are_refused_or_match_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    rng = random.Random(7)
    x = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(F)
    base = _victim()
    np.testing.assert_allclose(_run(base, x), _reference(ort, base, x), rtol=1e-4, atol=1e-6)
    imported = compared = 0
    for _ in range(150):
        damaged = _damage(base, rng)
        data = damaged.SerializeToString()
        try:
            with deadline(10):
                network = load_onnx(data)
        except NetworkError as error:
            message = str(error)
            assert len(message) < 300 and "0x" not in message, message
            continue
        imported += 1
        try:
            expected = _reference(ort, damaged, x)
        except Exception:       # onnxruntime refuses a model convplan accepts: look at it
            expected = None
        (y,) = run_network(network, {"x": x}, threads=1).outputs.values()
        if expected is not None:
            compared += 1
            np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=1e-4, atol=1e-6)
    assert imported >= 5 and compared >= 5, (imported, compared)


def _reference(ort, m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(m.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]
