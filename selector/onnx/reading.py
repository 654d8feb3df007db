"""Reading an untrusted ONNX file: its size bounded before it is read, the protobuf parsed,
external data and sparse tensors refused before anything could open another file, the opset
known, and every node checked against its operator's ONNX schema before it is read.

The file is held once: it is memory-mapped, a bounded wire-format scan (`strip_payloads`) finds
where each top-level initializer's ``raw_data`` lies, protobuf parses the model without those
payloads (kilobytes), and each payload is later read straight into its array
(`Payload.read_into`): no bytes object of the file and no protobuf copy of the weights."""

from __future__ import annotations

import io
import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.defs
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto

from convplan.selector.network import NetworkError

from .messages import label, quote, short, type_name

#: ONNX files larger than this are refused before parsing (the biggest CNNs are ~0.6 GB).
MAX_ONNX_BYTES = 1 << 30

# Wire-format field numbers the scan follows: ModelProto.graph, GraphProto.initializer,
# TensorProto.raw_data (onnx.proto).
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_LEN = 2        # the wire type of strings, bytes and messages
_TRUNCATED = "not a valid ONNX file (truncated)"


@dataclass(frozen=True)
class Payload:
    """One top-level initializer's ``raw_data``, still in the model's bytes."""

    source: ModelFile
    offset: int
    length: int

    def read_into(self, out: np.ndarray) -> None:
        """Fill ``out`` (C-contiguous, ``length`` bytes) straight from the file or bytes: no
        intermediate bytes object."""
        target = memoryview(out.reshape(-1)).cast("B")
        if target.nbytes != self.length:
            raise ValueError(f"{target.nbytes} bytes to fill from a payload of {self.length}")
        self.source.read_into(self.offset, target)


@dataclass
class ModelFile:
    """A model's bytes while its initializers are read: the memory-mapped file (or the bytes
    given) and where each top-level initializer's ``raw_data`` lies in it, by index in
    ``graph.initializer``. Closed once the initializers are read."""

    buffer: Any                 # mmap.mmap, the bytes given, or b"" (an empty file)
    file: io.FileIO | None = None
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)

    def payload(self, index: int) -> Payload | None:
        span = self.spans.get(index)
        return None if span is None else Payload(self, *span)

    def read_into(self, offset: int, target: memoryview) -> None:
        if self.file is None:
            with memoryview(self.buffer) as source:
                target[:] = source[offset:offset + target.nbytes]
            return
        done = 0
        while done < target.nbytes:     # a read may return less than asked
            self.file.seek(offset + done)
            count = self.file.readinto(target[done:])
            if not count:
                raise NetworkError("not a valid ONNX file (it shrank while it was read)")
            done += count

    def close(self) -> None:
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        self.buffer = b""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.spans = {}


def read_model(source: str | Path | bytes) -> tuple[onnx.ModelProto, str, ModelFile]:
    """The model parsed without its top-level initializers' payloads (a path or the file's
    bytes), the name its graph gets when it has none (the file's stem), and the open
    `ModelFile` the payloads are read from (the caller closes it); refused when it is too
    large, does not parse, has no graph, or refers to external data."""
    if isinstance(source, bytes):
        if len(source) > MAX_ONNX_BYTES:
            raise NetworkError(f"the model is {len(source)} bytes; the limit is {MAX_ONNX_BYTES}")
        model_file, default_name = ModelFile(source), "model"
    else:
        model_file, default_name = _map(Path(source)), Path(source).stem
    try:
        stripped, model_file.spans = strip_payloads(model_file.buffer)
        model = onnx.ModelProto()
        try:
            model.ParseFromString(stripped)
        except (DecodeError, ValueError, RuntimeError) as error:
            why = "messages nested too deeply" if "MaxDepth" in str(error) else \
                f"{type(error).__name__}: {short(str(error))}"
            raise NetworkError(f"not a valid ONNX file ({why})") from None
        del stripped
        if not model.HasField("graph") or not model.graph.node:
            raise NetworkError("not a valid ONNX file: it has no graph (truncated or not a "
                               "model)")
        refuse_external_data(model)
    except BaseException:
        model_file.close()
        raise
    return model, default_name, model_file


def _map(path: Path) -> ModelFile:
    """The file memory-mapped read-only, refused unless it is a regular file within
    MAX_ONNX_BYTES (checked before it is opened: a FIFO must not block the import)."""
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
        file = io.FileIO(path, "r")
    except OSError as error:
        raise NetworkError(f"cannot read {short(str(path))}: {error.strerror}") from None
    try:
        size = os.fstat(file.fileno()).st_size      # it may have changed since stat
        if size > MAX_ONNX_BYTES:
            raise NetworkError(f"the model is {size} bytes; the limit is {MAX_ONNX_BYTES}")
        buffer = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    except OSError as error:
        file.close()
        raise NetworkError(f"cannot read {short(str(path))}: {error.strerror}") from None
    except BaseException:
        file.close()
        raise
    return ModelFile(buffer, file)


