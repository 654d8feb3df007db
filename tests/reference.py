"""An independent float64 reference convolution: pad explicitly, then sum taps with einsum.

Shares no code with `kernels` (no spans, no BLAS wrapper), so agreeing with it means something.
"""

from __future__ import annotations

import numpy as np


def conv2d_reference(x, w, b=None, *, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                     groups=1):
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    top, left, bottom, right = padding
    sh, sw = stride
    dh, dw = dilation
    padded = np.zeros((n, c, h + top + bottom, wd + left + right))
    padded[:, :, top:top + h, left:left + wd] = x
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    mg = m // groups
    y = np.zeros((n, m, ho, wo))
    for g in range(groups):
        xg = padded[:, g * cg:(g + 1) * cg]
        for r in range(kh):
            for s in range(kw):
                window = xg[:, :, r * dh: r * dh + sh * (ho - 1) + 1: sh,
                            s * dw: s * dw + sw * (wo - 1) + 1: sw]
                y[:, g * mg:(g + 1) * mg] += np.einsum("mc,ncyx->nmyx",
                                                       w[g * mg:(g + 1) * mg, :, r, s], window)
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return y


def error_scale(x, w, b=None, **kwargs):
    """conv(|x|, |w|) + |b|: bounds the rounding error of any order of summation."""
    return conv2d_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kwargs)


def neighbourhood_max(a, radius: int):
    """Max of ``a`` (N, M, H, W) over (2*radius+1)^2 windows around each position."""
    if radius == 0:
        return a
    padded = np.pad(a, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2, axis=(2, 3))
    return windows.max(axis=(-2, -1))
