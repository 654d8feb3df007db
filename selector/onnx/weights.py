"""The constants an import holds: the limits each is checked against before it is made
(`ImportLimits`), initializers and tensor attributes decoded within them (`decode`), and
per-channel affines folded into the convolution's weights (`fold_affine`), in blocks into a
float32 result (no float64 temporary the size of the weights)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, numpy_helper

from convplan.kernels.operators import Shape
from convplan.selector.network import LimitError, NetworkError

from .messages import quote, short, type_name
from .reading import Payload

#: Default limit of one tensor (an activation, an initializer or a folded constant): 256 Mi
#: float32 elements.
MAX_TENSOR_BYTES = 1 << 30
#: Default limit of all the constants an import holds (initializers, constants and everything
#: folded from them) and of the weights the network keeps (VGG-19's are ~550 MB).
MAX_WEIGHT_BYTES = 1 << 30
#: The most dimensions a tensor may have (NumPy's own limit is 64).
MAX_RANK = 32
#: The float64 temporaries folding a weight may hold at once (one block of output channels).
FOLD_BLOCK_BYTES = 1 << 20

#: The tensor element types convplan reads.
DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.INT8: np.dtype(np.int8),
    TensorProto.INT16: np.dtype(np.int16), TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64), TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.UINT16: np.dtype(np.uint16), TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.UINT64: np.dtype(np.uint64), TensorProto.BOOL: np.dtype(np.bool_),
}
#: Where a tensor without raw_data keeps its values (one entry per element).
_TYPED_FIELD = {TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data",
                TensorProto.INT64: "int64_data", TensorProto.UINT32: "uint64_data",
                TensorProto.UINT64: "uint64_data"}


@dataclass
class ImportLimits:
    """What one import may hold: every tensor (activation, initializer, folded constant) at
    most ``max_tensor_bytes``, all constants together at most ``max_weight_bytes``."""

    max_tensor_bytes: int
    max_weight_bytes: int
    #: Every constant held so far.
    const_bytes: int = 0

    def reserve(self, what: str, shape: Sequence[int], dtype: Any, *, view: bool = False) -> None:
        """Check a constant of this shape and type against the limits before it is made
        (a view costs nothing more)."""
        shape = [int(d) for d in shape]
        if len(shape) > MAX_RANK:
            raise NetworkError(f"{what} would have rank {len(shape)}; at most {MAX_RANK}")
        if min(shape, default=0) < 0:
            raise NetworkError(f"{what} would have a negative dimension {short(shape)}")
        count = math.prod(shape)
        nbytes = count * np.dtype(dtype).itemsize
        if nbytes > self.max_tensor_bytes:
            raise LimitError(f"{what} would hold {count} elements ({nbytes} bytes); one tensor "
                             f"may have at most {self.max_tensor_bytes} bytes")
        if view:
            return
        if self.const_bytes + nbytes > self.max_weight_bytes:
            raise LimitError(f"{what}: the model's constants would exceed "
                             f"{self.max_weight_bytes} bytes (the weight limit)")
        self.const_bytes += nbytes

    def check_activation(self, tensor: str, shape: Shape, where: str) -> None:
        """An activation's shape (float32): its rank, not empty, within the tensor limit."""
        if len(shape) > MAX_RANK:
            raise NetworkError(f"{where}: {quote(tensor)} would have rank {len(shape)}; at most "
                               f"{MAX_RANK}")
        if min(shape, default=1) < 1:
            raise NetworkError(f"{where}: {quote(tensor)} would have shape {short(list(shape))} "
                               "(empty)")
        nbytes = 4 * math.prod(shape)
        if nbytes > self.max_tensor_bytes:
            raise LimitError(f"{where}: {quote(tensor)} of shape {short(list(shape))} would take "
                             f"{nbytes} bytes; one tensor may have at most "
                             f"{self.max_tensor_bytes}")


