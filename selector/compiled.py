"""A compiled plan: one file a deployer copies to a device and runs without planning, measuring
or reading ONNX (`convplan compile`, then `convplan run model.cvplan` or
`convplan.Session("model.cvplan")`).

Layout of the file (little-endian, no pickle anywhere)::

    preamble    64 bytes: MAGIC, format version, flags, header length, data offset, data
                length, CRC-32 of the data, CRC-32 of the preamble's first 44 bytes and the
                header (so every field before it is covered too)
    header      JSON (`Header`): the format, the convplan version and machine fingerprint
                it was planned with and compiled on, the network's description without
                weights, the plan's assignment and layouts, the arena's layout, and a table
                of every array (its layer, key, offset, shape, dtype)
    padding     zeros up to a multiple of `PAGE`
    data        every convolution's prepared weights and bias and every other layer's
                constants, each at an offset that is a multiple of `ARRAY_ALIGNMENT`

Loading (`load_compiled`) checks the preamble, the header's CRC, the format, the data's CRC
(zlib.crc32 over the mapped file in chunks: it reads every page once, from the page cache),
then rebuilds the program from the description (checked as any description is, then lowered
with the plan's choices, strictly) and attaches the arrays as read-only views of one
read-only memory map of the file: the weights are file-backed pages that processes running
the same file share, never copied into the process's own (anonymous) memory. The arena's
layout is the recorded one, checked (`Program.use_arena`) rather than placed again. Anything
wrong (a truncated, damaged or foreign file, a newer format, arrays that do not fit the
network or an algorithm whose prepared form changed) is one `CompiledPlanError`.

A file planned on another machine (its fingerprint differs from this one's: CPU, BLAS,
cores, convplan or NumPy version, kernels) runs, with a note saying so: the plan's times were
measured there, so it may not be the fastest plan here, but what it computes and the memory it
needs do not depend on where it was planned.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from convplan.kernels.arena import ALIGNMENT, ArenaLayout
from convplan.kernels.base import Prepared
from convplan.kernels.executor import Program, Step

from .lowering import Lowered, lower
from .network import Limits, Network, NetworkError, check_description, load_json, quoted
from .network.errors import CompiledPlanError

__all__ = ["FORMAT_VERSION", "MAGIC", "CompiledPlan", "CompiledPlanError", "Header",
           "compile_network", "compile_plan", "is_compiled", "load_compiled", "read_header"]

#: The file's first bytes (as PNG's: a high byte and a newline catch text-mode transfers).
MAGIC = b"\x89CVPLAN\n"
#: The layout this convplan writes and reads; a file of a newer one is refused by name.
FORMAT_VERSION = 1
SUFFIX = ".cvplan"
_PREAMBLE = struct.Struct("<8sIIQQQII")     # magic, version, flags, header, offset, length, crcs
PREAMBLE_BYTES = 64
#: The data starts at a multiple of this (a page: mapped arrays start page-aligned).
PAGE = 4096
#: Every array starts at a multiple of this many bytes (the arena's alignment: a cache line).
ARRAY_ALIGNMENT = ALIGNMENT
#: No header is longer than this (a description of 100 000 layers fits in far less).
MAX_HEADER_BYTES = 256 * 1024 * 1024
#: The data's CRC is computed this many bytes at a time.
CRC_CHUNK = 16 * 1024 * 1024
FORMAT = "convplan compiled plan"

Count = Annotated[StrictInt, Field(ge=0)]


class ArrayEntry(BaseModel):
    """One array of the data: a convolution's prepared ``weights`` or ``bias``
    (``kind="prepared"``), or another layer's constant by its weight name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    layer: str
    kind: Literal["prepared", "constant"]
    key: str
    offset: Count
    shape: Annotated[list[Count], Field(max_length=8)]
    dtype: Literal["float32"]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 4


class PreparedEntry(BaseModel):
    """What a convolution's prepared weights were made by: the algorithm and the form it kept
    them in (`ConvAlgorithm.prepared_form`), checked against this convplan's."""

    model_config = ConfigDict(extra="forbid", strict=True)
    algorithm: str
    form: str


class ArenaEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    size: Count
    max_live_bytes: Count
    placement: str
    offsets: dict[str, Count]


class Header(BaseModel):
    """The header: everything needed to run the file, and where it came from."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["convplan compiled plan"]
    convplan: str = Field(description="The convplan version that compiled it.")
    planned_on: dict[str, Any] | None = Field(description=(
        "The machine fingerprint the plan's costs were measured on (None: a plan without "
        "one, or the default algorithm per layer)."))
    compiled_on: dict[str, Any]
    threads: Annotated[StrictInt, Field(ge=1, le=4096)] | None
    plan: dict[str, Any] = Field(description="What the plan said of itself (caps, "
                                 "prediction, costs), for reports.")
    network: dict[str, Any] = Field(description="The network's description, no weights.")
    assignment: dict[str, str]
    layouts: dict[str, Literal["NCHW", "NHWC"]]
    prepared: dict[str, PreparedEntry]
    arena: ArenaEntry
    arrays: list[ArrayEntry]
    data_bytes: Count


# -- writing ---------------------------------------------------------------------------------
def _aligned(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass
class _Layout:
    """Where every array goes (planned before anything is prepared: from `prepared_shape`)."""

    entries: list[ArrayEntry]
    data_bytes: int


def _array_table(program: Program) -> _Layout:
    entries: list[ArrayEntry] = []
    at = 0

    def add(layer: str, kind: Literal["prepared", "constant"], key: str,
            shape: tuple[int, ...]) -> None:
        nonlocal at
        entry = ArrayEntry(layer=layer, kind=kind, key=key, offset=at,
                           shape=[int(d) for d in shape], dtype="float32")
        entries.append(entry)
        at = _aligned(at + entry.nbytes, ARRAY_ALIGNMENT)

    for step in program.steps:
        if step.kind == "conv":
            assert step.algorithm is not None and step.spec is not None
            add(step.name, "prepared", "weights", step.algorithm.prepared_shape(step.spec))
            if step.bias:
                add(step.name, "prepared", "bias", (step.spec.m,))
        elif step.kind == "op":
            for key, array in step.weights.items():
                add(step.name, "constant", key, array.shape)
    return _Layout(entries, at)


class _Out:
    """The data region being written: position and CRC, zeros between arrays."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.at, self.crc = file, 0, 0

    def write(self, offset: int, array: np.ndarray) -> None:
        if offset > self.at:
            self._put(bytes(offset - self.at))
        data = np.ascontiguousarray(array, dtype="<f4")
        self._put(memoryview(data).cast("B"))

    def finish(self, total: int) -> None:
        if total > self.at:
            self._put(bytes(total - self.at))

    def _put(self, chunk: bytes | memoryview) -> None:
        self.file.write(chunk)
        self.crc = zlib.crc32(chunk, self.crc)
        self.at += len(chunk)


def _machine_here(threads: int | None) -> dict[str, Any]:
    from convplan.profiles.fingerprint import machine_fingerprint

    return machine_fingerprint(threads or os.cpu_count() or 1)


def _version() -> str:
    import convplan

    return str(convplan.__version__)


