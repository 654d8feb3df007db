"""Element-wise operators: activations and broadcasting arithmetic. Layout-agnostic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..spec import Layout
from .base import Operator, Shape
from .registry import register


class Unary(Operator):
    """y = f(x), same shape; runs in any layout and may overwrite its input."""

    layouts = ("NCHW", "NHWC")
    inplace = True

    def output_shapes(self, shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(shapes[0])]

    def run(self, xs: Sequence[np.ndarray], weights: Mapping[str, np.ndarray],
            layout: Layout = "NCHW", inplace: bool = False) -> list[np.ndarray]:
        x = xs[0]
        out = x if inplace else np.empty_like(x)
        self._apply(x, out)
        return [out]

    def _apply(self, x: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError


@register
class Relu(Unary):
    op = "relu"
    summary = "max(x, 0)"

    def _apply(self, x: np.ndarray, out: np.ndarray) -> None:
        np.maximum(x, 0, out=out)
