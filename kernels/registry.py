"""The algorithm registry: every algorithm class registers itself here under its paper name."""

from __future__ import annotations

from typing import TypeVar

from .base import ConvAlgorithm
from .spec import ConvSpec

_ALGORITHMS: dict[str, ConvAlgorithm] = {}
A = TypeVar("A", bound=type[ConvAlgorithm])


def register(cls: A) -> A:
    """Class decorator: make one instance of ``cls`` findable by its ``name``."""
    if cls.name in _ALGORITHMS:
        raise ValueError(f"algorithm {cls.name!r} is registered twice")
    _ALGORITHMS[cls.name] = cls()
    return cls


def names() -> list[str]:
    """Every registered algorithm name, in registration order."""
    return list(_ALGORITHMS)


def get(name: str) -> ConvAlgorithm:
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(_ALGORITHMS)}") from None


def all_algorithms() -> list[ConvAlgorithm]:
    return list(_ALGORITHMS.values())


def applicable(spec: ConvSpec) -> list[ConvAlgorithm]:
    """The algorithms that can run ``spec``."""
    return [a for a in _ALGORITHMS.values() if a.supports(spec)]