def decode(tensor: TensorProto, what: str, limits: ImportLimits,
           payload: Payload | None = None, *, read: bool = True) -> np.ndarray:
    """A TensorProto as an array: its type, dims and data lengths checked, and its size
    against ``limits``, before anything is decoded. ``payload`` is its ``raw_data`` left in the
    file (`reading.strip_payloads`), read straight into the new array, or, without ``read``,
    not read at all: the array is zeros of its shape, a view that holds no memory."""
    dtype = DTYPES.get(tensor.data_type)
    if dtype is None:
        raise NetworkError(f"{what} has element type "
                           f"{type_name(TensorProto.DataType, tensor.data_type)}, which "
                           "convplan does not read")
    dims = [int(d) for d in tensor.dims]
    limits.reserve(what, dims, dtype)
    count = math.prod(dims)
    if tensor.HasField("segment"):
        raise NetworkError(f"{what} is a segment of a tensor (not supported)")
    raw = payload is not None or tensor.HasField("raw_data")
    if payload is not None:
        have, want = payload.length, count * dtype.itemsize
    elif raw:
        have, want = len(tensor.raw_data), count * dtype.itemsize
    else:
        have = len(getattr(tensor, _TYPED_FIELD.get(tensor.data_type, "int32_data")))
        want = count
    if have != want or len(tensor.string_data):
        raise NetworkError(f"{what} declares shape {short(dims)} but holds {have} "
                           f"{'bytes' if raw else 'values'}, not {want}")
    if payload is not None and not read:
        return np.broadcast_to(np.zeros((), dtype), dims)
    if payload is not None:
        out = np.empty(dims, dtype.newbyteorder("<"))     # raw_data is little-endian
        payload.read_into(out)
        return out.astype(dtype, copy=False)
    try:
        return np.asarray(numpy_helper.to_array(tensor)).astype(dtype, copy=False)
    except (ValueError, TypeError) as error:
        raise NetworkError(f"{what} cannot be decoded: {short(str(error))}") from None


def fold_affine(layers: list[dict[str, Any]], weights: dict[str, dict[str, np.ndarray]],
                outputs: set[str], *, values: bool = True,
                owned: bool = False) -> list[dict[str, Any]]:
    """Fold every per-channel affine layer (batchnorm) into the conv (or affine) that alone
    feeds it: w' = w * scale, b' = b * scale + shift. The conv takes over the output's name.
    Without ``values`` only the layers are rewritten (the weights are shapes only). With
    ``owned`` (nothing outside ``weights`` refers to its arrays, as in an import) a conv weight
    that no other layer shares is folded in place."""
    consumers: dict[str, int] = {}
    for layer in layers:
        for t in layer["inputs"]:
            consumers[t] = consumers.get(t, 0) + 1
    by_output = {out: layer for layer in layers for out in layer.get("outputs", [layer["name"]])}
    kept: list[dict[str, Any]] = []
    for layer in layers:
        source = by_output.get(layer["inputs"][0]) if layer["op"] == "batchnorm" else None
        tensor = layer["inputs"][0]
        if (source is None or source["op"] not in ("conv", "batchnorm")
                or consumers.get(tensor, 0) != 1 or tensor in outputs):
            kept.append(layer)
            continue
        w = weights[source["name"]]
        if not values:
            if source["op"] == "conv":
                w["bias"] = weights[layer["name"]]["shift"]
                source["bias"] = True
        elif source["op"] == "conv":
            scale = weights[layer["name"]]["scale"].astype(np.float64)
            shift = weights[layer["name"]]["shift"].astype(np.float64)
            shared = not owned or _shared(w["weight"], weights)
            w["weight"] = scaled_rows(w["weight"], scale, out=None if shared else w["weight"])
            bias = w.get("bias", np.zeros(len(scale))).astype(np.float64)
            w["bias"] = (bias * scale + shift).astype(np.float32)
            source["bias"] = True
        else:
            scale = weights[layer["name"]]["scale"].astype(np.float64)
            shift = weights[layer["name"]]["shift"].astype(np.float64)
            w["shift"] = (w["shift"].astype(np.float64) * scale + shift).astype(np.float32)
            w["scale"] = (w["scale"].astype(np.float64) * scale).astype(np.float32)
        out = layer.get("outputs", [layer["name"]])
        source["outputs"] = out
        by_output[out[0]] = source
        del weights[layer["name"]]
    return kept


def _shared(w: np.ndarray, weights: dict[str, dict[str, np.ndarray]]) -> bool:
    """Whether ``w`` must not be written: not a writeable float32 array of its own, or its
    memory is (perhaps) also another weight's."""
    if w.base is not None or not w.flags.writeable or w.dtype != np.float32:
        return True
    held = [a for ws in weights.values() for a in ws.values()]
    return sum(a is w for a in held) > 1 or any(
        a is not w and np.may_share_memory(a, w) for a in held)


def scaled_rows(w: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(w * scale[:, None, ...]).astype(float32)``, the same float64 product rounded once,
    computed in blocks of rows (output channels) into ``out`` (a new float32 array, or ``w``
    itself), so that the float64 temporaries stay within FOLD_BLOCK_BYTES (or one row)."""
    if out is None:
        out = np.empty(w.shape, np.float32)
    row_bytes = 8 * math.prod(w.shape[1:])
    block = max(1, FOLD_BLOCK_BYTES // max(row_bytes, 1))
    per_row = (slice(None),) + (None,) * (w.ndim - 1)
    for start in range(0, len(w), block):
        rows = slice(start, start + block)
        out[rows] = w[rows] * scale[rows][per_row]
    return out
