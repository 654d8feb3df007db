"""A network's inputs: seeded ones, given arrays checked, and .npy / .npz files read without
trusting what they declare. Everything here needs only the input shapes (input name -> shape):
a `Network`'s, or a `Session`'s, which may have no network behind it (a compiled program)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np

from .network import Network, NetworkError, shown

#: What the inputs are for: a network, or its input name -> shape.
Inputs = Network | Mapping[str, tuple[int, ...]]


def input_shapes(of: Inputs) -> Mapping[str, tuple[int, ...]]:
    """Input name -> shape of a network, or the mapping itself."""
    return of.inputs if isinstance(of, Network) else of


def random_inputs(network: Inputs, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in [0, 1), one per network input."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(shape, dtype=np.float32)
            for name, shape in input_shapes(network).items()}


def check_inputs(network: Inputs, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs as C-contiguous float32 arrays of the right shapes, or a clear error."""
    shapes = input_shapes(network)
    missing = set(shapes) - set(inputs)
    extra = set(inputs) - set(shapes)
    if missing or extra:
        raise NetworkError(f"the network takes input(s) {', '.join(shapes)}; got "
                           f"{', '.join(inputs) or 'none'}")
    out = {}
    for name, shape in shapes.items():
        x = np.asarray(inputs[name])
        if x.shape != tuple(shape):
            raise NetworkError(f"input {name!r} has shape {list(x.shape)}, the network expects "
                               f"{list(shape)}")
        if x.dtype.kind not in "fiu":
            raise NetworkError(f"input {name!r} has dtype {x.dtype}; give numbers")
        out[name] = np.ascontiguousarray(x, dtype=np.float32)
    return out


def npy_header(stream: IO[bytes], what: str = "the input") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) an .npy stream declares, read without reading (or allocating) its data;
    NetworkError for anything that is not a plain numeric array (objects are never unpickled)."""
    shape, _, dtype = _npy_header(stream, what)
    return shape, dtype


def _npy_header(stream: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise NetworkError(f"{what} is not an .npy array: {str(error)[:200]}") from None
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.fields is not None:
        raise NetworkError(f"{what} holds {shown(str(dtype), 40)} values; give float or int "
                           "numbers")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def read_inputs(source: bytes | Path, network: Inputs, what: str = "the input"
                ) -> dict[str, np.ndarray]:
    """The network's inputs from an .npy (one input) or .npz (arrays by input name) file or
    its bytes. Every array's header is checked against the network's input first (names,
    count, shape, numeric dtype, the data really present), so nothing large is allocated for a
    file that only declares a large array, and nothing is unpickled."""
    shapes = input_shapes(network)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as error:
        raise NetworkError(f"cannot read {what}: {error.strerror}") from None
    if data.startswith(b"PK"):
        return _read_npz(data, shapes, what)
    if len(shapes) != 1:
        raise NetworkError(f"the network has {len(shapes)} inputs; give an .npz "
                           f"with arrays named {', '.join(shapes)}")
    name, wanted = next(iter(shapes.items()))
    return {name: _read_checked(data, name, wanted, what)}


def _read_checked(data: bytes, name: str, wanted: tuple[int, ...], what: str) -> np.ndarray:
    stream = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(stream, what)
    if shape != tuple(wanted):
        raise NetworkError(f"{what} {name!r} has shape {list(shape)[:8]}, the network expects "
                           f"{list(wanted)}")
    count = int(np.prod(shape, dtype=object))
    offset = stream.tell()
    if len(data) - offset < count * dtype.itemsize:
        raise NetworkError(f"{what} {name!r} declares {count * dtype.itemsize} bytes of data "
                           f"but holds {max(len(data) - offset, 0)}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return np.array(flat.reshape(shape, order="F" if fortran else "C"))    # an owned copy


def _read_npz(data: bytes, shapes: Mapping[str, tuple[int, ...]], what: str
              ) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise NetworkError(f"{what} is not an .npz archive: {str(error)[:200]}") from None
    with archive:
        members = archive.infolist()
        if len(members) > len(shapes):
            raise NetworkError(f"{what} holds {len(members)} arrays; the network takes "
                               f"{len(shapes)} ({', '.join(shapes)})")
        names = {m.filename.removesuffix(".npy"): m for m in members}
        if set(names) != set(shapes):
            given = ", ".join(shown(n, 60) for n in sorted(names)[:5])
            raise NetworkError(f"the network takes input(s) {', '.join(shapes)}; "
                               f"{what} holds {given or 'nothing'}")
        out = {}
        for name, member in names.items():
            wanted = shapes[name]
            limit = 4096 + int(np.prod(wanted, dtype=object)) * 8
            if member.file_size > limit:
                raise NetworkError(f"{what} {name!r} takes {member.file_size} bytes; an input "
                                   f"of shape {list(wanted)} needs at most {limit}")
            try:
                raw = archive.read(member)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError,
                    NotImplementedError) as error:
                raise NetworkError(f"cannot read {what} {name!r}: {str(error)[:200]}") from None
            out[name] = _read_checked(raw, name, wanted, what)
    return out
