"""Generators of hostile ONNX files: malformed nodes, constant-folding bombs, subgraphs,
sparse tensors and external data in every place a tensor can hide. Each returns a ModelProto
(or the file's bytes, where protobuf itself could not build it)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

F = np.float32
GIB = 1 << 30


def const(name: str, value, dtype=None) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def model(nodes, inits=(), opset: int = 15, x_shape=(1, 4, 8, 8), outputs=("y",),
          **extra) -> onnx.ModelProto:
    """A graph with float input x of ``x_shape`` and float outputs, not checked (hostile files
    are not valid ONNX)."""
    graph = helper.make_graph(
        list(nodes), "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        list(inits), **extra)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def relu_then(*nodes, **kwargs) -> onnx.ModelProto:
    """x -> Relu -> r, then the given nodes (which should produce y)."""
    return model([helper.make_node("Relu", ["x"], ["r"]), *nodes], **kwargs)


def plus_constant(nodes, const_name: str, inits=(), **kwargs) -> onnx.ModelProto:
    """The given nodes compute a constant ``const_name`` that is added to relu(x)."""
    return relu_then(*nodes, helper.make_node("Add", ["r", const_name], ["y"]),
                     inits=inits, **kwargs)


# -- control flow ------------------------------------------------------------------------------
def loop_forever() -> onnx.ModelProto:
    """A Loop whose condition is always true and with no trip count: never ends if run."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
    return plus_constant(
        [helper.make_node("Constant", [], ["t"], value=const("t", True)),
         helper.make_node("Loop", ["", "t"], [], body=body),
         helper.make_node("Constant", [], ["c"], value_float=1.0)], "c")


def loop_growth() -> onnx.ModelProto:
    """A Loop that doubles a tensor 40 times: 2**40 elements if run."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Concat", ["v_in", "v_in"], ["v_out"], axis=0)], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    return plus_constant(
        [helper.make_node("Loop", ["n", "t", "v"], ["c"], body=body)], "c",
        inits=[const("n", 40, np.int64), const("t", True), const("v", [1.0], F)])


def scan_growth() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Tile", ["s_in", "two"], ["s_out"])], "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None)],
        [const("two", [2], np.int64)])
    return plus_constant(
        [helper.make_node("Scan", ["s", "seq"], ["c"], body=body, num_scan_inputs=1)], "c",
        inits=[const("s", [1.0], F), const("seq", np.zeros(40, F))], opset=11)


def loop_without_inputs() -> onnx.ModelProto:
    return relu_then(helper.make_node("Loop", [], ["y"]))


def if_on_activation() -> onnx.ModelProto:
    branch = helper.make_graph([helper.make_node("Constant", [], ["o"], value_float=1.0)], "b",
                               [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [])])
    return relu_then(helper.make_node("If", ["x"], ["y"], then_branch=branch,
                                      else_branch=branch))


# -- constant-folding bombs ----------------------------------------------------------------------
def tile_bomb(repeats: int = 1 << 30) -> onnx.ModelProto:
    """Tile of one float by 2**30: 4 GiB from a file of a few hundred bytes."""
    return plus_constant([helper.make_node("Tile", ["one", "reps"], ["c"])], "c",
                         inits=[const("one", [1.0], F), const("reps", [repeats], np.int64)])


def constant_of_shape_bomb() -> onnx.ModelProto:
    return plus_constant([helper.make_node("ConstantOfShape", ["shape"], ["c"],
                                           value=const("v", [1.0], F))], "c",
                         inits=[const("shape", [1 << 15, 1 << 15], np.int64)])


def expand_bomb() -> onnx.ModelProto:
    return plus_constant([helper.make_node("Expand", ["one", "shape"], ["c"])], "c",
                         inits=[const("one", [1.0], F),
                                const("shape", [1 << 16, 1 << 16], np.int64)])


def range_bomb() -> onnx.ModelProto:
    return plus_constant([helper.make_node("Range", ["a", "b", "d"], ["c"])], "c",
                         inits=[const("a", 0.0, F), const("b", 1e9, F), const("d", 1.0, F)])


def cos_of_big_constant() -> onnx.ModelProto:
    """Cos (not a foldable operator) of a 2 GiB ConstantOfShape."""
    return plus_constant([helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                           value=const("v", [1.0], F)),
                          helper.make_node("Cos", ["big"], ["c"])], "c",
                         inits=[const("shape", [1 << 29], np.int64)])


def cos_of_small_constant() -> onnx.ModelProto:
    return plus_constant([helper.make_node("Cos", ["k"], ["c"])], "c",
                         inits=[const("k", np.ones(4, F))])


def doubling_concat(times: int = 40) -> onnx.ModelProto:
    """c0 = [1.0]; c(i+1) = Concat(ci, ci): each step doubles, 2**times elements at the end."""
    nodes = [helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0)
             for i in range(times)]
    return plus_constant(nodes, f"c{times}", inits=[const("c0", [1.0], F)])


def gather_bomb() -> onnx.ModelProto:
    """Gather with (1<<15, 1<<15) indices made by ConstantOfShape: the indices are the bomb."""
    return plus_constant([helper.make_node("ConstantOfShape", ["shape"], ["idx"],
                                           value=const("v", [0], np.int64)),
                          helper.make_node("Gather", ["k", "idx"], ["c"])], "c",
                         inits=[const("shape", [1 << 15, 1 << 15], np.int64),
                                const("k", [1.0, 2.0], F)])


def huge_declared_initializer() -> onnx.ModelProto:
    """An initializer that claims 2**40 floats but holds none."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    return plus_constant([], "w", inits=[tensor])


