"""convplan: per-layer choice of GEMM-based convolution algorithms under a peak-memory cap.

The repository's top-level folders are installed as its sub-packages:

- `convplan.kernels`: the convolution algorithms (im2col, kn2row, MEC, Winograd ...), the other
  operators, layouts and the one BLAS wrapper. NumPy only.
- `convplan.profiles`: what each candidate costs on this machine, measured and kept in SQLite.
- `convplan.selector`: networks, the memory model, the ILP planner and the runner.
- `convplan.api`: the command line, the HTTP service and batch planning.

The names below are imported on first use, so `import convplan` (and `convplan --help`)
stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convplan.api.library import compile as compile
    from convplan.api.library import plan as plan
    from convplan.api.library import run as run
    from convplan.kernels import conv2d as conv2d
    from convplan.selector.network import load_network as load_network
    from convplan.selector.planning import Plan as Plan
    from convplan.selector.session import Session as Session

_PUBLIC = {
    "compile": "convplan.api.library",
    "conv2d": "convplan.kernels",
    "load_network": "convplan.selector.network",
    "plan": "convplan.api.library",
    "Plan": "convplan.selector.planning",
    "run": "convplan.api.library",
    "Session": "convplan.selector.session",
}

__all__ = ["__version__", *_PUBLIC]


def _version() -> str:
    """The installed distribution's version (reading its metadata costs ~70 ms, so it is read
    when first asked for, not at every `convplan` start)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convplan")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'convplan' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
