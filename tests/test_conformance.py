"""Every registered algorithm against the independent float64 reference (found via the registry,
so a new algorithm is tested without touching this file)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import conv2d_reference, error_scale, neighbourhood_max
from strategies import conv_specs, fit

from convplan.kernels import ConvSpec, conv2d, registry
from convplan.kernels.layout import convert

ALGORITHMS = registry.names()


def _data(spec: ConvSpec, seed: int, bias: bool):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape()).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    b = rng.standard_normal(spec.m).astype(spec.dtype) if bias else None
    return x, w, b


def _check(name: str, spec: ConvSpec, seed: int, bias: bool) -> None:
    algorithm = registry.get(name)
    x, w, b = _data(spec, seed, bias)
    prepared = algorithm.prepare(w, b, spec)
    y = algorithm.run(convert(x, "NCHW", algorithm.input_layout), prepared, spec)
    assert y.shape == spec.output_shape(algorithm.output_layout)
    assert y.dtype == np.dtype(spec.dtype)
    y = convert(y, algorithm.output_layout, "NCHW")
    geometry = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                    groups=spec.groups)
    expected = conv2d_reference(x, w, b, **geometry)
    scale = neighbourhood_max(error_scale(x, w, b, **geometry), algorithm.error_neighbourhood)
    tolerance = algorithm.tolerance * (1.0 if spec.dtype == "float32" else 1e-8)
    error = np.abs(y - expected)
    worst = float((error / (scale + 1e-30)).max())
    assert np.all(error <= tolerance * scale + 1e-30), (
        f"{name} on {spec.describe()}: worst relative error {worst:.2e} > {tolerance:.1e}")


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(), seed=st.integers(0, 2**16), bias=st.booleans())
def test_matches_reference(name: str, spec: ConvSpec, seed: int, bias: bool) -> None:
    fitted = fit(spec, registry.get(name))
    assume(fitted is not None)
    _check(name, fitted, seed, bias)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(max_side=10), seed=st.integers(0, 2**16))
def test_float64(name: str, spec: ConvSpec, seed: int) -> None:
    fitted = fit(spec, registry.get(name))
    assume(fitted is not None)
    _check(name, dataclasses.replace(fitted, dtype="float64"), seed, bias=True)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(max_side=12), seed=st.integers(0, 2**16))
def test_supports_is_honest(name: str, spec: ConvSpec, seed: int) -> None:
    """A spec the algorithm claims runs; any other is a ValueError naming it, never an answer."""
    algorithm = registry.get(name)
    x, w, _ = _data(spec, seed, False)
    if algorithm.supports(spec):
        y = conv2d(x, w, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                   groups=spec.groups, algorithm=name)
        assert y.shape == spec.output_shape()
        return
    with pytest.raises(ValueError, match=name):
        algorithm.prepare(w, None, spec)
    with pytest.raises(ValueError, match="does not support"):
        conv2d(x, w, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
               groups=spec.groups, algorithm=name)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_out_argument_is_filled_and_returned(name: str) -> None:
    algorithm = registry.get(name)
    spec = fit(ConvSpec(n=2, c=4, h=9, w=8, m=4, kh=3, kw=3, padding=1), algorithm)
    assert spec is not None
    x, w, b = _data(spec, 1, True)
    prepared = algorithm.prepare(w, b, spec)
    x_in = convert(x, "NCHW", algorithm.input_layout)
    out = np.full(spec.output_shape(algorithm.output_layout), np.nan, dtype=spec.dtype)
    result = algorithm.run(x_in, prepared, spec, out=out)
    assert result is out
    np.testing.assert_allclose(out, algorithm.run(x_in, prepared, spec), rtol=0, atol=0)


def test_auto_matches_reference_on_common_layers() -> None:
    rng = np.random.default_rng(3)
    for kernel, stride, padding, groups in [(3, 1, 1, 1), (1, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 2),
                                            (3, 1, 1, 8), (7, 2, 3, 1)]:
        x = rng.standard_normal((2, 8, 15, 13)).astype(np.float32)
        w = rng.standard_normal((8, 8 // groups, kernel, kernel)).astype(np.float32)
        y = conv2d(x, w, stride=stride, padding=padding, groups=groups)
        expected = conv2d_reference(x, w, stride=(stride, stride), padding=(padding,) * 4,
                                    groups=groups)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_padding_same_and_valid() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 10, 9)).astype(np.float32)
    w = rng.standard_normal((5, 3, 4, 3)).astype(np.float32)
    same = conv2d(x, w, padding="same", dilation=2)
    assert same.shape == (1, 5, 10, 9)
    expected = conv2d_reference(x, w, padding=(3, 2, 3, 2), dilation=(2, 2))
    np.testing.assert_allclose(same, expected, rtol=1e-4, atol=1e-4)
    assert conv2d(x, w, padding="valid").shape == (1, 5, 7, 7)
