"""The operator registry: every operator class registers itself under its op name."""

from __future__ import annotations

from typing import Any, TypeVar

from .base import Operator

_OPERATORS: dict[str, type[Operator]] = {}
O = TypeVar("O", bound=type[Operator])


def register(cls: O) -> O:
    """Class decorator: make ``cls`` findable by its ``op`` name."""
    if cls.op in _OPERATORS:
        raise ValueError(f"operator {cls.op!r} is registered twice")
    _OPERATORS[cls.op] = cls
    return cls


def names() -> list[str]:
    return list(_OPERATORS)


def operator_class(op: str) -> type[Operator]:
    try:
        return _OPERATORS[op]
    except KeyError:
        raise ValueError(f"unknown operator {op!r}; known: {', '.join(_OPERATORS)}") from None


def make(op: str, **attrs: Any) -> Operator:
    """An operator instance with these attributes (validated)."""
    return operator_class(op)(**attrs)
