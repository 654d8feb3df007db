"""Constant folding: what an ONNX model computes from constants only (shapes, Shape of a
tensor whose shape is known, the arithmetic on them, ConstantOfShape ...) is computed at import
by convplan's own NumPy code, for a fixed list of operators (`FOLDERS`), each output's size
checked against the limits (`ImportLimits.reserve`) before it is made. ConstantOfShape and
Expand give read-only broadcast views (no memory until a weight is made of them); a folder
never writes into its inputs.

A folder is registered with ``@_folds("OpType")``; it gets the node, its attributes (checked
against the ONNX schema) and its input values, and returns its output values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto

from convplan.selector.network import NetworkError

from .messages import label, short, type_name
from .shapes import (
    axis_index,
    axis_indices,
    broadcast,
    int_vector,
    permutation,
    reshape_shape,
    same_dtype,
    scalar,
    slice_index,
    slice_params,
    squeezed,
    unsqueezed,
)
from .weights import DTYPES, MAX_RANK

if TYPE_CHECKING:
    from .importer import Importer

Folder = Callable[["Importer", onnx.NodeProto, dict[str, Any], list[np.ndarray | None]],
                  list[np.ndarray]]
#: ONNX operator -> its folder.
FOLDERS: dict[str, Folder] = {}


def _folds(*ops: str) -> Callable[[Folder], Folder]:
    def decorate(fn: Folder) -> Folder:
        for op in ops:
            FOLDERS[op] = fn
        return fn
    return decorate


def _what(node: onnx.NodeProto) -> str:
    return f"the output of node {label(node)}"


def _axes_input(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                values: list[np.ndarray | None], index: int = 1) -> list[int] | None:
    """Axes as an attribute (before opset 13) or as an optional input."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(values) > index and values[index] is not None:
        return int_vector(node, values[index], "axes")
    return None


@_folds("Constant")
def _f_constant(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                values: list[np.ndarray | None]) -> list[np.ndarray]:
    given = [k for k in attrs if k.startswith(("value", "sparse"))]
    if len(given) != 1:
        raise NetworkError(f"node {label(node)} must have exactly one value attribute")
    key = given[0]
    if key == "value":
        return [attrs["value"]]
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64}
    if key not in kinds:
        raise NetworkError(f"node {label(node)}: a {key} Constant is not supported (convplan "
                           "reads numeric dense constants)")
    value = attrs[key]
    imp.limits.reserve(_what(node), [len(value)] if isinstance(value, list) else [], kinds[key])
    return [np.array(value, dtype=kinds[key])]


@_folds("ConstantOfShape")
def _f_constant_of_shape(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                         values: list[np.ndarray | None]) -> list[np.ndarray]:
    shape = int_vector(node, values[0], "the shape")
    fill = attrs.get("value", np.zeros(1, np.float32))
    if fill.size != 1:
        raise NetworkError(f"node {label(node)}: value must hold one element, not {fill.size}")
    imp.limits.reserve(_what(node), shape, fill.dtype)
    # A read-only view of the one value (counted as its full size): a weight made of it is
    # materialised once, when it becomes one (`Importer.weight`).
    return [np.broadcast_to(fill.reshape(()), shape)]


@_folds("Identity", "Dropout")
def _f_identity(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                values: list[np.ndarray | None]) -> list[np.ndarray]:
    refuse_training(imp, node)
    x = values[0]
    assert x is not None      # the schema requires the input
    out = [x]
    if len(node.output) > 1 and node.output[1]:       # Dropout's mask: all kept at inference
        imp.limits.reserve(_what(node), x.shape, np.bool_)
        out.append(np.ones(x.shape, dtype=np.bool_))
    return out


def refuse_training(imp: Importer, node: onnx.NodeProto) -> None:
    if node.op_type == "Dropout" and len(node.input) > 1 and node.input[1]:
        ratio = imp.const(node.input[1], "Dropout's ratio")
        if ratio.size != 1 or ratio.dtype.kind != "f":
            raise NetworkError(f"node {label(node)}: Dropout's ratio must be one float")
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode = imp.const(node.input[2], "Dropout's training_mode")
        if mode.size != 1 or bool(mode.reshape(-1)[0]):
            raise NetworkError(f"node {label(node)}: Dropout in training mode is random")