def compile_network(network: Network, path: str | os.PathLike[str], *,
                    assignment: Mapping[str, str] | None = None,
                    layouts: Mapping[str, str] | None = None, algorithm: str | None = None,
                    strict: bool = False, threads: int | None = None,
                    planned_on: Mapping[str, Any] | None = None,
                    plan: Mapping[str, Any] | None = None, owned: bool = False) -> Header:
    """Write ``network`` lowered with ``assignment`` and ``layouts`` (a plan's, checked by
    the caller; ``strict``) or one ``algorithm`` (or the default per layer) to ``path`` as a
    compiled plan; returns its header. ``planned_on``: the machine the plan was made for (its
    ``machine``); ``plan``: what the plan says of itself, kept for reports. ``owned``: the
    network is the caller's to spend: each convolution's original goes once written, so at
    most one layer's prepared copy is held beside the network.

    Each layer is prepared and written in turn (offsets are known in advance from
    `prepared_shape`), into a temporary file renamed over ``path`` once complete: a failed
    compile leaves no partial file."""
    spent = [n.name for n in network.conv_nodes if "weight" not in n.weights]
    if spent:
        raise ValueError(f"the weights of convolution {quoted(spent[0])} were released (a "
                         "network handed to a run); load the network again to compile it")
    lowered = lower(network, assignment, algorithm=algorithm, strict=strict,
                    layouts=layouts)  # type: ignore[arg-type]
    program = lowered.program
    if owned:
        network.release_conv_weights()
    table = _array_table(program)
    arena = program.arena
    header = Header(
        format=FORMAT, convplan=_version(),
        planned_on=dict(planned_on) if planned_on else None,
        compiled_on=_machine_here(threads), threads=threads, plan=dict(plan or {}),
        network=network.to_description().model_dump(mode="json"),
        assignment=dict(lowered.algorithms),
        layouts={s.name: s.layout for s in program.steps if s.kind == "op"},
        prepared={s.name: PreparedEntry(algorithm=s.algorithm.name,
                                        form=s.algorithm.prepared_form())
                  for s in program.steps if s.kind == "conv" and s.algorithm is not None},
        arena=ArenaEntry(size=arena.size, max_live_bytes=arena.max_live_bytes,
                         placement=arena.placement, offsets=dict(arena.offsets)),
        arrays=table.entries, data_bytes=table.data_bytes)
    text = header.model_dump_json().encode()
    data_offset = _aligned(PREAMBLE_BYTES + len(text), PAGE)
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with temporary.open("wb") as file:
            file.write(bytes(data_offset))
            out = _Out(file)
            _write_arrays(program, table.entries, out)
            out.finish(table.data_bytes)
            head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(text), data_offset,
                                  table.data_bytes, out.crc, 0)[:-4]
            crc = zlib.crc32(text, zlib.crc32(head))
            file.seek(0)
            file.write(head + struct.pack("<I", crc))
            file.write(bytes(PREAMBLE_BYTES - _PREAMBLE.size))
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return header


def compile_plan(network: Network, path: str | os.PathLike[str], plan: Any = None, *,
                 algorithm: str | None = None, threads: int | None = None,
                 owned: bool = False) -> Header:
    """Compile ``network`` with ``plan`` (a `Plan`, a plan document or its `PlanSpec`:
    checked against the network as `run --plan` checks it, made-for network and input shapes
    included; its machine, threads, caps and prediction go into the header) or one
    ``algorithm`` (None: the default per layer) into ``path`` (`compile_network`)."""
    if plan is None:
        return compile_network(network, path, algorithm=algorithm, threads=threads,
                               owned=owned)
    if algorithm is not None:
        raise ValueError("give a plan or an algorithm, not both")
    from .incoming import check_plan, plan_spec

    spec = plan_spec(plan)
    check_plan(network, spec.assignment, spec.layouts, made_for=spec.network,
               inputs=spec.inputs)
    extra = spec.model_extra or {}
    machine = extra.get("machine")
    kept = {k: extra[k] for k in ("memory_cap_bytes", "arena_cap_bytes", "costs", "predicted")
            if k in extra}
    return compile_network(network, path, assignment=spec.assignment, layouts=spec.layouts,
                           strict=True, threads=threads if threads is not None
                           else spec.threads,
                           planned_on=machine if isinstance(machine, dict) else None,
                           plan={"network": spec.network, "inputs": spec.inputs, **kept},
                           owned=owned)


