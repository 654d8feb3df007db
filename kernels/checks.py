"""The conformance checks every convolution algorithm must pass, shipped with the package (as
scikit-learn ships `check_estimator`) so an algorithm added outside convplan can run them:

    from convplan.kernels.checks import check_algorithm
    check_algorithm(MyAlgorithm())

`check_algorithm` runs every check on a fixed corpus of layer specs (`SPECS`: strides, asymmetric
padding, dilation, groups, depthwise, batch > 1, odd and even sides, kernels 1 to 11), each spec
first fitted to what the algorithm runs (`fit`). The test suite calls the same single checks on
specs drawn by hypothesis. A failed check raises `ConformanceError` naming the algorithm and the
spec.

The reference (`reference_conv2d`) pads explicitly and sums taps with einsum in float64: it
shares no code with the algorithms (no spans, no BLAS wrapper), so agreeing with it means
something.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from .base import ConvAlgorithm, Prepared
from .layout import convert
from .measure import peak_allocation
from .spec import ConvSpec

#: Workspace measured by tracemalloc may fall short of the prediction by 25% plus this
#: (interpreter objects, NumPy's small temporaries).
WORKSPACE_SLACK = 64 * 1024

#: A run into given buffers may allocate `run_overhead_bytes` (and its tap table) plus this
#: much, for the objects of checking the given arrays (a dict, a list, error-free views). The
#: runs measured stay 12 KiB or more under the allowance without it.
GIVEN_BUFFERS_SLACK = 2 * 1024

#: Interpreter objects one `prepare` makes beyond its arrays (the `Prepared`, its views, einsum's
#: state: 1-3 KiB measured), which the executor's allowance covers: the traced peak of `prepare`
#: may exceed what it declares by this much.
PREPARE_OBJECT_BYTES = 8 * 1024
#: ... and fall short of it by this much.
PREPARE_SLACK = 64 * 1024

SPECS: tuple[ConvSpec, ...] = (
    ConvSpec(n=2, c=32, h=28, w=28, m=48, kh=3, kw=3, padding=1),
    ConvSpec(n=1, c=16, h=30, w=31, m=16, kh=5, kw=5, padding=(2, 1, 0, 3)),
    ConvSpec(n=1, c=24, h=40, w=40, m=24, kh=3, kw=3, padding=1, groups=24),
    ConvSpec(n=1, c=64, h=20, w=20, m=32, kh=1, kw=1),
    ConvSpec(n=1, c=64, h=21, w=20, m=32, kh=1, kw=1, stride=2),
    ConvSpec(n=2, c=12, h=33, w=35, m=18, kh=7, kw=7, stride=2, padding=3, groups=3),
    ConvSpec(n=1, c=8, h=40, w=38, m=16, kh=3, kw=3, dilation=2, padding=(2, 2, 1, 0)),
    ConvSpec(n=1, c=64, h=56, w=56, m=64, kh=3, kw=3, padding=1),
    ConvSpec(n=3, c=6, h=9, w=8, m=10, kh=3, kw=2, stride=(1, 2), dilation=(1, 2),
             padding=(0, 1, 2, 0)),
    ConvSpec(n=1, c=3, h=47, w=45, m=8, kh=11, kw=11, stride=4, padding=2),
    ConvSpec(n=2, c=10, h=7, w=7, m=10, kh=3, kw=3, stride=2, padding=1, groups=10,
             dtype="float64"),
    ConvSpec(n=1, c=6, h=1, w=1, m=4, kh=1, kw=1, groups=2),
)


class ConformanceError(AssertionError):
    """An algorithm broke its contract on a spec."""


def _fail(algorithm: ConvAlgorithm, spec: ConvSpec, what: str) -> ConformanceError:
    return ConformanceError(f"{algorithm.name} on {spec.describe()}: {what}")


# -- the reference -------------------------------------------------------------------------------
def reference_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
                     stride: tuple[int, int] = (1, 1),
                     padding: tuple[int, int, int, int] = (0, 0, 0, 0),
                     dilation: tuple[int, int] = (1, 1), groups: int = 1) -> np.ndarray:
    """Cross-correlation of NCHW ``x`` with ``w`` (M x C/groups x kh x kw) in float64."""
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


def error_scale(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                **geometry: object) -> np.ndarray:
    """conv(|x|, |w|) + |b|: bounds the rounding error of any order of summation."""
    return reference_conv2d(np.abs(x), np.abs(w), None if b is None else np.abs(b),
                            **geometry)  # type: ignore[arg-type]


def neighbourhood_max(a: np.ndarray, radius: int) -> np.ndarray:
    """Max of ``a`` (N, M, H, W) over (2*radius+1)^2 windows around each position (Winograd
    mixes the rounding errors of one output tile)."""
    if radius == 0:
        return a
    padded = np.pad(a, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2,
                                                       axis=(2, 3))
    return windows.max(axis=(-2, -1))


# -- specs ---------------------------------------------------------------------------------------
def fit(spec: ConvSpec, algorithm: ConvAlgorithm) -> ConvSpec | None:
    """The spec itself when the algorithm runs it, else the first of a chain of simplifications
    it does run (stride 1, dilation 1, a 3x3 kernel, a 1x1 unpadded kernel, depthwise)."""
    def valid(**changes: object) -> ConvSpec | None:
        try:
            return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]
        except ValueError:
            return None

    pad3 = tuple(min(p, 1) for p in spec.padding)
    candidates = [
        spec,
        valid(stride=(1, 1)),
        valid(stride=(1, 1), dilation=(1, 1)),
        valid(stride=(1, 1), dilation=(1, 1), kh=3, kw=3, padding=pad3,
              h=max(spec.h, 3), w=max(spec.w, 3)),
        valid(kh=1, kw=1, padding=(0, 0, 0, 0)),
        valid(c=spec.c, m=spec.c, groups=spec.c),
    ]
    for candidate in candidates:
        if candidate is not None and algorithm.supports(candidate):
            return candidate
    return None


def _data(spec: ConvSpec, seed: int, bias: bool
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape()).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    b = rng.standard_normal(spec.m).astype(spec.dtype) if bias else None
    return x, w, b


def _geometry(spec: ConvSpec) -> dict[str, object]:
    return dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                groups=spec.groups)


# -- the checks ----------------------------------------------------------------------------------
def _run(algorithm: ConvAlgorithm, spec: ConvSpec, x: np.ndarray, w: np.ndarray,
         b: np.ndarray | None) -> np.ndarray:
    """prepare + run on NCHW ``x``; the output as the algorithm lays it out, checked for shape
    and dtype. Any exception from a spec it claims to run is a failed check."""
    try:
        prepared = algorithm.prepare(w, b, spec)
        y = algorithm.run(convert(x, "NCHW", algorithm.input_layout), prepared, spec)
    except Exception as error:
        raise _fail(algorithm, spec, f"claims to run it, but failed: {error!r}") from None
    if y.shape != spec.output_shape(algorithm.output_layout):
        raise _fail(algorithm, spec, f"output shape {y.shape}, expected "
                    f"{spec.output_shape(algorithm.output_layout)}")
    if y.dtype != np.dtype(spec.dtype):
        raise _fail(algorithm, spec, f"output dtype {y.dtype}, expected {spec.dtype}")
    return y


def check_matches_reference(algorithm: ConvAlgorithm, spec: ConvSpec, seed: int = 0,
                            bias: bool = True) -> None:
    """The output has the spec's shape, dtype and layout, and every element is within the
    algorithm's declared tolerance of the reference, relative to conv(|x|, |w|) + |b|."""
    x, w, b = _data(spec, seed, bias)
    y = convert(_run(algorithm, spec, x, w, b), algorithm.output_layout, "NCHW")
    expected = reference_conv2d(x, w, b, **_geometry(spec))  # type: ignore[arg-type]
    scale = neighbourhood_max(error_scale(x, w, b, **_geometry(spec)),
                              algorithm.error_neighbourhood)
    tolerance = algorithm.tolerance * (1.0 if spec.dtype == "float32" else 1e-8)
    error = np.abs(y - expected)
    if not np.all(error <= tolerance * scale + 1e-30):
        worst = float((error / (scale + 1e-30)).max())
        raise _fail(algorithm, spec, f"worst relative error {worst:.2e} > {tolerance:.1e}")


