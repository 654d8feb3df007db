"""The activations' numerics against `math`: erf (convplan's own rational approximation) within a
few ulp of float32's erf over the whole range, and special values through every activation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convplan.kernels import operators

_erf = np.vectorize(math.erf, otypes=[np.float64])


def test_erf_is_within_a_few_ulp_of_float32s_erf() -> None:
    """Every 1000th float32 from 1e-30 to 4.5 (where erf is 1 in float32), and their negatives."""
    lo, hi = np.float32(1e-30).view(np.int32), np.float32(4.5).view(np.int32)
    x = np.arange(lo, hi, 1000, dtype=np.int32).view(np.float32)
    x = np.concatenate([x, -x])
    truth = _erf(x.astype(np.float64))
    y = operators.make("erf").run([x], {})[0]
    ulps = np.abs(y.astype(np.float64) - truth) / np.spacing(np.abs(truth).astype(np.float32))
    assert ulps.max() <= 6 and ulps.mean() < 1, (ulps.max(), x[ulps.argmax()])


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1e30, -1e30, 88.0,
                    -88.0, -104.0], np.float32)


@pytest.mark.parametrize(("op", "attrs", "expected"), [
    ("erf", {}, lambda x: _erf(x)),
    ("gelu", {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    ("gelu", {"approximate": "tanh"},
     lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    ("leakyrelu", {"alpha": 0.1}, lambda x: np.where(x >= 0, x, 0.1 * x)),
    ("elu", {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    ("selu", {}, lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772
                                                         * np.expm1(x))),
])
def test_special_values(op: str, attrs: dict, expected) -> None:
    """NaN stays NaN, infinities and huge values saturate or pass through, denormals and -0
    are kept (a float64 oracle, rounded to float32). GELU(-inf) is -inf * 0 = NaN, as
    onnxruntime computes it."""
    with np.errstate(all="ignore"):
        want = np.asarray(expected(SPECIAL.astype(np.float64))).astype(np.float32)
        got = operators.make(op, **attrs).run([SPECIAL.copy()], {})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30, equal_nan=True)