# -- the wire-format scan -------------------------------------------------------------------------
#: The most fields the scan walks (in the model, its graphs and their initializers): a real
#: model has a few per node and initializer (ResNet-50: 835), and the walk is Python (about
#: 0.3 s per million).
MAX_SCANNED_FIELDS = 1 << 20
#: The scan lets go of the file pages it has passed every this many bytes.
_UNMAP_STEP = 1 << 20


def strip_payloads(buffer: Any) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """The model's bytes without the ``raw_data`` of its top-level initializers (every
    enclosing length rewritten), and (offset, length) of each payload by initializer index.

    Three fixed levels (ModelProto.graph, GraphProto.initializer, TensorProto.raw_data),
    iterative, every length checked against its enclosing message before anything is read,
    at most MAX_SCANNED_FIELDS fields. Everything else is copied as it is, for protobuf to
    parse and check; a graph given twice is merged by protobuf, so its initializers are
    numbered on.
    """
    scan = _Scan(buffer)
    spans: dict[int, tuple[int, int]] = {}
    index = 0
    model = _Rewrite(buffer, 0)
    for number, wire, first, start, end in scan.fields(0, len(buffer)):
        if number != _MODEL_GRAPH or wire != _LEN:
            continue
        graph = _Rewrite(buffer, start)
        for g_number, g_wire, g_first, g_start, g_end in scan.fields(start, end):
            if g_number != _GRAPH_INITIALIZER or g_wire != _LEN:
                continue
            tensor = _Rewrite(buffer, g_start)
            for t_number, t_wire, t_first, t_start, t_end in scan.fields(g_start, g_end):
                if t_number != _TENSOR_RAW_DATA or t_wire != _LEN:
                    continue
                if index in spans:
                    raise NetworkError(f"not a valid ONNX file (initializer {index} holds "
                                       "raw_data twice)")
                spans[index] = (t_start, t_end - t_start)
                tensor.drop(t_first, t_end)
            if tensor.changed:
                graph.replace(g_first, g_end, _GRAPH_INITIALIZER, tensor.done(g_end))
            index += 1
            scan.unmap_before(g_end)
        if graph.changed:
            model.replace(first, end, _MODEL_GRAPH, graph.done(end))
    return model.done(len(buffer)), spans


class _Scan:
    """The fields of messages in ``buffer``, walked within one budget of fields."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.budget = MAX_SCANNED_FIELDS
        self.unmapped = 0

    def unmap_before(self, pos: int) -> None:
        """Let go of the mapped file pages before ``pos`` (everything there is copied): reading
        one field's key maps a whole folio of the file, which would count as resident."""
        pos -= pos % mmap.PAGESIZE
        if (isinstance(self.buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")
                and pos - self.unmapped >= _UNMAP_STEP):
            self.buffer.madvise(mmap.MADV_DONTNEED, self.unmapped, pos - self.unmapped)
            self.unmapped = pos

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """(field number, wire type, where the field starts, where its value starts and ends)
        of each field of the message in ``buffer[start:end]``."""
        buffer, pos = self.buffer, start
        while pos < end:
            self.budget -= 1
            if self.budget < 0:
                raise NetworkError(f"not a valid ONNX file (more than {MAX_SCANNED_FIELDS} "
                                   "fields in its model, graph and initializer messages)")
            first = pos
            key = buffer[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise NetworkError("not a valid ONNX file (a field numbered 0)")
            if wire == _LEN:
                length, pos = self.varint(pos, end)
                after = pos + length
            elif wire == 0:
                _, after = self.varint(pos, end)
            elif wire in (1, 5):
                after = pos + (8 if wire == 1 else 4)
            else:
                raise NetworkError(f"not a valid ONNX file (a field of wire type {wire}, which "
                                   "ONNX does not write)")
            if after > end:
                raise NetworkError(_TRUNCATED)
            yield number, wire, first, pos, after
            pos = after

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """The varint at ``pos`` and the position after it, never reading at or past ``end``."""
        buffer, value, shift = self.buffer, 0, 0
        while True:
            if pos >= end:
                raise NetworkError(_TRUNCATED)
            byte = buffer[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7
            if shift >= 70:
                raise NetworkError("not a valid ONNX file (a varint longer than 10 bytes)")


class _Rewrite:
    """A message's bytes from ``start`` with some fields dropped or replaced, copied in runs."""

    def __init__(self, buffer: Any, start: int) -> None:
        self.buffer, self.pos = buffer, start
        self.pieces: list[bytes] = []
        self.changed = False

    def drop(self, first: int, end: int) -> None:
        self.pieces.append(self.buffer[self.pos:first])
        self.pos, self.changed = end, True

    def replace(self, first: int, end: int, number: int, body: bytes) -> None:
        self.drop(first, end)
        self.pieces += [_encode_varint(number << 3 | _LEN), _encode_varint(len(body)), body]

    def done(self, end: int) -> bytes:
        self.pieces.append(self.buffer[self.pos:end])
        return b"".join(self.pieces)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


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
