"""Layout transforms between NCHW (channel-major, the paper's "chw") and NHWC ("hwc")."""

from __future__ import annotations

import numpy as np

from .base import check_buffer, check_disjoint
from .spec import LAYOUTS, Layout

_PERMUTATION = {("NCHW", "NHWC"): (0, 2, 3, 1), ("NHWC", "NCHW"): (0, 3, 1, 2)}


def check_layout(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
    return layout  # type: ignore[return-value]


def convert(x: np.ndarray, src: Layout, dst: Layout, out: np.ndarray | None = None
            ) -> np.ndarray:
    """``x`` (4-D, layout ``src``) as a C-contiguous array in layout ``dst``.

    Same layout and no ``out``: returned as is (no copy). Otherwise always an array that owns
    its memory (``out`` when given: writeable, C-contiguous, of x's dtype, sharing no memory
    with ``x``), even where the transposed array is already contiguous (C == 1 or H*W == 1,
    where NumPy would hand back a view): callers write into it, and a view would write through
    to ``x``, possibly the caller's input.
    """
    check_layout(src)
    check_layout(dst)
    if x.ndim != 4:
        raise ValueError(f"a layout transform needs a 4-D tensor, got shape {x.shape}")
    moved = x if src == dst else x.transpose(_PERMUTATION[(src, dst)])
    if out is None:
        return x if src == dst else np.array(moved, order="C", copy=True)
    check_buffer(out, moved.shape, x.dtype, "out")
    check_disjoint({"out": out}, [("the input", x)])
    np.copyto(out, moved)
    return out