def check_supports_is_honest(algorithm: ConvAlgorithm, spec: ConvSpec, seed: int = 0) -> None:
    """A spec the algorithm claims runs, to an output of the spec's shape; any other is a
    ValueError naming the algorithm, from `prepare` and from `require`: never an answer."""
    x, w, _ = _data(spec, seed, False)
    if algorithm.supports(spec):
        _run(algorithm, spec, x, w, None)
        return
    for call in (lambda: algorithm.prepare(w, None, spec), lambda: algorithm.require(spec)):
        try:
            call()
        except ValueError as error:
            if algorithm.name not in str(error):
                raise _fail(algorithm, spec, f"refused without naming itself: {error}") from None
        else:
            raise _fail(algorithm, spec, "accepted a spec it says it does not support")


def check_out_argument(algorithm: ConvAlgorithm, spec: ConvSpec) -> None:
    """``run(..., out=buffer)`` fills that buffer, returns it, and equals a run without it."""
    x, w, b = _data(spec, 1, True)
    prepared = algorithm.prepare(w, b, spec)
    x_in = convert(x, "NCHW", algorithm.input_layout)
    out = np.full(spec.output_shape(algorithm.output_layout), np.nan, dtype=spec.dtype)
    result = algorithm.run(x_in, prepared, spec, out=out)
    if result is not out:
        raise _fail(algorithm, spec, "run(out=...) returned another array")
    if not np.array_equal(out, algorithm.run(x_in, prepared, spec)):
        raise _fail(algorithm, spec, "run(out=...) differs from run()")