def lying_initializer() -> onnx.ModelProto:
    """An initializer that declares 1000 floats and holds 4 bytes."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1000],
                         raw_data=b"\x00\x00\x80?")
    return plus_constant([], "w", inits=[tensor])


def huge_input() -> onnx.ModelProto:
    return model([helper.make_node("Relu", ["x"], ["y"])], x_shape=(1, 3, 100000, 100000))


def huge_padding() -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1 << 20] * 4)],
                 inits=[const("w", np.ones((4, 4, 3, 3), F))])


def many_constants(count: int, elements: int) -> onnx.ModelProto:
    """``count`` ConstantOfShape nodes of ``elements`` floats each, summed."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], [f"k{i}"],
                              value=const("v", [1.0], F)) for i in range(count)]
    nodes.append(helper.make_node("Sum", [f"k{i}" for i in range(count)], ["c"]))
    return plus_constant(nodes, "c", inits=[const("shape", [elements], np.int64)])


# -- sparse tensors and external data -------------------------------------------------------------
def external_tensor(name: str, location: str, dims=(4,)) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def sparse_external(location: str) -> onnx.SparseTensorProto:
    values = external_tensor("values", location)
    indices = const("indices", [0, 1, 2, 3], np.int64)
    return helper.make_sparse_tensor(values, indices, [4])


def sparse_constant(location: str) -> onnx.ModelProto:
    """A Constant's sparse_value whose values live in an external file (the existence oracle)."""
    node = helper.make_node("Constant", [], ["c"])
    node.attribute.append(helper.make_attribute("sparse_value", sparse_external(location)))
    return plus_constant([node], "c")


def sparse_in_if_branch(location: str) -> onnx.ModelProto:
    inner = helper.make_node("Constant", [], ["o"])
    inner.attribute.append(helper.make_attribute("sparse_value", sparse_external(location)))
    branch = helper.make_graph([inner], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["cond"], ["c"], then_branch=branch, else_branch=branch)
    return plus_constant([node], "c", inits=[const("cond", True)])


def sparse_initializer() -> onnx.ModelProto:
    sparse = helper.make_sparse_tensor(const("s", np.ones(2, F)), const("i", [0, 1], np.int64),
                                       [4])
    m = plus_constant([], "s")
    m.graph.sparse_initializer.append(sparse)
    return m


def sparse_tensors_attribute() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    attr = node.attribute.add()
    attr.name, attr.type = "extra", AttributeProto.SPARSE_TENSORS
    attr.sparse_tensors.append(sparse_external("/etc/hostname"))
    return model([node])


def external_initializer(location: str) -> onnx.ModelProto:
    return plus_constant([], "w", inits=[external_tensor("w", location)])


def external_constant_value(location: str) -> onnx.ModelProto:
    return plus_constant([helper.make_node("Constant", [], ["c"],
                                           value=external_tensor("v", location))], "c")


def external_in_tensors_attribute(location: str) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    attr = node.attribute.add()
    attr.name, attr.type = "extra", AttributeProto.TENSORS
    attr.tensors.append(external_tensor("v", location))
    return model([node])


def external_in_nested_branch(location: str, depth: int = 3) -> onnx.ModelProto:
    """An If whose then-branch holds an If ... whose innermost branch has an external
    initializer."""
    out = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])]
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["o"])], "leaf", [], out,
                              [external_tensor("w", location)])
    for i in range(depth):
        node = helper.make_node("If", ["cond"], ["o"], then_branch=graph, else_branch=graph)
        graph = helper.make_graph([node], f"level{i}", [], out)
    node = helper.make_node("If", ["cond"], ["c"], then_branch=graph, else_branch=graph)
    return plus_constant([node], "c", inits=[const("cond", True)])


