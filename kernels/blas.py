"""The one door to BLAS: every GEMM in convplan goes through `gemm` / `gemm_batched`.

Why not ``numpy.matmul``: it always writes a fresh result (or overwrites ``out``) and silently
copies strided operands. The low-memory algorithms need ``C = alpha*A.B + beta*C`` on windows of
existing arrays, with leading dimensions, and no hidden copies. ``cblas_sgemm`` does exactly that.

We call the OpenBLAS shipped by the ``scipy-openblas32`` wheel (symbols prefixed ``scipy_``)
through ctypes. Thread count is set for every BLAS in the process at once with threadpoolctl
(`threads`, `set_threads`).

This OpenBLAS is convplan's own (nothing else loads it), so convplan picks its kernels:
``CONVPLAN_BLAS_CORETYPE`` names an OpenBLAS core type; unset or ``auto`` means the AVX-512
"SkylakeX" kernels on CPUs with AVX-512 and OpenBLAS's own choice otherwise; ``openblas`` means
OpenBLAS's own choice (which honours ``OPENBLAS_CORETYPE``). Why: OpenBLAS 0.3.34 does not know
Zen 5 and falls back to its AVX2 "Haswell" kernels, half the FMA width; on a Zen 5 test machine
SkylakeX doubled the SGEMM rate (131 -> 242 GFLOP/s on one thread). ``OPENBLAS_CORETYPE`` is
changed only while the library loads, so NumPy's own OpenBLAS is not affected.

Idle OpenBLAS workers spin 2**28 cycles (about 0.1 s) before they sleep, so between two GEMMs
the second core is busy doing nothing while this process's element-wise steps, or another
process, need it (a 2-thread SqueezeNet run on a shared machine: 50-1235 ms against 41-501 ms
with short spins). convplan loads its OpenBLAS with ``OPENBLAS_THREAD_TIMEOUT`` set to
``CONVPLAN_BLAS_THREAD_TIMEOUT`` (default 4: 16 cycles), the same way.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_AVX512_FLAGS = {"avx512f", "avx512dq", "avx512bw", "avx512vl"}


def _cpu_flags() -> set[str]:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@cache
def _library() -> ctypes.CDLL:
    # Located without importing scipy_openblas32: its import loads the library, and the
    # kernel choice below must be made before that.
    found = importlib.util.find_spec("scipy_openblas32")
    if found is None or not found.submodule_search_locations:
        raise ImportError("convplan needs the scipy-openblas32 package (pip install convplan)")
    lib_dir = pathlib.Path(found.submodule_search_locations[0]) / "lib"
    candidates = sorted(lib_dir.glob("libscipy_openblas*.so*")) + sorted(
        lib_dir.glob("libscipy_openblas*.dylib"))
    if not candidates:
        raise ImportError(f"no OpenBLAS library found in {lib_dir}")
    choice = os.environ.get("CONVPLAN_BLAS_CORETYPE", "auto")
    coretype = None
    if choice == "auto":
        coretype = "SkylakeX" if _cpu_flags() >= _AVX512_FLAGS else None
    elif choice != "openblas":
        coretype = choice
    loading = {"OPENBLAS_CORETYPE": coretype,
               "OPENBLAS_THREAD_TIMEOUT": os.environ.get("CONVPLAN_BLAS_THREAD_TIMEOUT", "4")}
    saved = {name: os.environ.get(name) for name in loading}
    for name, value in loading.items():
        if value:
            os.environ[name] = value
    try:
        lib = ctypes.CDLL(str(candidates[0]))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    i, p = ctypes.c_int, ctypes.c_void_p
    for prefix, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
        fn = getattr(lib, f"scipy_cblas_{prefix}gemm")
        fn.argtypes = [i, i, i, i, i, i, real, p, i, p, i, real, p, i]
        fn.restype = None
        fn = getattr(lib, f"scipy_cblas_{prefix}gemv")
        fn.argtypes = [i, i, i, i, real, p, i, p, i, real, p, i]
        fn.restype = None
        fn = getattr(lib, f"scipy_cblas_{prefix}gemm_batch_strided")
        fn.argtypes = [i, i, i, i, i, i, real, p, i, i, p, i, i, real, p, i, i, i]
        fn.restype = None
    lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
    lib.scipy_openblas_get_config.restype = ctypes.c_char_p
    return lib


def info() -> dict[str, str]:
    """What BLAS convplan uses: library, version/config and the kernel family it picked."""
    lib = _library()
    return {
        "library": "scipy-openblas32",
        "config": lib.scipy_openblas_get_config().decode(),
        "corename": lib.scipy_openblas_get_corename().decode(),
        "threads": str(get_threads()),
    }


# -- threads -----------------------------------------------------------------------------------
def get_threads() -> int:
    return int(_library().scipy_openblas_get_num_threads())


def _limits(n: int | None):
    from threadpoolctl import threadpool_limits

    _library()  # loaded first, so threadpoolctl sees our OpenBLAS too
    return threadpool_limits(limits=n if n is not None else os.cpu_count() or 1, user_api="blas")


def set_threads(n: int | None) -> None:
    """Set the thread count of every BLAS in the process (None: all cores)."""
    _limits(n)


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` BLAS threads (None: all cores), then restore the previous counts."""
    with _limits(n):
        yield


