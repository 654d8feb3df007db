"""Attribute checks shared by the operators: each normalises one value or raises a ValueError
that names the operator and the attribute, so a bad network description says what is wrong."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Shape


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def integer(value: Any, what: str, *, minimum: int | None = None) -> int:
    """``value`` as an int (not a bool), at least ``minimum`` when given."""
    if not is_int(value):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return int(value)


def real(value: Any, what: str, *, allow_none: bool = False) -> float | None:
    """``value`` as a finite Python float (a Python float keeps NumPy from upcasting float32)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def flag(value: Any, what: str) -> bool:
    """A bool, or the ints 0 and 1 (as ONNX writes them)."""
    if isinstance(value, bool | np.bool_) or (is_int(value) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{what} must be a bool, got {value!r}")


def int_list(value: Any, what: str, *, minimum: int | None = None,
             nonempty: bool = True) -> tuple[int, ...]:
    """A list of ints as a tuple, each at least ``minimum`` when given."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{what} must be a list of ints, got {value!r}")
    items = tuple(value)
    if nonempty and not items:
        raise ValueError(f"{what} must not be empty")
    return tuple(integer(v, what, minimum=minimum) for v in items)


def shape_of(value: Any, what: str) -> Shape:
    """A tensor shape: a list of positive ints (possibly empty, for a scalar)."""
    return int_list(value, what, minimum=1, nonempty=False)


def axis_index(axis: int, rank: int, what: str, *, inclusive: bool = False) -> int:
    """``axis`` (negative counts from the end) as an index into ``rank`` dimensions;
    ``inclusive`` also allows ``rank`` itself (Flatten's axis)."""
    index = axis + rank if axis < 0 else axis
    if not 0 <= index < (rank + 1 if inclusive else rank):
        raise ValueError(f"{what} {axis} is out of range for a rank-{rank} input")
    return index


def size(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def choice(value: Any, what: str, options: Sequence[str]) -> str:
    """One of the strings ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, options))}, got "
                         f"{value!r}")
    return value
