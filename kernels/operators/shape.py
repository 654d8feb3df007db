"""Operators that move data without arithmetic: joining, splitting, slicing, reshaping and
transposing tensors. Reshape, flatten and identity are views (no bytes); the others write
contiguous copies straight from strided views of their inputs (no intermediate copy)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import Layout
from .base import Operator, Shape, small_ufunc_buffers
from .checks import axis_index, int_list, integer, size
from .registry import register
from .softmax import physical_axis


def copy_strided(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for a strided ``src``, with the small ufunc buffer size."""
    with small_ufunc_buffers():
        np.copyto(dst, src)


def as_view(x: np.ndarray, shape: Shape, op: str) -> np.ndarray:
    """``x`` reshaped without copying (the executor's activations are contiguous)."""
    try:
        return np.reshape(x, shape, copy=False)
    except ValueError:
        raise ValueError(f"{op}: the input (strides {x.strides}) cannot be viewed as shape "
                         f"{shape} without a copy") from None


@register
class Identity(Operator):
    op = "identity"
    summary = "y = x (Dropout at inference); the output is the input itself"
    layouts = ("NCHW", "NHWC")
    view = True

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        return [tuple(shapes[0])]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        self._writes_nothing(out, workspace)
        return [xs[0]]


@register
class Concat(Operator):
    op = "concat"
    summary = "join activations along one axis (Inception branches, DenseNet blocks)"
    arity = (1, None)
    layouts = ("NCHW", "NHWC")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"axis": None}

    def _check_attrs(self) -> None:
        if self.attrs["axis"] is None:
            raise ValueError("concat: axis is required")
        self.attrs["axis"] = integer(self.attrs["axis"], "concat: axis")

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        first = tuple(shapes[0])
        axis = axis_index(self.attrs["axis"], len(first), "concat: axis")
        for shape in shapes[1:]:
            shape = tuple(shape)
            if len(shape) != len(first) or any(
                    a != b for i, (a, b) in enumerate(zip(shape, first, strict=True))
                    if i != axis):
                raise ValueError(f"concat: input shapes {first} and {shape} differ outside "
                                 f"axis {self.attrs['axis']}")
        total = sum(shape[axis] for shape in shapes)
        return [(*first[:axis], total, *first[axis + 1:])]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        rank = xs[0].ndim
        axis = physical_axis(axis_index(self.attrs["axis"], rank, "concat: axis"), layout, rank)
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        outs = self._outputs(xs, weights, [tuple(shape)], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        start = 0
        for x in xs:
            index = (slice(None),) * axis + (slice(start, start + x.shape[axis]),)
            copy_strided(outs[0][index], x)
            start += x.shape[axis]
        return outs


@register
class Split(Operator):
    op = "split"
    summary = "cut an activation into parts along one axis (the inverse of concat)"
    layouts = ("NCHW", "NHWC")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"axis": 0, "sizes": None}

    def _check_attrs(self) -> None:
        a = self.attrs
        a["axis"] = integer(a["axis"], "split: axis")
        if a["sizes"] is None:
            raise ValueError("split: sizes is required")
        a["sizes"] = int_list(a["sizes"], "split: sizes", minimum=1)

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        axis = axis_index(self.attrs["axis"], len(shape), "split: axis")
        sizes = self.attrs["sizes"]
        if sum(sizes) != shape[axis]:
            raise ValueError(f"split: sizes {list(sizes)} add up to {sum(sizes)}, but axis "
                             f"{self.attrs['axis']} of shape {shape} has {shape[axis]}")
        return [(*shape[:axis], s, *shape[axis + 1:]) for s in sizes]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x = xs[0]
        axis = physical_axis(axis_index(self.attrs["axis"], x.ndim, "split: axis"), layout,
                             x.ndim)
        indices, start = [], 0
        for part in self.attrs["sizes"]:
            indices.append((slice(None),) * axis + (slice(start, start + part),))
            start += part
        outs = self._outputs(xs, weights, [x[index].shape for index in indices], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        for index, part_out in zip(indices, outs, strict=True):
            copy_strided(part_out, x[index])
        return outs


@register
class Flatten(Operator):
    op = "flatten"
    summary = "(d0 .. dk-1, dk .. dn) -> (d0*..*dk-1, dk*..*dn), before a classifier; a view"
    view = True

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"axis": 1}

    def _check_attrs(self) -> None:
        self.attrs["axis"] = integer(self.attrs["axis"], "flatten: axis")

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        axis = axis_index(self.attrs["axis"], len(shape), "flatten: axis", inclusive=True)
        return [(math.prod(shape[:axis]), math.prod(shape[axis:]))]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        self._writes_nothing(out, workspace)
        return [as_view(xs[0], self.output_shapes([xs[0].shape])[0], self.op)]