# -- operands ----------------------------------------------------------------------------------
def _matrix(x: np.ndarray, what: str) -> tuple[int, int]:
    """(transpose flag, leading dimension) describing a 2-D view to BLAS without copying it."""
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {x.shape}")
    rows, cols = x.shape
    item = x.itemsize
    s0, s1 = x.strides
    if cols == 1:
        s1 = item
    if rows == 1:
        s0 = max(cols, 1) * item
    if s1 == item and s0 % item == 0 and s0 // item >= max(cols, 1):
        return _NO_TRANS, s0 // item
    if rows == 1 or cols == 1 or s0 == item:
        s0 = item
        if cols == 1:
            s1 = max(rows, 1) * item
        if s1 % item == 0 and s1 // item >= max(rows, 1):
            return _TRANS, s1 // item
    raise ValueError(
        f"{what} (shape {x.shape}, strides {x.strides}) is not a BLAS matrix: one axis must be "
        "unit-stride; convplan never copies an operand silently"
    )


def _pointer(x: np.ndarray) -> int:
    # Not ``__array_interface__``: with NumPy 2 its use keeps growing a table the process never
    # frees (seen: 0.4 MB per 200k calls), which the memory promise would have to carry.
    return x.ctypes.data


def _check(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[int, int, int]:
    if not (a.dtype == b.dtype == c.dtype) or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"gemm needs float32 or float64 operands of one dtype, got "
                         f"{a.dtype}, {b.dtype}, {c.dtype}")
    m, k = a.shape[-2:]
    k2, n = b.shape[-2:]
    if k != k2 or c.shape[-2:] != (m, n):
        raise ValueError(f"gemm shapes do not chain: {a.shape} . {b.shape} -> {c.shape}")
    if not c.flags.writeable:
        raise ValueError("gemm output is read-only")
    return m, n, k


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, *, alpha: float = 1.0,
         beta: float = 0.0) -> np.ndarray:
    """``c = alpha * a @ b + beta * c`` in place on 2-D views; returns ``c``. Never copies."""
    m, n, k = _check(a, b, c)
    if m == 0 or n == 0:
        return c
    if k == 0:
        c *= beta
        return c
    tc, ldc = _matrix(c, "gemm output")
    if tc == _TRANS:  # column-major output: compute c^T = b^T a^T instead
        gemm(b.T, a.T, c.T, alpha=alpha, beta=beta)
        return c
    ta, lda = _matrix(a, "gemm operand A")
    tb, ldb = _matrix(b, "gemm operand B")
    if (m == 1 or n == 1) and _gemv(a, b, c, (ta, lda), (tb, ldb), ldc, alpha, beta):
        return c
    fn = _library().scipy_cblas_sgemm if a.dtype == np.float32 else _library().scipy_cblas_dgemm
    fn(_ROW_MAJOR, ta, tb, m, n, k, alpha, _pointer(a), lda, _pointer(b), ldb, beta,
       _pointer(c), ldc)
    return c


