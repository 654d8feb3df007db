"""`conv2d`: the friendly entry point, NCHW in and out, torch.nn.functional.conv2d's meaning."""

from __future__ import annotations

from typing import Literal

import numpy as np

from . import registry
from .base import ConvAlgorithm
from .layout import convert
from .spec import ConvSpec, normalize_padding

PaddingArg = int | tuple[int, ...] | list[int] | Literal["same", "valid"]


def _padding(padding: PaddingArg, kh: int, kw: int, dilation: tuple[int, int],
              stride: tuple[int, int]) -> tuple[int, int, int, int]:
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' needs stride 1 (as in torch)")
        ph, pw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
        return (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    return normalize_padding(padding)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def default_algorithm(spec: ConvSpec) -> ConvAlgorithm:
    """A sensible choice without measurements: the specialised method where one applies,
    else the low-memory kn2row-aa for stride 1, else im2col. (Plans choose from measured costs.)"""
    for name in ("depthwise", "conv1x1", "kn2row-aa", "im2col"):
        algorithm = registry.get(name)
        if algorithm.supports(spec):
            return algorithm
    return registry.get("direct")


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
           stride: int | tuple[int, int] = 1, padding: PaddingArg = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1,
           algorithm: str = "auto") -> np.ndarray:
    """2-D convolution (cross-correlation) of NCHW ``x`` with ``w`` (M x C/groups x kh x kw).

    ``padding``: an int, (ph, pw), (top, left, bottom, right), 'same' or 'valid'.
    ``algorithm``: a registered name or 'auto'. Layouts are converted as the algorithm needs.
    """
    x, w = np.asarray(x), np.asarray(w)
    if x.ndim != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"weights must be 4-D (M, C/groups, kh, kw), got shape {w.shape}")
    for what, a in (("input", x), ("weights", w)):
        if a.dtype.name not in ("float32", "float64"):
            raise ValueError(f"{what} must be float32 or float64, got {a.dtype}")
    if x.dtype != w.dtype:
        raise ValueError(f"input ({x.dtype}) and weights ({w.dtype}) must have one dtype")
    if not isinstance(groups, int | np.integer) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if c != cg * groups:
        raise ValueError(f"input has {c} channels but weights expect {cg} x {groups} groups "
                         f"= {cg * groups}")
    stride_, dilation_ = _pair(stride), _pair(dilation)
    spec = ConvSpec(n=n, c=c, h=h, w=wd, m=m, kh=kh, kw=kw, stride=stride_,
                    padding=_padding(padding, kh, kw, dilation_, stride_),
                    dilation=dilation_, groups=groups, dtype=x.dtype.name)
    chosen = default_algorithm(spec) if algorithm == "auto" else registry.get(algorithm)
    prepared = chosen.prepare(w, b, spec)
    x_in = convert(np.ascontiguousarray(x), "NCHW", chosen.input_layout)
    y = chosen.run(x_in, prepared, spec)
    return convert(y, chosen.output_layout, "NCHW")