def given_workspace(algorithm: ConvAlgorithm, spec: ConvSpec, fill: float = np.nan
                    ) -> dict[str, np.ndarray]:
    """New arrays for `workspace_shapes`, filled with ``fill`` (NaN: a run must not read what
    it did not write)."""
    return {name: np.full(shape, fill, dtype=spec.dtype)
            for name, shape in algorithm.workspace_shapes(spec).items()}


def _refuses(algorithm: ConvAlgorithm, spec: ConvSpec, what: str, call) -> None:
    try:
        call()
    except ValueError:
        return
    except Exception as error:
        raise _fail(algorithm, spec, f"{what} raised {error!r}, not a ValueError") from None
    raise _fail(algorithm, spec, f"accepted {what}")


def check_workspace_argument(algorithm: ConvAlgorithm, spec: ConvSpec) -> None:
    """``run(..., out=, workspace=)`` into given buffers equals a run that allocates them, bit
    for bit, returns ``out``, and allocates no more than `run_overhead_bytes` and its tap
    table (+ `GIVEN_BUFFERS_SLACK`); a workspace with a missing or extra name, a wrong shape
    or dtype, or overlapping the output, is refused with a ValueError."""
    x, w, b = _data(spec, 3, True)
    prepared = algorithm.prepare(w, b, spec)
    x_in = convert(x, "NCHW", algorithm.input_layout)
    out = np.full(spec.output_shape(algorithm.output_layout), np.nan, dtype=spec.dtype)
    workspace = given_workspace(algorithm, spec)
    try:
        result = algorithm.run(x_in, prepared, spec, out=out, workspace=workspace)
    except Exception as error:
        raise _fail(algorithm, spec, f"run(out=..., workspace=...) failed: {error!r}") from None
    if result is not out:
        raise _fail(algorithm, spec, "run(out=..., workspace=...) returned another array")
    if not np.array_equal(out, algorithm.run(x_in, prepared, spec), equal_nan=True):
        raise _fail(algorithm, spec, "run(out=..., workspace=...) differs from run()")

    buffers = sum(a.nbytes for a in workspace.values())
    allowed = algorithm.workspace_bytes(spec) - buffers + GIVEN_BUFFERS_SLACK
    measured = peak_allocation(
        lambda: algorithm.run(x_in, prepared, spec, out=out, workspace=workspace))
    if measured > allowed:
        raise _fail(algorithm, spec, f"a run into given buffers allocated {measured} bytes, "
                    f"over the {allowed} allowed beyond them")

    def run_with(ws: dict[str, np.ndarray]) -> None:
        algorithm.run(x_in, prepared, spec, out=out, workspace=ws)

    _refuses(algorithm, spec, "a workspace with an extra buffer",
             lambda: run_with({**workspace, "extra": np.empty(1, spec.dtype)}))
    if workspace:
        name, first = next(iter(workspace.items()))
        other = "float64" if spec.dtype == "float32" else "float32"
        _refuses(algorithm, spec, "a workspace without a buffer",
                 lambda: run_with({k: v for k, v in workspace.items() if k != name}))
        _refuses(algorithm, spec, "a workspace buffer of the wrong shape",
                 lambda: run_with({**workspace, name: np.empty(first.size + 1, spec.dtype)}))
        _refuses(algorithm, spec, "a workspace buffer of the wrong dtype",
                 lambda: run_with({**workspace, name: first.astype(other)}))
        if first.size <= out.size:
            alias = out.reshape(-1)[:first.size].reshape(first.shape)
            _refuses(algorithm, spec, "a workspace buffer overlapping the output",
                     lambda: run_with({**workspace, name: alias}))
    if x_in.size >= out.size:
        over_input = x_in.reshape(-1)[:out.size].reshape(out.shape)
        _refuses(algorithm, spec, "an output overlapping the input",
                 lambda: algorithm.run(x_in, prepared, spec, out=over_input,
                                       workspace=workspace))