def deep_nesting_in_memory(depth: int, location: str) -> onnx.ModelProto:
    """Subgraphs nested ``depth`` deep, built in memory (protobuf refuses to parse more than
    ~100 nested messages, so such a model only exists in memory), with an external tensor at
    the bottom."""
    m = relu_then(helper.make_node("Identity", ["r"], ["y"]))
    node = m.graph.node.add(op_type="If", input=["cond"], output=["unused"])
    for _ in range(depth):
        attr = node.attribute.add(name="then_branch", type=AttributeProto.GRAPH)
        node = attr.g.node.add(op_type="If", input=["cond"], output=["o"])
    node.attribute.add(name="value", type=AttributeProto.TENSOR).t.CopyFrom(
        external_tensor("deep", location))
    return m


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_nesting_bytes(depth: int) -> bytes:
    """A valid model's bytes plus one If node whose then-branch nests ``depth`` If nodes, written
    as protobuf wire format by hand (the protobuf library cannot build it)."""
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value_float=1.0)],
                              "leaf", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT,
                                                                         [])])
    inner = graph.SerializeToString()
    for i in range(depth):
        attr = _field(1, "then_branch") + _field(20, AttributeProto.GRAPH) + _field(6, inner)
        node = _field(1, "cond") + _field(2, "c") + _field(4, "If") + _field(5, attr)
        inner = _field(1, node) + _field(2, f"g{i}")
    # GraphProto field 1 (node) appended to ModelProto field 7 (graph): protobuf merges it.
    base = model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString()
    return base + _field(7, _field(1, _field(4, "If") + _field(1, "cond") +
                                   _field(5, _field(1, "then_branch") +
                                          _field(20, AttributeProto.GRAPH) +
                                          _field(6, inner))))


# -- the wire format itself: what the import's scan for initializer payloads meets ---------------
def conv_with_weight() -> onnx.ModelProto:
    """A valid conv model whose weight is an initializer with raw_data."""
    return model([helper.make_node("Conv", ["x", "w"], ["y"])],
                 inits=[const("w", np.ones((4, 4, 3, 3), F))])


def truncated_in_a_payload() -> bytes:
    """A valid model's bytes cut in the middle of its initializer's raw_data."""
    data = conv_with_weight().SerializeToString()
    return data[:data.index(np.ones(8, F).tobytes()) + 16]


def length_past_the_end() -> bytes:
    """A valid model, then a graph field whose length prefix runs 1 TiB past the end."""
    return model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString() + \
        _varint(7 << 3 | 2) + _varint(1 << 40) + b"\x00" * 16


def initializer_length_past_its_graph() -> bytes:
    """A graph field holding an initializer whose length runs past the graph (not the file)."""
    tensor = _field(1, 4) + _field(2, 1) + _field(8, "w") + _field(9, b"\x00" * 16)
    graph = _varint(5 << 3 | 2) + _varint(len(tensor) + 100) + tensor
    return model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString() + \
        _field(7, graph) + _field(2, "after")


def varint_overflow() -> bytes:
    """A valid model, then a field key of eleven bytes, each with the continuation bit set."""
    return model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString() + b"\xff" * 11


def raw_data_twice() -> bytes:
    """A valid model whose graph gets (merged by protobuf) an initializer with raw_data twice."""
    tensor = (_field(1, 4) + _field(2, 1) + _field(8, "k") + _field(9, b"\x00" * 16)
              + _field(9, b"\x01" * 16))
    return model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString() + \
        _field(7, _field(5, tensor))


def group_field() -> bytes:
    """A valid model, then a field of wire type 3 (a group: ONNX never writes one)."""
    return model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString() + \
        _varint(99 << 3 | 3) + _varint(99 << 3 | 4)


def raw_data_in_a_branch() -> onnx.ModelProto:
    """An If whose branch holds an initializer with raw_data (a nested graph, not scanned)."""
    branch = helper.make_graph(
        [helper.make_node("Identity", ["k"], ["o"])], "b", [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])],
        [const("k", np.ones(4, F))])
    return relu_then(helper.make_node("If", ["x"], ["y"], then_branch=branch,
                                      else_branch=branch))


def graph_given_twice() -> tuple[bytes, np.ndarray]:
    """A valid conv model written as two graph fields (protobuf merges them), each with one
    initializer holding raw_data, and the conv's weights: a scan must number them on."""
    w = np.arange(4 * 4 * 3 * 3, dtype=F).reshape(4, 4, 3, 3) / 100
    b = np.arange(4, dtype=F)
    whole = model([helper.make_node("Conv", ["x", "w", "b"], ["y"])], inits=[const("b", b)])
    extra = _field(5, const("w", w).SerializeToString())
    return whole.SerializeToString() + _field(7, extra), w


def many_tiny_fields(count: int) -> bytes:
    """A valid model, then ``count`` two-byte top-level fields (ir_version again and again)."""
    return model([helper.make_node("Relu", ["x"], ["y"])]).SerializeToString() + \
        b"\x08\x08" * count
