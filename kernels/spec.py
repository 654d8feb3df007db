"""`ConvSpec`: the one description of a convolution that algorithms, costs and plans refer to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Layout = Literal["NCHW", "NHWC"]
LAYOUTS: tuple[Layout, ...] = ("NCHW", "NHWC")
DTYPES = ("float32", "float64")


def _pair(value: int | tuple[int, ...] | list[int], what: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {value!r}")
    return items[0], items[1]


def normalize_padding(padding: int | tuple[int, ...] | list[int]) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right) from an int, a (ph, pw) pair or four values."""
    if isinstance(padding, int | np.integer):
        p = int(padding)
        return p, p, p, p
    items = tuple(int(v) for v in padding)
    if len(items) == 2:
        return items[0], items[1], items[0], items[1]
    if len(items) == 4:
        return items[0], items[1], items[2], items[3]
    raise ValueError(
        f"padding must be an int, (ph, pw) or (top, left, bottom, right), got {padding!r}"
    )


@dataclass(frozen=True)
class ConvSpec:
    """One 2-D convolution: input n x c x h x w, weights m x c/groups x kh x kw.

    stride, dilation: (vertical, horizontal); padding: (top, left, bottom, right).
    Same meaning as ``torch.nn.functional.conv2d`` (cross-correlation).
    """

    n: int
    c: int
    h: int
    w: int
    m: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    ho: int = field(init=False)
    wo: int = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "stride", _pair(self.stride, "stride"))
        set_(self, "dilation", _pair(self.dilation, "dilation"))
        set_(self, "padding", normalize_padding(self.padding))
        set_(self, "dtype", np.dtype(self.dtype).name)
        for name in ("n", "c", "h", "w", "m", "kh", "kw", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            set_(self, name, int(value))
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if min(self.dilation) < 1:
            raise ValueError(f"dilation must be >= 1, got {self.dilation}")
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if self.c % self.groups or self.m % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide both input channels c={self.c} "
                f"and output channels m={self.m}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype}")
        top, left, bottom, right = self.padding
        sh, sw = self.stride
        dh, dw = self.dilation
        ho = (self.h + top + bottom - dh * (self.kh - 1) - 1) // sh + 1
        wo = (self.w + left + right - dw * (self.kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(
                f"the kernel ({self.kh}x{self.kw}, dilation {self.dilation}) is larger than the "
                f"padded input ({self.h}+{top}+{bottom} x {self.w}+{left}+{right})"
            )
        set_(self, "ho", ho)
        set_(self, "wo", wo)

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def mg(self) -> int:
        """Output channels per group."""
        return self.m // self.groups

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def flops(self) -> int:
        """2 * M * (C/g) * kh * kw * Ho * Wo per image, times the batch."""
        return 2 * self.n * self.m * self.cg * self.kh * self.kw * self.ho * self.wo

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.m, self.cg, self.kh, self.kw)

    def input_shape(self, layout: Layout = "NCHW") -> tuple[int, int, int, int]:
        if layout == "NCHW":
            return (self.n, self.c, self.h, self.w)
        return (self.n, self.h, self.w, self.c)

    def output_shape(self, layout: Layout = "NCHW") -> tuple[int, int, int, int]:
        if layout == "NCHW":
            return (self.n, self.m, self.ho, self.wo)
        return (self.n, self.ho, self.wo, self.m)

    def key(self) -> str:
        """A stable string naming this spec, used as the cost-store key."""
        t, l, b, r = self.padding
        return (
            f"n{self.n}_c{self.c}_h{self.h}_w{self.w}_m{self.m}_k{self.kh}x{self.kw}"
            f"_s{self.stride[0]}x{self.stride[1]}_p{t}.{l}.{b}.{r}"
            f"_d{self.dilation[0]}x{self.dilation[1]}_g{self.groups}_{self.dtype}"
        )

    def describe(self) -> str:
        return (
            f"{self.n}x{self.c}x{self.h}x{self.w} * {self.m}x{self.cg}x{self.kh}x{self.kw}"
            f" stride {self.stride} pad {self.padding} dil {self.dilation} groups {self.groups}"
        )