def _write_arrays(program: Program, entries: list[ArrayEntry], out: _Out) -> None:
    """Prepare each convolution (dropping its originals when the program owns them) and
    write every array at its offset, in the table's order."""
    by_layer: dict[str, list[ArrayEntry]] = {}
    for entry in entries:
        by_layer.setdefault(entry.layer, []).append(entry)
    for step in program.steps:
        for entry, array in zip(by_layer.get(step.name, []), _arrays_of(step), strict=True):
            if tuple(array.shape) != tuple(entry.shape):
                raise RuntimeError(f"layer {step.name!r}: {entry.key} has shape {array.shape}, "
                                   f"not the {tuple(entry.shape)} planned")
            out.write(entry.offset, array)


def _arrays_of(step: Step) -> Iterator[np.ndarray]:
    if step.kind == "conv":
        assert step.algorithm is not None and step.spec is not None
        prepared = step.algorithm.prepare(step.weights["weight"], step.weights.get("bias"),
                                          step.spec)
        step.weights = {}
        yield prepared.weights
        if prepared.bias is not None:
            yield prepared.bias
    elif step.kind == "op":
        yield from step.weights.values()


# -- reading ---------------------------------------------------------------------------------
def is_compiled(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a compiled plan: its suffix is .cvplan, or it starts with
    `MAGIC` (so a renamed file is still recognised, and a .cvplan that is not one is refused
    as such)."""
    p = Path(path)
    if p.suffix.lower() == SUFFIX:
        return True
    try:
        with p.open("rb") as file:
            return file.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _fail(path: Path, why: str) -> CompiledPlanError:
    return CompiledPlanError(f"{path} is not a usable compiled plan: {why}")


@dataclass
class _Mapped:
    mapping: mmap.mmap
    header: Header
    data_offset: int


def _open(path: Path, verify: bool) -> _Mapped:
    """The file mapped read-only, its preamble and header checked, and its data's CRC when
    ``verify``."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < PREAMBLE_BYTES:
                raise _fail(path, f"{size} bytes, shorter than the {PREAMBLE_BYTES}-byte "
                                  "preamble (truncated, or not a compiled plan)")
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as error:
        raise CompiledPlanError(f"cannot read {path}: {error.strerror}") from None
    try:
        return _checked(path, mapping, size, verify)
    except BaseException:
        mapping.close()
        raise


def _checked(path: Path, mapping: mmap.mmap, size: int, verify: bool) -> _Mapped:
    magic, version, flags, header_bytes, data_offset, data_bytes, data_crc, header_crc = \
        _PREAMBLE.unpack_from(mapping, 0)
    if magic != MAGIC:
        raise _fail(path, "it does not start with the compiled-plan magic bytes (a file of "
                          "another kind; compile one with `convplan compile`)")
    if version > FORMAT_VERSION:
        raise _fail(path, f"its format version {version} is newer than the {FORMAT_VERSION} "
                          "this convplan reads; upgrade convplan or compile it again with "
                          "this one")
    if version != FORMAT_VERSION or flags != 0:
        raise _fail(path, f"format version {version} (flags {flags}) is not one this convplan "
                          f"reads ({FORMAT_VERSION})")
    if header_bytes > MAX_HEADER_BYTES or PREAMBLE_BYTES + header_bytes > size:
        raise _fail(path, f"its header of {header_bytes} bytes does not fit in its {size} "
                          "bytes (truncated or damaged)")
    text = mapping[PREAMBLE_BYTES:PREAMBLE_BYTES + header_bytes]
    if zlib.crc32(text, zlib.crc32(mapping[:_PREAMBLE.size - 4])) != header_crc:
        raise _fail(path, "its header is damaged (CRC mismatch)")
    if data_offset % PAGE or data_offset < PREAMBLE_BYTES + header_bytes:
        raise _fail(path, f"its data offset {data_offset} is not a page after the header")
    if data_offset + data_bytes != size:
        raise _fail(path, f"it has {size} bytes where its header says "
                          f"{data_offset + data_bytes} (truncated or damaged)")
    if mapping[_PREAMBLE.size:PREAMBLE_BYTES].strip(b"\0") or \
            mapping[PREAMBLE_BYTES + header_bytes:data_offset].strip(b"\0"):
        raise _fail(path, "the padding around its header is not zeros (damaged)")
    try:
        header = Header.model_validate(load_json(text, "the header"))
    except (NetworkError, ValidationError) as error:
        raise _fail(path, f"its header is not one this convplan reads: "
                          f"{_first_line(error)}") from None
    if header.data_bytes != data_bytes:
        raise _fail(path, f"its header says {header.data_bytes} bytes of data, its preamble "
                          f"{data_bytes}")
    for entry in header.arrays:
        if entry.offset % ARRAY_ALIGNMENT or entry.offset + entry.nbytes > data_bytes:
            raise _fail(path, f"array {entry.key!r} of layer {quoted(entry.layer)} lies outside "
                              "the data or is not aligned")
    if verify and _crc(mapping, data_offset, data_bytes) != data_crc:
        raise _fail(path, "its weights are damaged (CRC mismatch)")
    return _Mapped(mapping, header, data_offset)


def _first_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        e = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p)[:60] for p in e["loc"]) or "(top level)"
        return f"{where}: {e['msg'][:200]}"
    return str(error).splitlines()[0][:300]


