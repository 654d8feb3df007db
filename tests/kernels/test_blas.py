"""The BLAS wrapper: strided windows, transposes and beta, in place and without copies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convplan.kernels import blas


@given(m=st.integers(1, 9), n=st.integers(1, 9), k=st.integers(1, 9),
       ta=st.booleans(), tb=st.booleans(), beta=st.sampled_from([0.0, 1.0, -0.5]),
       alpha=st.sampled_from([1.0, 2.0]), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 1000))
def test_gemm_on_windows_of_larger_arrays(m, n, k, ta, tb, beta, alpha, dtype, seed) -> None:
    rng = np.random.default_rng(seed)
    big_a = rng.standard_normal((k + 3, m + 4) if ta else (m + 3, k + 4)).astype(dtype)
    big_b = rng.standard_normal((n + 2, k + 5) if tb else (k + 2, n + 5)).astype(dtype)
    a = big_a[1:k + 1, 2:m + 2].T if ta else big_a[1:m + 1, 2:k + 2]
    b = big_b[1:n + 1, 3:k + 3].T if tb else big_b[1:k + 1, 3:n + 3]
    big_c = rng.standard_normal((m + 2, n + 3)).astype(dtype)
    before = big_c.copy()
    c = big_c[1:m + 1, 1:n + 1]
    expected = alpha * (a.astype(np.float64) @ b) + beta * c.astype(np.float64)
    assert blas.gemm(a, b, c, alpha=alpha, beta=beta) is c
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
    outside = np.ones_like(big_c, dtype=bool)
    outside[1:m + 1, 1:n + 1] = False
    np.testing.assert_array_equal(big_c[outside], before[outside])


@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 300), ta=st.booleans(),
       tb=st.booleans(), beta=st.sampled_from([0.0, 1.0, -0.5]),
       dtype=st.sampled_from(["float32", "float64"]), row=st.booleans(),
       step=st.integers(1, 3), seed=st.integers(0, 1000))
def test_one_output_row_or_column_is_a_matrix_vector_product(m, n, k, ta, tb, beta, dtype, row,
                                                              step, seed) -> None:
    """A batch-1 fully connected layer (one output row) and a 1x1 convolution of a 1x1 image
    (one output column) run as GEMV, on strided vectors too: the same result as the GEMM,
    garbage under beta = 0 ignored, nothing outside the output's window written."""
    if row:
        m = 1
    else:
        n = 1
    rng = np.random.default_rng(seed)
    ks, ns = (slice(1, 1 + d * step, step) for d in (k, n))   # every step-th element
    big_a = rng.standard_normal((1 + k * step, m + 2) if ta else (m + 2, 1 + k * step))
    big_b = rng.standard_normal((1 + n * step, k + 2) if tb else (1 + k * step, n + 2))
    big_a, big_b = big_a.astype(dtype), big_b.astype(dtype)
    a = big_a[ks, 1:m + 1].T if ta else big_a[1:m + 1, ks]
    b = big_b[ns, 1:k + 1].T if tb else big_b[ks, 1:n + 1]
    big_c = rng.standard_normal((m + 2, n + 2)).astype(dtype)
    c = big_c[1:m + 1, 1:n + 1]
    if beta == 0:
        c[...] = np.nan
    before = big_c.copy()
    expected = a.astype(np.float64) @ b + (beta * c.astype(np.float64) if beta else 0)
    try:
        blas.gemm(a, b, c, alpha=1.0, beta=beta)
    except ValueError as error:     # an operand no BLAS call takes without a copy
        assert "not a BLAS matrix" in str(error)
        return
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4 * max(1.0, k ** 0.5))
    outside = np.ones_like(big_c, dtype=bool)
    outside[1:m + 1, 1:n + 1] = False
    np.testing.assert_array_equal(big_c[outside], before[outside])


def test_gemm_batched_with_a_shared_operand() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 4, 6)).astype(np.float32)
    b = rng.standard_normal((5, 6, 3)).astype(np.float32)
    c = np.ones((5, 4, 3), np.float32)
    blas.gemm_batched(a, b, c, beta=1.0)
    np.testing.assert_allclose(c, a @ b + 1, rtol=1e-5, atol=1e-5)


def test_refuses_what_it_would_have_to_copy() -> None:
    x = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="not a BLAS matrix"):
        blas.gemm(x[::2, ::2], x[:4, :4], np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="one dtype"):
        blas.gemm(x, x.astype(np.float64), x)
    with pytest.raises(ValueError, match="do not chain"):
        blas.gemm(x[:3], x[:4], np.zeros((3, 8), np.float32))


def test_thread_control() -> None:
    with blas.threads(1):
        assert blas.get_threads() == 1
    info = blas.info()
    assert info["corename"] and "OpenBLAS" in info["config"]
