"""Bad input gets a ValueError that names what is wrong, never a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest

from convplan.kernels import ConvSpec, conv2d, registry
from convplan.kernels.layout import convert

rng = np.random.default_rng(0)
X = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: conv2d(X[0], W), "4-D"),
        (lambda: conv2d(X, W[0]), "4-D"),
        (lambda: conv2d(X.astype(np.int32), W), "float32 or float64"),
        (lambda: conv2d(X, W.astype(np.float64)), "one dtype"),
        (lambda: conv2d(X, W[:, :3]), "channels"),
        (lambda: conv2d(X, W, groups=3), "channels"),
        (lambda: conv2d(X, W[:5, :2], groups=2), "groups=2 must divide"),
        (lambda: conv2d(X, W, b=np.zeros(5, np.float32)), "bias has shape"),
        (lambda: conv2d(X, W, stride=0), "stride"),
        (lambda: conv2d(X, W, padding=-1), "padding"),
        (lambda: conv2d(X, W, padding=(1, 2, 3)), "padding"),
        (lambda: conv2d(X, W, padding="bogus"), "padding"),
        (lambda: conv2d(X, W, padding="same", stride=2), "same"),
        (lambda: conv2d(X, W, dilation=5), "larger than the padded input"),
        (lambda: conv2d(X, W, algorithm="nope"), "unknown algorithm 'nope'"),
        (lambda: conv2d(X, W, stride=2, algorithm="kn2row-aa"), "stride 1"),
        (lambda: conv2d(X, W, algorithm="conv1x1"), "1x1"),
        (lambda: conv2d(X, W, algorithm="depthwise"), "groups = input channels"),
        (lambda: conv2d(X, W, groups=0), "groups"),
    ],
)
def test_conv2d_rejects(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        ConvSpec(n=1, c=0, h=4, w=4, m=1, kh=1, kw=1)
    with pytest.raises(ValueError, match="dtype"):
        ConvSpec(n=1, c=1, h=4, w=4, m=1, kh=1, kw=1, dtype="float16")


def test_run_checks_its_arguments() -> None:
    spec = ConvSpec(n=1, c=4, h=8, w=8, m=6, kh=3, kw=3, padding=1)
    im2col, im2row = registry.get("im2col"), registry.get("im2row")
    prepared = im2col.prepare(W, None, spec)
    with pytest.raises(ValueError, match="prepared for 'im2col'"):
        im2row.run(X.transpose(0, 2, 3, 1).copy(), prepared, spec)
    with pytest.raises(ValueError, match="expected"):
        im2col.run(X[:, :3], prepared, spec)
    with pytest.raises(ValueError, match="C-contiguous"):
        im2col.run(np.asfortranarray(X), prepared, spec)
    with pytest.raises(ValueError, match="dtype"):
        im2col.run(X.astype(np.float64), prepared, spec)
    with pytest.raises(ValueError, match="out must be"):
        im2col.run(X, prepared, spec, out=np.empty((1, 6, 8, 7), np.float32))
    other = ConvSpec(n=1, c=4, h=8, w=8, m=6, kh=3, kw=3, padding=1, groups=2)
    with pytest.raises(ValueError, match="weights have shape"):
        im2col.prepare(W, None, other)


def test_convert_writes_into_a_given_out_and_checks_it() -> None:
    """Into ``out``: the transposed copy, in that array, even for the same layout; an ``out`` of
    the wrong shape or dtype, or over the input, is refused."""
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    out = np.full((2, 4, 5, 3), np.nan, np.float32)
    assert convert(x, "NCHW", "NHWC", out=out) is out
    assert np.array_equal(out, convert(x, "NCHW", "NHWC"))
    same = np.empty_like(x)
    assert convert(x, "NCHW", "NCHW", out=same) is same and np.array_equal(same, x)
    assert convert(x, "NCHW", "NCHW") is x
    for bad in (np.empty((2, 3, 4, 5), np.float32), np.empty((2, 4, 5, 3), np.float64),
                np.empty((2, 4, 5, 3, 2), np.float32)[..., 0]):
        with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32"):
            convert(x, "NCHW", "NHWC", out=bad)
    with pytest.raises(ValueError, match="out overlaps the input"):
        convert(x, "NCHW", "NHWC", out=x.reshape(2, 4, 5, 3))