def _crc(mapping: mmap.mmap, start: int, length: int) -> int:
    crc = 0
    with memoryview(mapping) as view:
        for at in range(start, start + length, CRC_CHUNK):
            with view[at:min(at + CRC_CHUNK, start + length)] as chunk:
                crc = zlib.crc32(chunk, crc)
    return crc


def read_header(path: str | os.PathLike[str]) -> Header:
    """The header of a compiled plan (preamble and header checked, the data's CRC not)."""
    mapped = _open(Path(path), verify=False)
    mapped.mapping.close()
    return mapped.header


@dataclass
class CompiledPlan:
    """A loaded compiled plan: the lowered program, its prepared weights (read-only views of
    the mapped file) and what the header says. `Session` runs it."""

    path: Path
    header: Header
    lowered: Lowered
    prepared: dict[str, Prepared]
    #: Bytes of the arrays mapped from the file (prepared weights and constants).
    mapped_bytes: int
    notes: list[str]

    @property
    def name(self) -> str:
        return str(self.header.network.get("name", "network"))


def load_compiled(path: str | os.PathLike[str], *, limits: Limits | None = None,
                  verify: bool = True) -> CompiledPlan:
    """Map a compiled plan and rebuild what runs it, without planning, measuring or ONNX;
    one `CompiledPlanError` saying what is wrong with the file otherwise. ``limits``: those
    the described network must keep (as `load_network`'s). ``verify=False`` skips the data's
    CRC (the header's is always checked)."""
    file = Path(path)
    mapped = _open(file, verify)
    try:
        # the arrays hold the mapping (it is unmapped when the last of them goes)
        return _build(file, mapped, limits)
    except CompiledPlanError:
        _close(mapped.mapping)
        raise
    except (NetworkError, ValueError) as error:
        _close(mapped.mapping)
        raise _fail(file, _first_line(error)) from None


def _close(mapping: mmap.mmap) -> None:
    """Unmap now unless arrays of it are still alive (then their last reference does)."""
    with contextlib.suppress(BufferError):
        mapping.close()