@register
class Reshape(Operator):
    op = "reshape"
    summary = "the same elements in another shape (0 keeps that input dimension, one -1 is "\
              "inferred); a view"
    view = True

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"shape": None}

    def _check_attrs(self) -> None:
        if self.attrs["shape"] is None:
            raise ValueError("reshape: shape is required")
        shape = int_list(self.attrs["shape"], "reshape: shape", minimum=-1, nonempty=False)
        if shape.count(-1) > 1:
            raise ValueError(f"reshape: shape {list(shape)} has more than one -1")
        self.attrs["shape"] = shape

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        source = tuple(shapes[0])
        target = list(self.attrs["shape"])
        for i, d in enumerate(target):
            if d == 0:
                if i >= len(source):
                    raise ValueError(f"reshape: shape {list(self.attrs['shape'])} copies "
                                     f"dimension {i} (0), but the input {source} has only "
                                     f"{len(source)}")
                target[i] = source[i]
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if known == 0 or size(source) % known:
                raise ValueError(f"reshape: cannot infer the -1 in {list(self.attrs['shape'])} "
                                 f"for an input of shape {source}")
            target[target.index(-1)] = size(source) // known
        if size(target) != size(source):
            raise ValueError(f"reshape: shape {list(self.attrs['shape'])} holds {size(target)} "
                             f"elements, the input {source} has {size(source)}")
        return [tuple(target)]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        self._writes_nothing(out, workspace)
        return [as_view(xs[0], self.output_shapes([xs[0].shape])[0], self.op)]


