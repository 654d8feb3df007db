"""Reading an untrusted ONNX file: its size bounded before it is read, the protobuf parsed,
external data and sparse tensors refused before anything could open another file, the opset
known, and every node checked against its operator's ONNX schema before it is read."""

from __future__ import annotations

import stat
from pathlib import Path

import onnx
import onnx.defs
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto

from convplan.selector.network import NetworkError

from .messages import label, quote, short, type_name

#: ONNX files larger than this are refused before parsing (the biggest CNNs are ~0.6 GB).
MAX_ONNX_BYTES = 1 << 30


def read_model(source: str | Path | bytes) -> tuple[onnx.ModelProto, str]:
    """The parsed model (a path or the file's bytes) with the name its graph gets when it has
    none (the file's stem), refused when it is too large, does not parse, has no graph, or
    refers to external data."""
    if isinstance(source, bytes):
        data, default_name = source, "model"
    else:
        path = Path(source)
        try:
            info = path.stat()
        except OSError as error:
            raise NetworkError(f"cannot read {short(str(path))}: {error.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise NetworkError(f"{short(str(path))} is not a regular file")
        if info.st_size > MAX_ONNX_BYTES:
            raise NetworkError(f"{short(str(path))} is {info.st_size} bytes; the limit is "
                               f"{MAX_ONNX_BYTES}")
        try:
            with path.open("rb") as file:
                data = file.read(MAX_ONNX_BYTES + 1)    # it may have grown since stat
        except OSError as error:
            raise NetworkError(f"cannot read {short(str(path))}: {error.strerror}") from None
        default_name = path.stem
    if len(data) > MAX_ONNX_BYTES:
        raise NetworkError(f"the model is {len(data)} bytes; the limit is {MAX_ONNX_BYTES}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        why = "messages nested too deeply" if "MaxDepth" in str(error) else \
            f"{type(error).__name__}: {short(str(error))}"
        raise NetworkError(f"not a valid ONNX file ({why})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise NetworkError("not a valid ONNX file: it has no graph (truncated or not a model)")
    refuse_external_data(model)
    return model, default_name


def refuse_external_data(model: onnx.ModelProto) -> None:
    """Refuse every tensor that refers to an external data file, and every sparse tensor (which
    convplan does not read), anywhere: initializers, node attributes, subgraphs to any depth,
    functions and training information; iteratively, before anything could open a file."""
    graphs: list[onnx.GraphProto] = [model.graph]
    nodes: list[onnx.NodeProto] = []
    for function in model.functions:
        nodes.extend(function.node)
    for info in model.training_info:
        graphs.extend((info.initialization, info.algorithm))
    tensors: list[TensorProto] = []

    def sparse(where: str) -> NetworkError:
        return NetworkError(f"{where} is a sparse tensor; convplan does not read sparse "
                            "tensors")

    while graphs or nodes or tensors:
        if tensors:
            tensor = tensors.pop()
            if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
                raise NetworkError(f"tensor {quote(tensor.name)} refers to an external data file; "
                                   "convplan only reads self-contained ONNX files")
        elif nodes:
            node = nodes.pop()
            for a in node.attribute:
                if a.HasField("sparse_tensor") or len(a.sparse_tensors) or a.type in (
                        AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                    raise sparse(f"attribute {quote(a.name)} of node {label(node)}")
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors.extend(a.tensors)
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
        else:
            graph = graphs.pop()
            if len(graph.sparse_initializer):
                raise sparse(f"initializer {quote(graph.sparse_initializer[0].values.name)}")
            tensors.extend(graph.initializer)
            nodes.extend(graph.node)


def opset_of(model: onnx.ModelProto) -> int:
    versions = [int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")]
    if len(versions) > 1:
        raise NetworkError("the model imports the default ONNX opset twice")
    version = versions[0] if versions else 1
    latest = onnx.defs.onnx_opset_version()
    if not 1 <= version <= latest:
        raise NetworkError(f"the model asks for ONNX opset {short(version)}; this onnx knows "
                           f"opsets 1-{latest}")
    return version


_SINGLE = onnx.defs.OpSchema.FormalParameterOption.Single


def check_schema(node: onnx.NodeProto, opset: int) -> None:
    """The node against its operator's ONNX schema at the model's opset: input and output
    counts, required inputs and attributes, attribute names and types."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        raise NetworkError(f"node {label(node)}: {short(node.op_type)} is not an operator "
                           f"of ONNX opset {opset}") from None
    for kind, names, params, lo, hi in (
            ("input", node.input, schema.inputs, schema.min_input, schema.max_input),
            ("output", node.output, schema.outputs, schema.min_output, schema.max_output)):
        if not lo <= len(names) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi > 1 << 20 else f"{lo}-{hi}"
            raise NetworkError(f"node {label(node)} has {len(names)} {kind}(s); "
                               f"{short(node.op_type)} takes {want}")
        for i, name in enumerate(names):
            param = params[min(i, len(params) - 1)]
            if not name and param.option == _SINGLE:
                raise NetworkError(f"node {label(node)}: {kind} {i} ({param.name}) is "
                                   "required but empty")
    seen: set[str] = set()
    for a in node.attribute:
        spec = schema.attributes.get(a.name)
        if spec is None:
            raise NetworkError(f"node {label(node)}: {short(node.op_type)} (opset {opset}) "
                               f"has no attribute {quote(a.name)}")
        if a.name in seen:
            raise NetworkError(f"node {label(node)}: attribute {quote(a.name)} is given twice")
        seen.add(a.name)
        if a.ref_attr_name:
            raise NetworkError(f"node {label(node)}: attribute {quote(a.name)} refers to a "
                               "function's attribute outside a function")
        if a.type != int(spec.type):
            raise NetworkError(f"node {label(node)}: attribute {quote(a.name)} must be "
                               f"{type_name(AttributeProto.AttributeType, int(spec.type))}, "
                               f"not {type_name(AttributeProto.AttributeType, a.type)}")
    for name, spec in schema.attributes.items():
        if spec.required and name not in seen:
            raise NetworkError(f"node {label(node)}: the required attribute {quote(name)} is "
                               "missing")