def _build(path: Path, mapped: _Mapped, limits: Limits | None) -> CompiledPlan:
    header = mapped.header
    checked = check_description(header.network, limits=limits)
    arrays: dict[tuple[str, str, str], np.ndarray] = {}
    for entry in header.arrays:
        key = (entry.layer, entry.kind, entry.key)
        if key in arrays:
            raise _fail(path, f"array {entry.key!r} of layer {quoted(entry.layer)} is listed "
                              "twice")
        a = np.frombuffer(mapped.mapping, dtype="<f4", count=math.prod(entry.shape),
                          offset=mapped.data_offset + entry.offset)
        arrays[key] = a.reshape(entry.shape)
    constants: dict[str, dict[str, np.ndarray]] = {}
    for (layer, kind, key), array in arrays.items():
        if kind == "constant":
            constants.setdefault(layer, {})[key] = array
    for node in checked.nodes:
        if node.op == "conv":
            continue
        wanted = checked.weight_shapes[node.name]
        given = constants.pop(node.name, {})
        if set(given) != set(wanted) or any(tuple(given[k].shape) != tuple(s)
                                            for k, s in wanted.items()):
            raise _fail(path, f"layer {quoted(node.name)} needs constants "
                              f"{_shapes(wanted)}; the file has {_shapes(given)}")
        if given:
            constants[node.name] = given
    network = checked.attach(constants, draw=False)
    from .incoming import check_plan

    check_plan(network, header.assignment, header.layouts)
    lowered = lower(network, header.assignment, strict=True, layouts=header.layouts)
    program = lowered.program
    program.owns_weights = True         # no originals: each weight is held once, mapped
    prepared: dict[str, Prepared] = {}
    used = {k for k in arrays if k[1] == "constant"}
    for step in program.steps:
        if step.kind != "conv":
            continue
        assert step.algorithm is not None and step.spec is not None
        entry = header.prepared.get(step.name)
        if entry is None or entry.algorithm != step.algorithm.name:
            raise _fail(path, f"no weights prepared for {step.algorithm.name} for layer "
                              f"{quoted(step.name)}")
        if entry.form != step.algorithm.prepared_form():
            raise _fail(path, f"layer {quoted(step.name)}: {step.algorithm.name} keeps its "
                              f"weights as {step.algorithm.prepared_form()} in this convplan, "
                              f"the file as {entry.form}; compile it again")
        weights = arrays.get((step.name, "prepared", "weights"))
        bias = arrays.get((step.name, "prepared", "bias"))
        shape = step.algorithm.prepared_shape(step.spec)
        if weights is None or tuple(weights.shape) != shape:
            raise _fail(path, f"layer {quoted(step.name)}: {step.algorithm.name} needs prepared "
                              f"weights of shape {shape}, the file has "
                              f"{None if weights is None else tuple(weights.shape)}")
        if step.bias != (bias is not None) or (bias is not None
                                                and bias.shape != (step.spec.m,)):
            raise _fail(path, f"layer {quoted(step.name)}: the bias does not fit the layer")
        used |= {(step.name, "prepared", "weights"), (step.name, "prepared", "bias")}
        prepared[step.name] = Prepared(step.algorithm.name, step.spec.weight_shape,
                                       step.spec.groups, weights, bias)
    stray = [k for k in arrays if k not in used]
    if stray:
        raise _fail(path, f"array {stray[0][2]!r} of layer {quoted(stray[0][0])} belongs to "
                          "no layer that needs it")
    a = header.arena
    try:
        program.use_arena(ArenaLayout(a.size, a.max_live_bytes, dict(a.offsets), a.placement))
    except ValueError as error:
        raise _fail(path, f"its arena layout does not fit the program: {error}") from None
    mapped_bytes = sum(x.nbytes for x in arrays.values())
    return CompiledPlan(path, header, lowered, prepared, mapped_bytes,
                        _machine_notes(path, header))


def _shapes(arrays: Mapping[str, Any]) -> str:
    shown = {k: list(v.shape if isinstance(v, np.ndarray) else v) for k, v in arrays.items()}
    return json.dumps(shown, sort_keys=True) if shown else "none"


def _machine_notes(path: Path, header: Header) -> list[str]:
    """A note when the plan was made (or, without a plan's machine, compiled) on a machine
    whose fingerprint differs from this one's, naming what differs."""
    planned = header.planned_on or header.compiled_on
    threads = planned.get("threads")
    here = _machine_here(threads if isinstance(threads, int) and threads >= 1 else None)
    differ = sorted(k for k in {*planned, *here}
                    if k != "threads" and planned.get(k) != here.get(k))
    if not differ:
        return []
    what = "planned" if header.planned_on else "compiled"
    return [f"{path.name} was {what} on another machine ({', '.join(differ)} differ): the "
            "plan's times were measured there, so it may not be the fastest plan here; its "
            "outputs and memory do not depend on it"]

