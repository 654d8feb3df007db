"""Operators other than convolution, found by op name through `registry`."""

# isort: skip_file
from . import conv, elementwise, pooling, normalization, softmax, shape, linear, reduce, pad, resize  # noqa: F401
from . import convtranspose  # noqa: F401
from .base import Operator, Shape
from .registry import make, names, operator_class, register

__all__ = ["Operator", "Shape", "make", "names", "operator_class", "register"]