def measured_workspace(algorithm: ConvAlgorithm, spec: ConvSpec, seed: int = 0) -> int:
    """Peak bytes one run allocates beyond its input, prepared weights and a preallocated
    output (tracemalloc, the minimum of three runs after a warm-up)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape(algorithm.input_layout)).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    prepared = algorithm.prepare(w, rng.standard_normal(spec.m).astype(spec.dtype), spec)
    out = np.empty(spec.output_shape(algorithm.output_layout), dtype=spec.dtype)
    algorithm.run(x, prepared, spec, out=out)  # warm caches of lazily created objects
    return peak_allocation(lambda: algorithm.run(x, prepared, spec, out=out))


def check_workspace(algorithm: ConvAlgorithm, spec: ConvSpec) -> None:
    """`workspace_bytes` is a tight upper bound of what a run allocates (the planner's memory
    promise rests on it), and `prepared_bytes` is exactly what `prepare` keeps."""
    predicted = algorithm.workspace_bytes(spec)
    measured = measured_workspace(algorithm, spec)
    if measured > predicted:
        raise _fail(algorithm, spec, f"a run allocated {measured} bytes, over the declared "
                    f"workspace of {predicted}")
    if predicted > 1.25 * measured + WORKSPACE_SLACK:
        raise _fail(algorithm, spec, f"declared workspace {predicted} bytes is far above the "
                    f"{measured} a run allocates")
    w = np.ones(spec.weight_shape, dtype=spec.dtype)
    kept = algorithm.prepare(w, np.ones(spec.m, dtype=spec.dtype), spec).nbytes
    if kept != algorithm.prepared_bytes(spec):
        raise _fail(algorithm, spec, f"prepare kept {kept} bytes, prepared_bytes says "
                    f"{algorithm.prepared_bytes(spec)}")


def measured_preparation(algorithm: ConvAlgorithm, spec: ConvSpec, seed: int = 0) -> int:
    """Peak bytes `prepare` allocates beyond the caller's C-contiguous weights and bias, which
    exist before it starts (tracemalloc, the minimum of three)."""
    _, w, b = _data(spec, seed, True)
    return peak_allocation(lambda: algorithm.prepare(w, b, spec))


def _prepare(algorithm: ConvAlgorithm, spec: ConvSpec, w: np.ndarray,
             b: np.ndarray | None) -> Prepared:
    """`prepare`; any exception from a spec it claims to run is a failed check."""
    try:
        return algorithm.prepare(w, b, spec)
    except Exception as error:
        raise _fail(algorithm, spec, f"prepare failed: {error!r}") from None


def check_preparation(algorithm: ConvAlgorithm, spec: ConvSpec) -> None:
    """`prepare` allocates what it declares: new weights when `prepare_copies` says so, plus
    `prepare_extra_bytes` (its peak is within `PREPARE_SLACK` below that and
    `PREPARE_OBJECT_BYTES` above, so never above `prepared_bytes + prepare_extra_bytes`).
    Prepared weights are read-only. Without a copy they are a view of the caller's weights,
    which stay writeable and unchanged by a run; with one they share no memory with them.
    Weights that are not C-contiguous are converted, never viewed."""
    copies = algorithm.prepare_copies(spec)
    x, w, b = _data(spec, 2, True)
    original = w.copy()
    prepared = _prepare(algorithm, spec, w, b)
    if prepared.weights.flags.writeable:
        raise _fail(algorithm, spec, "the prepared weights are writeable")
    shared = np.shares_memory(prepared.weights, w)
    if copies and shared:
        raise _fail(algorithm, spec, "prepare_copies says a copy, but the prepared weights "
                    "share memory with the caller's")
    if not copies:
        if not shared:
            raise _fail(algorithm, spec, "prepare_copies says a view, but the prepared weights "
                        "share no memory with the caller's")
        _run(algorithm, spec, x, w, b)
        if not (w.flags.writeable and np.array_equal(w, original)):
            raise _fail(algorithm, spec, "the caller's weights were changed")
    strided = np.repeat(w, 2, axis=0)[::2]
    converted = _prepare(algorithm, spec, strided, b)
    if not np.array_equal(converted.weights, prepared.weights):
        raise _fail(algorithm, spec, "weights that are not C-contiguous are prepared otherwise")
    if not strided.flags.c_contiguous and np.shares_memory(converted.weights, strided):
        raise _fail(algorithm, spec, "the prepared weights view weights that are not "
                    "C-contiguous")
    extra = algorithm.prepare_extra_bytes(spec)
    declared = (algorithm.prepared_bytes(spec, bias=False) if copies else 0) + extra
    measured = measured_preparation(algorithm, spec)
    if measured > declared + PREPARE_OBJECT_BYTES:
        raise _fail(algorithm, spec, f"prepare allocated {measured} bytes, over the {declared} "
                    f"it declares ({'a copy and ' if copies else ''}{extra} extra)")
    if measured < declared - PREPARE_SLACK:
        raise _fail(algorithm, spec, f"prepare declares {declared} bytes, far above the "
                    f"{measured} it allocates")


def fitted_specs(algorithm: ConvAlgorithm, specs: Iterable[ConvSpec] = SPECS) -> list[ConvSpec]:
    """The corpus fitted to what ``algorithm`` runs, without repeats."""
    out: list[ConvSpec] = []
    for spec in specs:
        fitted = fit(spec, algorithm)
        if fitted is not None and fitted not in out:
            out.append(fitted)
    return out


def check_algorithm(algorithm: ConvAlgorithm, specs: Iterable[ConvSpec] = SPECS) -> int:
    """Every check on every spec of the corpus the algorithm runs (and the honesty check on
    every spec as given); the number of fitted specs checked. ConformanceError on the first
    broken contract."""
    specs = tuple(specs)
    fitted = fitted_specs(algorithm, specs)
    if not fitted:
        raise ConformanceError(f"{algorithm.name} runs none of the {len(specs)} specs")
    for spec in specs:
        check_supports_is_honest(algorithm, spec)
    for spec in fitted:
        check_matches_reference(algorithm, spec, bias=True)
        check_matches_reference(algorithm, spec, seed=1, bias=False)
        check_out_argument(algorithm, spec)
        check_workspace(algorithm, spec)
        check_workspace_argument(algorithm, spec)
        check_preparation(algorithm, spec)
    return len(fitted)
