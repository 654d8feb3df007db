"""Hypothesis strategies for convolution specs, and fitting a spec to what an algorithm runs."""

from __future__ import annotations

from hypothesis import strategies as st

from convplan.kernels import ConvSpec

KERNELS = [1, 2, 3, 3, 3, 4, 5, 6, 7, 11]


@st.composite
def conv_specs(draw, max_side: int = 18) -> ConvSpec:
    """Odd and even sizes, stride 1-4, kernels 1-7 and 11, asymmetric padding, dilation 1-3,
    groups 1-3 (sometimes depthwise), batch 1-3."""
    kh = draw(st.sampled_from(KERNELS))
    kw = draw(st.sampled_from([kh, kh, kh, *KERNELS]))
    stride = draw(st.sampled_from([(1, 1), (1, 1), (2, 2), (3, 3), (4, 4), (1, 2), (3, 1)]))
    dilation = draw(st.sampled_from([(1, 1), (1, 1), (1, 1), (2, 2), (3, 1), (1, 2)]))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    if draw(st.integers(0, 4)) == 0:
        groups = draw(st.integers(2, 6))
        c = m = groups
    else:
        groups = draw(st.integers(1, 3))
        c = groups * draw(st.integers(1, 5))
        m = groups * draw(st.integers(1, 5))
    n = draw(st.integers(1, 3))
    min_h = max(1, dilation[0] * (kh - 1) + 1 - padding[0] - padding[2])
    min_w = max(1, dilation[1] * (kw - 1) + 1 - padding[1] - padding[3])
    h = draw(st.integers(min_h, max(min_h, max_side)))
    w = draw(st.integers(min_w, max(min_w, max_side)))
    return ConvSpec(n=n, c=c, h=h, w=w, m=m, kh=kh, kw=kw, stride=stride, padding=padding,
                    dilation=dilation, groups=groups)


def examples(default: int) -> int:
    """Hypothesis examples for a test: ``default`` per run, four times as many under
    ``HYPOTHESIS_PROFILE=thorough`` (an explicit ``max_examples`` overrides the profile)."""
    import os

    return default * 4 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else default
