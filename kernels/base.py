"""The interface every convolution algorithm implements, and the checks they all share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .spec import ConvSpec, Layout

#: NumPy ufuncs on strided multi-dimensional views (the shifted windows of most algorithms)
#: allocate one buffer per operand of up to the ufunc buffer size. Runs use this small size:
#: 12 KiB of buffers instead of 96 KiB, at no measurable cost in speed.
UFUNC_BUFSIZE = 1024


#: Interpreter objects per kernel tap for an algorithm that tabulates every tap's row and column
#: spans before it runs (a tuple and two spans: 301 bytes measured): 36 KiB for an 11x11 kernel,
#: more than the fixed allowance below.
TAP_TABLE_BYTES = 320


def run_overhead_bytes(itemsize: int) -> int:
    """A fixed allowance every run may use beyond its buffers: three ufunc buffers plus 16 KiB of
    interpreter objects (views, index tuples, spans; measured at 2.5-9 KiB)."""
    return 3 * UFUNC_BUFSIZE * itemsize + 16 * 1024


def check_buffer(a: object, shape: tuple[int, ...], dtype: str | np.dtype, what: str) -> None:
    """ValueError unless ``a`` is a writeable C-contiguous array of ``shape`` and ``dtype``: a
    buffer a run writes into (an output, a workspace) without allocating."""
    dtype = np.dtype(dtype)
    if (not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype
            or not a.flags.c_contiguous or not a.flags.writeable):
        got = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
        raise ValueError(f"{what} must be a writeable C-contiguous {dtype} array of shape "
                         f"{tuple(shape)}, got {got}")


def check_disjoint(named: Mapping[str, np.ndarray], others: Iterable[tuple[str, np.ndarray]]
                   ) -> None:
    """ValueError when a buffer of ``named`` may share memory with another of them or with one
    of ``others`` (what the run reads or writes besides). By memory bounds: the arena's views
    are disjoint byte ranges, so bounds tell them apart exactly."""
    items = list(named.items())
    rest = list(others)
    for i, (name, a) in enumerate(items):
        for other, b in [*items[i + 1:], *rest]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name} overlaps {other}")


def take_workspace(workspace: Mapping[str, np.ndarray] | None,
                   shapes: Mapping[str, tuple[int, ...]], dtype: str | np.dtype,
                   others: Iterable[tuple[str, np.ndarray]] = ()) -> dict[str, np.ndarray]:
    """The named temporaries of a run: new arrays of ``shapes``, or the caller's ``workspace``
    checked to hold exactly those names and shapes, each writeable, C-contiguous, of ``dtype``
    and sharing no memory with another or with ``others``."""
    if workspace is None:
        return {name: np.empty(shape, dtype=dtype) for name, shape in shapes.items()}
    if set(workspace) != set(shapes):
        raise ValueError(f"workspace has buffers {sorted(workspace)}, expected "
                         f"{sorted(shapes)}")
    for name, shape in shapes.items():
        check_buffer(workspace[name], shape, dtype, f"workspace {name!r}")
    check_disjoint({f"workspace {name!r}": a for name, a in workspace.items()}, others)
    return dict(workspace)


@dataclass(frozen=True)
class Prepared:
    """Weights reordered (or transformed) once for one algorithm; they persist between runs.

    ``weights`` has a leading group axis; its layout is the algorithm's own business.
    """

    algorithm: str
    weight_shape: tuple[int, int, int, int]
    groups: int
    weights: np.ndarray
    bias: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes + (0 if self.bias is None else self.bias.nbytes)


class ConvAlgorithm(ABC):
    """One GEMM-based (or direct) way to compute a convolution, under its paper name.

    Subclasses declare their layouts and say what they support, how much workspace they need
    (as named buffer shapes, so the prediction and the allocation are one and the same fact),
    how they reorder weights, and how they compute one group of one image.
    """

    name: ClassVar[str]
    input_layout: ClassVar[Layout]
    output_layout: ClassVar[Layout]
    summary: ClassVar[str]
    workspace_formula: ClassVar[str]
    #: Largest allowed |y - y_ref| / conv(|x|, |w|) in float32 (conv of absolute values bounds
    #: the rounding error of any summation order; Winograd's transforms add more).
    tolerance: ClassVar[float] = 1e-5
    #: Outputs whose rounding errors mix (Winograd: the outputs of one tile). The tolerance then
    #: applies to the largest conv(|x|, |w|) within this many positions of an output.
    error_neighbourhood: ClassVar[int] = 0
    #: Whether `run` keeps a table of every tap's spans (`TAP_TABLE_BYTES` each).
    tabulates_taps: ClassVar[bool] = False
    #: Human-readable limits, shown by `convplan algorithms`.
    limits: ClassVar[str] = "any stride, padding, dilation, groups"
    #: When the prepared form reorders the grouped weights (g, mg, cg, kh, kw) without
    #: computing anything: their axes in the order it keeps them (None: a transform).
    weight_order: ClassVar[tuple[int, ...] | None] = None

    # -- what it can do ----------------------------------------------------------------------
    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        """Why this algorithm cannot run ``spec``, or None when it can."""
        return None

    def supports(self, spec: ConvSpec) -> bool:
        return self.unsupported_reason(spec) is None

    def require(self, spec: ConvSpec) -> None:
        reason = self.unsupported_reason(spec)
        if reason is not None:
            raise ValueError(
                f"algorithm {self.name!r} does not support {spec.describe()}: {reason}")

    # -- memory ------------------------------------------------------------------------------
    @abstractmethod
    def workspace_shapes(self, spec: ConvSpec) -> dict[str, tuple[int, ...]]:
        """The temporary buffers `run` allocates (reused across images and groups)."""

    def workspace_bytes(self, spec: ConvSpec) -> int:
        """Peak bytes `run` allocates beyond its output and prepared weights: its buffers plus
        `run_overhead_bytes`, plus its table of taps when it keeps one."""
        buffers = sum(int(np.prod(s)) for s in self.workspace_shapes(spec).values())
        taps = spec.kh * spec.kw * TAP_TABLE_BYTES if self.tabulates_taps else 0
        return buffers * spec.itemsize + run_overhead_bytes(spec.itemsize) + taps

    def calls(self, spec: ConvSpec) -> int:
        """About how many NumPy and BLAS calls one `run` makes from Python: what the analytic
        cost model prices beside the FLOPs and bytes (a layer of 544 groups is 544 times the
        calls of one). By default one per tap and one GEMM, per group and image; algorithms
        that block groups or channels together say less."""
        return spec.n * spec.groups * (spec.kh * spec.kw + 1)

    def prepared_bytes(self, spec: ConvSpec, bias: bool = True) -> int:
        """Bytes of the prepared (persistent) weights and bias."""
        return (self.prepare_shape_elements(spec) + (spec.m if bias else 0)) * spec.itemsize

    def prepare_shape_elements(self, spec: ConvSpec) -> int:
        return math.prod(self.prepared_shape(spec))

    def prepared_shape(self, spec: ConvSpec) -> tuple[int, ...]:
        """The shape of the prepared weights `prepare` returns for ``spec`` (their dtype is the
        spec's), known without preparing: a compiled plan's loader maps arrays of this shape.
        For a reordering algorithm, `_prepare_weights` applied to a zero-strided stand-in of
        the grouped weights (no memory: every reshape of it is a view); a transform says it
        itself. `prepare` checks that its result has it."""
        if self.weight_order is None:
            raise NotImplementedError(f"{self.name} transforms its weights: it must say the "
                                      "shape they take")
        grouped = (spec.groups, spec.mg, spec.cg, spec.kh, spec.kw)
        stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, spec.dtype), grouped,
                                                   (0,) * len(grouped), writeable=False)
        return tuple(int(d) for d in self._prepare_weights(stand_in, spec).shape)

    # -- weights -----------------------------------------------------------------------------
    def prepared_form(self) -> str:
        """How this algorithm keeps its prepared weights, as a short text: a compiled plan
        records it and its loader refuses weights kept in another form (an algorithm whose
        layout changed between versions would otherwise read them wrongly, silently)."""
        if self.weight_order is None:
            raise NotImplementedError(f"{self.name} transforms its weights: it must describe "
                                      "the form it keeps them in")
        return f"axes {list(self.weight_order)} of (g, mg, cg, kh, kw)"

    def prepare_copies(self, spec: ConvSpec) -> bool:
        """Whether `prepare` makes new weights (True), or keeps a read-only view of the caller's
        C-contiguous array (False: the prepared form only reshapes it, so the weights are held
        once). Derived from `weight_order`; `prepare` checks that the claim holds."""
        if self.weight_order is None:
            return True
        shape = (spec.groups, spec.mg, spec.cg, spec.kh, spec.kw)
        moved = [axis for axis in self.weight_order if shape[axis] > 1]
        return moved != sorted(moved)

    def prepare_extra_bytes(self, spec: ConvSpec) -> int:
        """Peak bytes `prepare` allocates beyond what it keeps (temporaries it frees before it
        returns), for C-contiguous weights of the spec's dtype.

        While `prepare` runs, the process holds the caller's weights, the prepared form (the
        same bytes when not `prepare_copies`) and this much more.
        """
        return 0

    def prepare(self, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec) -> Prepared:
        """Reorder (or transform) the weights once; the result is reused by every `run`.

        The prepared weights and bias are read-only. They are views of ``w`` and ``b`` when
        those already are in the kept form (see `prepare_copies`; the bias when it is
        C-contiguous): the caller's arrays are left as they were, writeable.
        """
        self.require(spec)
        w = np.asarray(w)
        if w.shape != spec.weight_shape:
            raise ValueError(f"weights have shape {w.shape}, expected {spec.weight_shape} "
                             "(m, c/groups, kh, kw)")
        _check_float(w, "weights", spec.dtype)
        bias = None
        if b is not None:
            b = np.asarray(b)
            if b.shape != (spec.m,):
                raise ValueError(f"bias has shape {b.shape}, expected ({spec.m},)")
            _check_float(b, "bias", spec.dtype)
            bias = _read_only(np.ascontiguousarray(b, dtype=spec.dtype))
        copies = self.prepare_copies(spec)
        if not copies:
            # The view is of C-contiguous native weights; others are converted (copied) once.
            w = np.ascontiguousarray(w, dtype=spec.dtype)
        grouped = w.reshape(spec.groups, spec.mg, spec.cg, spec.kh, spec.kw)
        weights = np.ascontiguousarray(self._prepare_weights(grouped, spec), dtype=spec.dtype)
        shared = np.shares_memory(weights, w)
        if copies and shared:
            weights = weights.copy()
        elif not copies and not shared:
            raise RuntimeError(f"algorithm {self.name!r} says its prepared weights are a view "
                               f"of the original for {spec.describe()}, but they are a copy")
        if weights.shape != self.prepared_shape(spec):
            raise RuntimeError(f"algorithm {self.name!r} prepared weights of shape "
                               f"{weights.shape} for {spec.describe()}, not the "
                               f"{self.prepared_shape(spec)} it declares")
        return Prepared(self.name, spec.weight_shape, spec.groups, _read_only(weights), bias)

    @abstractmethod
    def _prepare_weights(self, w: np.ndarray, spec: ConvSpec) -> np.ndarray:
        """``w`` is (groups, mg, cg, kh, kw); return the algorithm's persistent form."""

    # -- running -----------------------------------------------------------------------------
    def run(self, x: np.ndarray, prepared: Prepared, spec: ConvSpec,
            out: np.ndarray | None = None,
            workspace: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Convolve ``x`` (in `input_layout`, C-contiguous) into ``out`` (in `output_layout`).

        ``out`` and ``workspace`` (the buffers of `workspace_shapes`, by name) are allocated
        when not given; given, they are checked and used, so a run into an arena's views
        allocates nothing but `run_overhead_bytes` (and its tap table)."""
        self.require(spec)
        if prepared.algorithm != self.name:
            raise ValueError(f"weights were prepared for {prepared.algorithm!r}, not {self.name!r}")
        if prepared.weight_shape != spec.weight_shape or prepared.groups != spec.groups:
            raise ValueError(f"weights were prepared for shape {prepared.weight_shape} with "
                             f"{prepared.groups} groups, not for {spec.describe()}")
        expected = spec.input_shape(self.input_layout)
        if not isinstance(x, np.ndarray) or x.shape != expected:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"input has shape {shape}, expected {expected} ({self.input_layout})")
        _check_float(x, "input", spec.dtype)
        if x.dtype != spec.dtype:
            raise ValueError(f"input dtype {x.dtype} differs from the spec's {spec.dtype}")
        if not x.flags.c_contiguous:
            raise ValueError("input must be C-contiguous (use kernels.conv2d to convert)")
        out_shape = spec.output_shape(self.output_layout)
        read = [("the input", x), ("the prepared weights", prepared.weights)]
        if prepared.bias is not None:
            read.append(("the prepared bias", prepared.bias))
        if out is None:
            out = np.empty(out_shape, dtype=spec.dtype)
        else:
            check_buffer(out, out_shape, spec.dtype, "out")
            check_disjoint({"out": out}, read)
        workspace = take_workspace(workspace, self.workspace_shapes(spec), spec.dtype,
                                   [*read, ("out", out)])
        previous = np.setbufsize(UFUNC_BUFSIZE)
        try:
            for i in range(spec.n):
                out_img = out[i]
                if prepared.bias is None:
                    out_img.fill(0)
                elif self.output_layout == "NCHW":
                    np.copyto(out_img, prepared.bias[:, None, None])
                else:
                    np.copyto(out_img, prepared.bias)
                self._run_image(x[i], prepared.weights, out_img, spec, workspace)
        finally:
            np.setbufsize(previous)
        return out

    def _run_image(self, x: np.ndarray, w: np.ndarray, out: np.ndarray, spec: ConvSpec,
                   ws: dict[str, np.ndarray]) -> None:
        """Accumulate one image's convolution into ``out`` (already holding the bias)."""
        for g, xg, outg in self.groups(x, out, spec):
            self._run_group(xg, w[g], outg, spec, ws)

    def _run_group(self, x: np.ndarray, w: np.ndarray, out: np.ndarray, spec: ConvSpec,
                   ws: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def groups(self, x: np.ndarray, out: np.ndarray,
               spec: ConvSpec) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(group, input view, output view) of one image, in this algorithm's layouts."""
        cg, mg = spec.cg, spec.mg
        for g in range(spec.groups):
            xs, os_ = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
            xg = x[xs] if self.input_layout == "NCHW" else x[:, :, xs]
            outg = out[os_] if self.output_layout == "NCHW" else out[:, :, os_]
            yield g, xg, outg

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "input_layout": self.input_layout,
            "output_layout": self.output_layout,
            "summary": self.summary,
            "supports": self.limits,
            "workspace": self.workspace_formula,
        }


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (``a`` itself keeps its flags)."""
    view = a.view()
    view.flags.writeable = False
    return view


def _check_float(a: np.ndarray, what: str, dtype: str) -> None:
    if a.dtype.kind != "f" or a.dtype.name not in ("float32", "float64"):
        raise ValueError(f"{what} must be float32 or float64, got {a.dtype}")
    if a.dtype.name != dtype:
        raise ValueError(f"{what} dtype {a.dtype} differs from the spec's {dtype}")