def _increment(v: np.ndarray) -> int | None:
    """The element stride of a 1-D view for BLAS (positive), or None."""
    if v.shape[0] == 1:
        return 1
    step, rest = divmod(v.strides[0], v.itemsize)
    return step if rest == 0 and step > 0 else None


def _gemv(a: np.ndarray, b: np.ndarray, c: np.ndarray, at: tuple[int, int],
          bt: tuple[int, int], ldc: int, alpha: float, beta: float) -> bool:
    """A product with one output row (a batch-1 fully connected layer) or one output column
    (a 1x1 convolution of a 1x1 image) as a matrix-vector product, which streams the matrix
    once: for a 1000x2048 layer 0.25 ms against GEMM's 1.6 ms (OpenBLAS's GEMM packs its
    operands for a block it never reuses). False where a vector is not unit- or
    positively-strided (the GEMM then runs)."""
    if c.shape[0] == 1:            # y (n) = b^T x: b is (k, n), x a's only row
        x, y, incy = a[0], c[0], 1
        (tm, ldm), matrix, rows, cols = bt, b, b.shape[0], b.shape[1]
        trans = _TRANS if tm == _NO_TRANS else _NO_TRANS   # row-major b, or its transpose
        if tm == _TRANS:
            rows, cols = cols, rows
    else:                          # y (m) = a x: x b's only column, y c's column
        x, y, incy = b[:, 0], c[:, 0], ldc
        (tm, ldm), matrix, rows, cols = at, a, a.shape[0], a.shape[1]
        trans = _NO_TRANS if tm == _NO_TRANS else _TRANS
        if tm == _TRANS:
            rows, cols = cols, rows
    incx = _increment(x)        # y is unit-strided or ldc apart: c is row-major here
    if incx is None:
        return False
    lib = _library()
    fn = lib.scipy_cblas_sgemv if a.dtype == np.float32 else lib.scipy_cblas_dgemv
    fn(_ROW_MAJOR, trans, rows, cols, alpha, _pointer(matrix), ldm, _pointer(x), incx, beta,
       _pointer(y), incy)
    return True


def _batch_stride(x: np.ndarray, what: str) -> int:
    if x.strides[0] % x.itemsize:
        raise ValueError(f"{what} batch stride is not a whole number of elements")
    return x.strides[0] // x.itemsize if x.shape[0] > 1 else 0


def gemm_batched(a: np.ndarray, b: np.ndarray, c: np.ndarray, *, alpha: float = 1.0,
                 beta: float = 0.0) -> np.ndarray:
    """``c[i] = alpha * a[i] @ b[i] + beta * c[i]`` for 3-D views with constant batch strides.

    One ``cblas_?gemm_batch_strided`` call; a batch stride of 0 reuses one operand.
    """
    if a.ndim != 3 or b.ndim != 3 or c.ndim != 3:
        raise ValueError("gemm_batched needs 3-D operands (batch, rows, cols)")
    batch = c.shape[0]
    if a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch):
        raise ValueError(f"gemm_batched batch sizes differ: {a.shape}, {b.shape}, {c.shape}")
    m, n, k = _check(a, b, c)
    if batch == 0 or m == 0 or n == 0:
        return c
    if k == 0:
        c *= beta
        return c
    tc, ldc = _matrix(c[0], "gemm output")
    if tc == _TRANS:
        raise ValueError("gemm_batched output must be row-major")
    ta, lda = _matrix(a[0], "gemm operand A")
    tb, ldb = _matrix(b[0], "gemm operand B")
    if batch > 1 and c.strides[0] == 0:
        raise ValueError("gemm_batched output batch stride must not be 0")
    lib = _library()
    fn = (lib.scipy_cblas_sgemm_batch_strided if a.dtype == np.float32
          else lib.scipy_cblas_dgemm_batch_strided)
    fn(_ROW_MAJOR, ta, tb, m, n, k, alpha,
       _pointer(a), lda, _batch_stride(a, "A"), _pointer(b), ldb, _batch_stride(b, "B"),
       beta, _pointer(c), ldc, _batch_stride(c, "C"), batch)
    return c
