"""What an ONNX node's axis and shape arguments mean: axes in range, broadcasting, and the
output shapes of Reshape, (Un)Squeeze, Slice and Transpose, shared by the folders and the
converters, each refusing a bad argument with a message that names the node."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from convplan.kernels import operators
from convplan.kernels.operators import Shape
from convplan.selector.network import NetworkError

from .messages import label, short
from .weights import MAX_RANK

if TYPE_CHECKING:
    from .importer import Importer


def axis_index(node: onnx.NodeProto, axis: int, rank: int, what: str = "axis",
               inclusive: bool = False) -> int:
    """An ONNX axis (negative counts from the end) as an index, or a NetworkError."""
    index = axis + rank if axis < 0 else axis
    if not 0 <= index < rank + (1 if inclusive else 0):
        raise NetworkError(f"node {label(node)}: {what} {short(axis)} is out of range for a "
                           f"rank-{rank} input")
    return index


def axis_indices(node: onnx.NodeProto, axes: Sequence[int], rank: int) -> list[int]:
    out = [axis_index(node, int(a), rank) for a in axes]
    if len(set(out)) != len(out):
        raise NetworkError(f"node {label(node)}: axes {short(list(axes))} repeat an axis")
    return out


def int_vector(node: onnx.NodeProto, value: np.ndarray | None, what: str) -> list[int]:
    """A 1-D integer tensor (a shape, axes, repeats ...) as a list of ints."""
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1:
        shown = "missing" if value is None else f"{value.dtype} of shape {list(value.shape)}"
        raise NetworkError(f"node {label(node)}: {what} must be a 1-D integer tensor, not "
                           f"{shown}")
    if value.size > 1 << 16:
        raise NetworkError(f"node {label(node)}: {what} has {value.size} values")
    return [int(v) for v in value.reshape(-1)]


def scalar(node: onnx.NodeProto, value: np.ndarray | None, what: str) -> np.ndarray:
    if value is None or value.size != 1:
        raise NetworkError(f"node {label(node)}: {what} must hold one value")
    return value.reshape(())


def same_dtype(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> None:
    if len({v.dtype for v in values}) > 1:
        raise NetworkError(f"node {label(node)}: operands of different types "
                           f"({', '.join(sorted({str(v.dtype) for v in values}))})")


def broadcast(node: onnx.NodeProto, shapes: Sequence[Shape]) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise NetworkError(f"node {label(node)}: shapes "
                           f"{short([list(s) for s in shapes])} do not broadcast") from None


def unsqueezed(node: onnx.NodeProto, shape: Shape, axes: list[int] | None) -> list[int]:
    if not axes:
        raise NetworkError(f"node {label(node)}: Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    out = list(shape)
    for a in sorted(axis_indices(node, axes, rank)):
        out.insert(a, 1)
    return out


def squeezed(node: onnx.NodeProto, shape: Shape, axes: list[int] | None) -> list[int]:
    if not shape:
        raise NetworkError(f"node {label(node)}: Squeeze of a rank-0 tensor")
    if axes is None or not axes:
        return [d for d in shape if d != 1]
    drop = set(axis_indices(node, axes, len(shape)))
    if any(shape[a] != 1 for a in drop):
        raise NetworkError(f"node {label(node)}: axes {short(axes)} of shape "
                           f"{short(list(shape))} are not all 1")
    return [d for i, d in enumerate(shape) if i not in drop]


def _reshape_target(node: onnx.NodeProto, source: Shape, target: Sequence[int],
                    allowzero: bool) -> list[int]:
    """ONNX Reshape's output shape: 0 copies the input's dimension (unless allowzero), one -1
    is inferred, and the element count must not change."""
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(source):
                raise NetworkError(f"node {label(node)}: shape {short(list(target))} copies "
                                   f"dimension {i}, but the input has rank {len(source)}")
            d = source[i]
        elif d < -1:
            raise NetworkError(f"node {label(node)}: shape {short(list(target))} has a "
                               "negative dimension")
        out.append(int(d))
    if out.count(-1) > 1:
        raise NetworkError(f"node {label(node)}: shape {short(list(target))} has more than "
                           "one -1")
    size = math.prod(source)
    known = math.prod(d for d in out if d != -1)
    if -1 in out:
        if known == 0 or size % known:
            raise NetworkError(f"node {label(node)}: cannot infer the -1 of "
                               f"{short(list(target))} for shape {short(list(source))}")
        out[out.index(-1)] = size // known
    if math.prod(out) != size:
        raise NetworkError(f"node {label(node)}: shape {short(list(target))} does not hold "
                           f"the {size} elements of shape {short(list(source))}")
    if len(out) > MAX_RANK:
        raise NetworkError(f"node {label(node)}: rank {len(out)}; at most {MAX_RANK}")
    return out


def reshape_shape(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                  source: Shape) -> list[int]:
    if imp.opset < 5:
        if "shape" not in attrs:
            raise NetworkError(f"node {label(node)}: Reshape (opset {imp.opset}) needs its "
                               "shape attribute")
        target = [int(s) for s in attrs["shape"]]
    else:
        target = int_vector(node, imp.const(node.input[1], "Reshape's shape"), "the shape")
    return _reshape_target(node, source, target, bool(attrs.get("allowzero", 0)))


def slice_params(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any]
                 ) -> dict[str, list[int] | None]:
    """Slice's starts, ends, axes and steps: attributes before opset 10, constant inputs after."""
    if imp.opset < 10:
        params = {k: attrs.get(k) for k in ("starts", "ends", "axes")}
        params["steps"] = None
        if params["starts"] is None or params["ends"] is None:
            raise NetworkError(f"node {label(node)}: Slice (opset {imp.opset}) needs starts "
                               "and ends attributes")
        return params
    names = list(node.input[1:5]) + [""] * (5 - len(node.input))
    return {k: int_vector(node, imp.const(i, f"Slice's {k}"), k) if i else None
            for k, i in zip(("starts", "ends", "axes", "steps"), names, strict=True)}


def slice_index(node: onnx.NodeProto, params: dict[str, list[int] | None],
                shape: Shape) -> tuple[tuple[slice, ...], list[int]]:
    try:
        index = operators.make("slice", **params).index(shape)
    except ValueError as error:
        raise NetworkError(f"node {label(node)}: {short(str(error))}") from None
    return index, [len(range(*s.indices(d))) for s, d in zip(index, shape, strict=True)]


def permutation(node: onnx.NodeProto, attrs: dict[str, Any], rank: int) -> list[int]:
    perm = [int(p) for p in attrs.get("perm", reversed(range(rank)))]
    if sorted(perm) != list(range(rank)):
        raise NetworkError(f"node {label(node)}: perm {short(perm)} is not a permutation of "
                           f"the {rank} axes")
    return perm