@register
class Transpose(Operator):
    op = "transpose"
    summary = "permute the axes (a contiguous copy); no perm reverses them"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"perm": None}

    def _check_attrs(self) -> None:
        perm = self.attrs["perm"]
        if perm is not None:
            perm = int_list(perm, "transpose: perm", minimum=0, nonempty=False)
            if sorted(perm) != list(range(len(perm))):
                raise ValueError(f"transpose: perm {list(perm)} is not a permutation")
            self.attrs["perm"] = perm

    def _perm(self, rank: int) -> tuple[int, ...]:
        perm = self.attrs["perm"]
        if perm is None:
            return tuple(reversed(range(rank)))
        if len(perm) != rank:
            raise ValueError(f"transpose: perm {list(perm)} does not fit a rank-{rank} input")
        return perm

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        return [tuple(shape[p] for p in self._perm(len(shape)))]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        view = xs[0].transpose(self._perm(xs[0].ndim))
        outs = self._outputs(xs, weights, [view.shape], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        copy_strided(outs[0], view)
        return outs


@register
class Slice(Operator):
    op = "slice"
    summary = "a strided sub-tensor (ONNX Slice: negative indices count from the end, "\
              "out-of-range ends are clamped, steps may be negative); a contiguous copy"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"starts": None, "ends": None, "axes": None, "steps": None}

    def _check_attrs(self) -> None:
        a = self.attrs
        for name in ("starts", "ends"):
            if a[name] is None:
                raise ValueError(f"slice: {name} is required")
            a[name] = int_list(a[name], f"slice: {name}")
        n = len(a["starts"])
        for name in ("ends", "axes", "steps"):
            if a[name] is not None:
                a[name] = int_list(a[name], f"slice: {name}")
                if len(a[name]) != n:
                    raise ValueError(f"slice: {name} has {len(a[name])} values, starts {n}")
        if a["steps"] is not None and 0 in a["steps"]:
            raise ValueError(f"slice: steps {list(a['steps'])} contain 0")

    def index(self, shape: Shape) -> tuple[slice, ...]:
        """The NumPy index of the slice of a tensor of this shape (ONNX's clamping rules)."""
        a = self.attrs
        n = len(a["starts"])
        axes = a["axes"] if a["axes"] is not None else tuple(range(n))
        steps = a["steps"] if a["steps"] is not None else (1,) * n
        index = [slice(None)] * len(shape)
        seen = set()
        for start, end, axis, step in zip(a["starts"], a["ends"], axes, steps, strict=True):
            axis = axis_index(axis, len(shape), "slice: axis")
            if axis in seen:
                raise ValueError(f"slice: axis {axis} appears twice in axes {list(axes)}")
            seen.add(axis)
            dim = shape[axis]
            start = start + dim if start < 0 else start
            end = end + dim if end < 0 else end
            if step > 0:
                start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            else:
                start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            # end -1 with a negative step means "through index 0", which NumPy spells None
            index[axis] = slice(start, None if end < 0 else end, step)
        return tuple(index)

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape = tuple(shapes[0])
        index = self.index(shape)
        out = tuple(len(range(*s.indices(d))) for s, d in zip(index, shape, strict=True))
        if 0 in out:
            raise ValueError(f"slice: starts {list(self.attrs['starts'])}, ends "
                             f"{list(self.attrs['ends'])} select nothing of shape {shape}")
        return [out]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        view = xs[0][self.index(xs[0].shape)]
        outs = self._outputs(xs, weights, [view.shape], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        copy_strided(outs[0], view)
        return outs



@register
class Expand(Operator):
    op = "expand"
    summary = ("broadcast to a shape (ONNX Expand: NumPy's rules, either side may be larger; "
               "torch's expand_as before an element-wise op); a contiguous copy")

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"shape": None}

    def _check_attrs(self) -> None:
        if self.attrs["shape"] is None:
            raise ValueError("expand: shape is required")
        self.attrs["shape"] = int_list(self.attrs["shape"], "expand: shape", minimum=1)

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        try:
            return [tuple(np.broadcast_shapes(tuple(shapes[0]), self.attrs["shape"]))]
        except ValueError:
            raise ValueError(f"expand: shape {list(self.attrs['shape'])} does not broadcast "
                             f"with the input's {tuple(shapes[0])}") from None

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        shape = self.output_shapes([xs[0].shape])[0]
        outs = self._outputs(xs, weights, [shape], inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        copy_strided(outs[0], np.broadcast_to(xs[0], shape))
        return outs


@register
class Tile(Operator):
    op = "tile"
    summary = "repeat the whole tensor along each axis (ONNX Tile); a contiguous copy"

    @classmethod
    def attribute_defaults(cls) -> dict[str, Any]:
        return {"repeats": None}

    def _check_attrs(self) -> None:
        if self.attrs["repeats"] is None:
            raise ValueError("tile: repeats is required")
        self.attrs["repeats"] = int_list(self.attrs["repeats"], "tile: repeats", minimum=1)

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        self.check_arity(len(shapes))
        shape, repeats = tuple(shapes[0]), self.attrs["repeats"]
        if len(repeats) != len(shape):
            raise ValueError(f"tile: repeats {list(repeats)} do not fit a rank-{len(shape)} "
                             "input")
        return [tuple(d * r for d, r in zip(shape, repeats, strict=True))]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False,
            out: Sequence[np.ndarray] | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
        x, repeats = xs[0], self.attrs["repeats"]
        outs = self._outputs(xs, weights, self.output_shapes([x.shape]), inplace, out)
        self._workspace(xs, weights, layout, outs, workspace)
        # the output as (r0, d0, r1, d1, ...): every (r0, r1, ...) block is the input
        blocks = outs[0].reshape([n for pair in zip(repeats, x.shape, strict=True)
                                  for n in pair])
        copy_strided(blocks, x.reshape([n for d in x.shape for n in (1, d)]))
        return outs