@_folds("Cast")
def _f_cast(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
            values: list[np.ndarray | None]) -> list[np.ndarray]:
    dtype = DTYPES.get(attrs["to"])
    if dtype is None:
        raise NetworkError(f"node {label(node)}: Cast to "
                           f"{type_name(TensorProto.DataType, attrs['to'])} is not supported")
    x = values[0]
    assert x is not None
    imp.limits.reserve(_what(node), x.shape, dtype)
    with np.errstate(all="ignore"):
        return [x.astype(dtype)]


@_folds("Shape")
def _f_shape(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    dims = x.shape[slice(attrs.get("start", 0), attrs.get("end"))]
    return [np.array(dims, dtype=np.int64)]


@_folds("Gather")
def _f_gather(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    data, indices = values[0], values[1]
    assert data is not None and indices is not None
    if data.ndim == 0:
        raise NetworkError(f"node {label(node)}: Gather of a rank-0 tensor")
    axis = axis_index(node, int(attrs.get("axis", 0)), data.ndim)
    if indices.dtype.kind not in "iu":
        raise NetworkError(f"node {label(node)}: indices must be integers, not {indices.dtype}")
    dim = data.shape[axis]
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    imp.limits.reserve(_what(node), shape, data.dtype)
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise NetworkError(f"node {label(node)}: an index is out of range for a dimension of "
                           f"{dim}")
    return [np.take(data, np.where(indices < 0, indices + dim, indices), axis=axis)]


@_folds("Unsqueeze")
def _f_unsqueeze(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                 values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    shape = unsqueezed(node, x.shape, _axes_input(imp, node, attrs, values))
    imp.limits.reserve(_what(node), shape, x.dtype, view=True)
    return [x.reshape(shape)]


@_folds("Squeeze")
def _f_squeeze(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
               values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    shape = squeezed(node, x.shape, _axes_input(imp, node, attrs, values))
    return [x.reshape(shape)]


@_folds("Concat")
def _f_concat(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    xs = [v for v in values if v is not None]
    same_dtype(node, xs)
    rank = xs[0].ndim
    if rank == 0:
        raise NetworkError(f"node {label(node)}: Concat of rank-0 tensors")
    axis = axis_index(node, int(attrs["axis"]), rank)
    for x in xs:
        if x.ndim != rank or any(a != b for i, (a, b) in
                                 enumerate(zip(x.shape, xs[0].shape, strict=True)) if i != axis):
            raise NetworkError(f"node {label(node)}: shapes {short(list(xs[0].shape))} and "
                               f"{short(list(x.shape))} differ outside axis {axis}")
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    imp.limits.reserve(_what(node), shape, xs[0].dtype)
    return [np.concatenate(xs, axis=axis)]


@_folds("Reshape")
def _f_reshape(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
               values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    return [x.reshape(reshape_shape(imp, node, attrs, x.shape))]


@_folds("Flatten")
def _f_flatten(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
               values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    axis = axis_index(node, int(attrs.get("axis", 1)), x.ndim, inclusive=True)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@_folds("Slice")
def _f_slice(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    index, shape = slice_index(node, slice_params(imp, node, attrs), x.shape)
    imp.limits.reserve(_what(node), shape, x.dtype)
    return [np.array(x[index])]


@_folds("Transpose")
def _f_transpose(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                 values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    perm = permutation(node, attrs, x.ndim)
    imp.limits.reserve(_what(node), x.shape, x.dtype)
    return [np.ascontiguousarray(x.transpose(perm))]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncated toward zero, as ONNX (and C) define it."""
    q = np.floor_divide(a, b)
    return q + ((np.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))).astype(q.dtype)


_ARITHMETIC: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Min": np.minimum,
    "Max": np.maximum, "Sum": np.add, "Equal": np.equal, "Less": np.less,
    "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}


@_folds("Div", *_ARITHMETIC)
def _f_arithmetic(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                  values: list[np.ndarray | None]) -> list[np.ndarray]:
    xs = [v for v in values if v is not None]
    same_dtype(node, xs)
    if node.op_type in ("And", "Or", "Xor") and xs[0].dtype != np.bool_:
        raise NetworkError(f"node {label(node)}: operands must be bool")
    shape = broadcast(node, [x.shape for x in xs])
    compare = node.op_type in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
    imp.limits.reserve(_what(node), shape, np.bool_ if compare else xs[0].dtype)
    with np.errstate(all="ignore"):
        if node.op_type == "Div":
            a, b = xs
            if a.dtype.kind in "iu":
                if not np.all(b):
                    raise NetworkError(f"node {label(node)}: integer division by zero")
                return [_int_div(a, b)]
            return [np.divide(a, b).astype(a.dtype, copy=False)]
        out = xs[0]
        for x in xs[1:]:
            out = _ARITHMETIC[node.op_type](out, x)
        return [np.array(np.broadcast_to(out, shape))]


_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Reciprocal": np.reciprocal,
    "Floor": np.floor, "Ceil": np.ceil, "Not": np.logical_not,
    "Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
}


@_folds(*_UNARY)
def _f_unary(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    if (node.op_type == "Not") != (x.dtype == np.bool_) or (
            node.op_type in ("Sqrt", "Reciprocal", "Floor", "Ceil") and x.dtype.kind != "f"):
        raise NetworkError(f"node {label(node)}: {node.op_type} of a {x.dtype} tensor")
    imp.limits.reserve(_what(node), x.shape, x.dtype)
    with np.errstate(all="ignore"):
        return [np.asarray(_UNARY[node.op_type](x)).astype(x.dtype, copy=False)]


@_folds("Clip")
def _f_clip(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
            values: list[np.ndarray | None]) -> list[np.ndarray]:
    """Bounds as attributes before opset 11, optional scalar inputs after (TF-style "same"
    padding clamps the pad it computes from the shapes at 0)."""
    x = values[0]
    assert x is not None
    if imp.opset < 11:
        bounds = [None if attrs.get(k) is None else np.asarray(attrs[k], x.dtype)
                  for k in ("min", "max")]
    else:
        given = [*values[1:3], None, None][:2]
        bounds = [None if v is None else scalar(node, v, what)
                  for v, what in zip(given, ("min", "max"), strict=True)]
    same_dtype(node, [x, *(b for b in bounds if b is not None)])
    imp.limits.reserve(_what(node), x.shape, x.dtype)
    out = np.array(x)
    if bounds[0] is not None:
        out = np.maximum(out, bounds[0])
    if bounds[1] is not None:
        out = np.minimum(out, bounds[1])
    return [out.astype(x.dtype, copy=False)]


@_folds("ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2")
def _f_reduce(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    """Reductions of constants (weight standardisation: BiT's StdConv computes each filter's
    mean and variance in the graph), in float64; axes as an attribute or an input, none or
    empty for every axis (or with noop_with_empty_axes none)."""
    x = values[0]
    assert x is not None
    if x.dtype.kind != "f" and node.op_type in ("ReduceMean", "ReduceL2"):
        raise NetworkError(f"node {label(node)}: {node.op_type} of a {x.dtype} tensor")
    axes = _axes_input(imp, node, attrs, values)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.ndim))
    reduced = tuple(axis_indices(node, axes, x.ndim))
    keep = bool(attrs.get("keepdims", 1))
    shape = [1 if i in reduced else d for i, d in enumerate(x.shape) if keep or i not in reduced]
    imp.limits.reserve(_what(node), shape, x.dtype)
    wide = x.astype(np.float64) if x.dtype.kind == "f" else x
    with np.errstate(all="ignore"):
        if node.op_type == "ReduceMax":
            out = np.max(wide, axis=reduced, keepdims=keep)
        elif node.op_type == "ReduceSum":
            out = np.sum(wide, axis=reduced, keepdims=keep)
        elif node.op_type == "ReduceMean":
            out = np.mean(wide, axis=reduced, keepdims=keep)
        else:
            out = np.sqrt(np.sum(np.square(wide), axis=reduced, keepdims=keep))
    return [np.asarray(out).astype(x.dtype)]


@_folds("BatchNormalization")
def _f_batchnorm(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
                 values: list[np.ndarray | None]) -> list[np.ndarray]:
    """Batch-norm of a constant over axis 1, in float64: with the given statistics, or in
    training mode with the constant's own (BiT's weight standardisation is exported so), the
    running statistics then as ONNX defines them (deterministic: nothing is random)."""
    x = values[0]
    assert x is not None
    if x.ndim < 2 or x.dtype.kind != "f":
        raise NetworkError(f"node {label(node)}: BatchNormalization of a {x.dtype} tensor of "
                           f"shape {short(list(x.shape))}")
    stats = [v for v in values[1:5] if v is not None]
    if len(stats) != 4 or any(s.shape != (x.shape[1],) for s in stats):
        raise NetworkError(f"node {label(node)}: the statistics must have shape "
                           f"[{x.shape[1]}]")
    imp.limits.reserve(_what(node), x.shape, np.float64)
    view = (1, -1) + (1,) * (x.ndim - 2)
    scale, bias, mean, var = (s.astype(np.float64) for s in stats)
    wide = x.astype(np.float64)
    training = bool(attrs.get("training_mode", 0))
    if training:
        axes = (0, *range(2, x.ndim))
        used_mean, used_var = wide.mean(axis=axes), wide.var(axis=axes)
    elif any(node.output[1:]):
        raise NetworkError(f"node {label(node)}: BatchNormalization's training outputs without "
                           "training_mode")
    else:
        used_mean, used_var = mean, var
    with np.errstate(all="ignore"):
        y = (wide - used_mean.reshape(view)) / np.sqrt(used_var.reshape(view)
                                                       + float(attrs.get("epsilon", 1e-5)))
        out = [(y * scale.reshape(view) + bias.reshape(view)).astype(x.dtype)]
    if training:
        momentum = float(attrs.get("momentum", 0.9))
        out += [(mean * momentum + used_mean * (1 - momentum)).astype(stats[2].dtype),
                (var * momentum + used_var * (1 - momentum)).astype(stats[3].dtype)]
    return out


@_folds("Where")
def _f_where(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    cond, a, b = values
    assert cond is not None and a is not None and b is not None
    if cond.dtype != np.bool_:
        raise NetworkError(f"node {label(node)}: the condition must be bool")
    same_dtype(node, [a, b])
    shape = broadcast(node, [cond.shape, a.shape, b.shape])
    imp.limits.reserve(_what(node), shape, a.dtype)
    return [np.where(cond, a, b)]


@_folds("Range")
def _f_range(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
             values: list[np.ndarray | None]) -> list[np.ndarray]:
    start, limit, delta = (scalar(node, v, w) for v, w in zip(
        values, ("start", "limit", "delta"), strict=True))
    same_dtype(node, [start, limit, delta])
    if start.dtype.kind == "f":
        s, lim, d = float(start), float(limit), float(delta)
        if not all(math.isfinite(v) for v in (s, lim, d)) or d == 0:
            raise NetworkError(f"node {label(node)}: start, limit and delta must be finite and "
                               "delta non-zero")
        count = max(math.ceil((lim - s) / d), 0)
    elif start.dtype.kind in "iu":
        s, lim, d = int(start), int(limit), int(delta)
        if d == 0:
            raise NetworkError(f"node {label(node)}: delta is 0")
        count = max(-((s - lim) // d), 0)
    else:
        raise NetworkError(f"node {label(node)}: Range of {start.dtype}")
    imp.limits.reserve(_what(node), [count], start.dtype)
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]


@_folds("Expand")
def _f_expand(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
              values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    target = int_vector(node, values[1], "the shape")
    if len(target) > MAX_RANK or min(target, default=1) < 0:
        raise NetworkError(f"node {label(node)}: shape {short(target)} is not a shape")
    shape = broadcast(node, [x.shape, tuple(target)])
    imp.limits.reserve(_what(node), shape, x.dtype)
    return [np.broadcast_to(x, shape)]     # a view, as ConstantOfShape's


@_folds("Tile")
def _f_tile(imp: Importer, node: onnx.NodeProto, attrs: dict[str, Any],
            values: list[np.ndarray | None]) -> list[np.ndarray]:
    x = values[0]
    assert x is not None
    repeats = int_vector(node, values[1], "repeats")
    if len(repeats) != x.ndim or min(repeats, default=0) < 0:
        raise NetworkError(f"node {label(node)}: repeats {short(repeats)} do not fit a "
                           f"rank-{x.ndim} input")
    imp.limits.reserve(_what(node), [d * r for d, r in zip(x.shape, repeats, strict=True)], x.dtype)
    return [np.tile(x, repeats)]
