"""Every registered operator (found through the registry, so a new one fails here until it has
cases) through the checks the package ships (`convplan.kernels.operators.conformance`): the
contracts the executor relies on (output_shapes is what run returns, NHWC runs are NCHW runs
transposed, in-place runs equal out-of-place ones, workspace_bytes is a tight upper bound of what a
run allocates), with ONNX's reference evaluator on the single-layer ONNX export as the value oracle.
Deliberately broken operators show that each check catches what it is for.

Pooling has extra oracles: the reference evaluator pools wrongly in some configurations (below), so
pooling is also checked against a brute-force float64 pool, onnxruntime and PyTorch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from convplan.kernels import operators
from convplan.kernels.base import run_overhead_bytes
from convplan.kernels.operators import Operator
from convplan.kernels.operators.conformance import (
    ConformanceError,
    OperatorCase,
    Reference,
    check_operator,
    check_operator_cases,
    measured_workspace,
    operator_data,
)
from convplan.kernels.operators.elementwise import Relu
from convplan.kernels.operators.normalization import BatchNorm
from convplan.kernels.operators.shape import Identity, Reshape, Transpose
from convplan.kernels.operators.softmax import Softmax
from convplan.selector.onnx import layer_to_onnx, load_onnx, single_layer_model
from convplan.selector.runner import run_network
from tests.support.strategies import examples

Shape = tuple[int, ...]
INT64_MAX = 2**63 - 1
#: One operator instance's attributes and the shapes (logical, NCHW) it is run on.
Case = OperatorCase


# -- strategies ---------------------------------------------------------------------------------
# ONNX stores float attributes (alpha, beta ...) as float32, so drawn ones are float32-exact.
dtypes = st.sampled_from(["float32", "float32", "float64"])


def tensor_shapes(min_rank: int = 1, max_rank: int = 4, max_side: int = 5) -> st.SearchStrategy:
    return st.lists(st.integers(1, max_side), min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def images(draw, max_side: int = 7, max_channels: int = 4) -> Shape:
    """(N, C, H, W) with batch 1-2 and odd and even sides."""
    return (draw(st.integers(1, 2)), draw(st.integers(1, max_channels)),
            draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))


def unary(attrs: st.SearchStrategy | None = None) -> Callable[[], st.SearchStrategy]:
    def cases() -> st.SearchStrategy:
        return st.builds(lambda a, s, d: Case(a, [s], d), st.just({}) if attrs is None else attrs,
                         tensor_shapes(), dtypes)
    return cases


@st.composite
def clip_attrs(draw) -> dict[str, Any]:
    bound = st.one_of(st.none(), st.floats(-2, 2, allow_nan=False))
    lo, hi = draw(bound), draw(bound)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return {k: v for k, v in (("min", lo), ("max", hi)) if v is not None or draw(st.booleans())}


@st.composite
def broadcastable(draw, count: int) -> list[Shape]:
    """``count`` shapes that broadcast together: trailing parts of one shape, some dims 1."""
    full = draw(tensor_shapes(1, 4))
    out = []
    for _ in range(count):
        rank = draw(st.integers(1, len(full)))
        out.append(tuple(1 if draw(st.integers(0, 3)) == 0 else d for d in full[-rank:]))
    return out


def arithmetic(most: int) -> Callable[[], st.SearchStrategy]:
    @st.composite
    def cases(draw) -> Case:
        n = draw(st.integers(1, most))
        constant = n == 1 or (most > 2 and draw(st.booleans()))
        shapes = draw(broadcastable(n + constant))
        attrs = {"constant_shape": shapes.pop()} if constant else {}
        return Case(attrs, shapes, draw(dtypes), nonzero={"constant", 1})
    return cases


@st.composite
def batchnorm_cases(draw) -> Case:
    return Case({}, [draw(tensor_shapes(2, 4))], draw(dtypes))


@st.composite
def pool_cases(draw, op: str) -> Case:
    attrs: dict[str, Any] = {
        "kernel": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "stride": draw(st.sampled_from([1, 2, 3, (1, 2), (3, 1)])),
        "padding": draw(st.sampled_from([0, 1, (1, 0), tuple(draw(st.integers(0, 2))
                                                             for _ in range(4))])),
        "ceil_mode": draw(st.booleans()),
    }
    if op == "maxpool":
        attrs["dilation"] = draw(st.sampled_from([1, 1, 2, (1, 2)]))
    else:
        attrs["count_include_pad"] = draw(st.booleans())
    shape = draw(images(max_side=9))
    assume(_valid(op, attrs, [shape]))
    return Case(attrs, [shape], draw(dtypes))


@st.composite
def conv_cases(draw) -> Case:
    groups = draw(st.integers(1, 2))
    n, c, h, w = draw(images(max_side=8))
    attrs = {"out_channels": groups * draw(st.integers(1, 3)),
             "kernel": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
             "stride": draw(st.sampled_from([1, 2, (1, 2)])),
             "padding": tuple(draw(st.integers(0, 2)) for _ in range(4)),
             "dilation": draw(st.sampled_from([1, 1, 2])), "groups": groups,
             "bias": draw(st.booleans())}
    shape = (n, c * groups, h, w)
    assume(_valid("conv", attrs, [shape]))
    return Case(attrs, [shape], draw(dtypes))


@st.composite
def convtranspose_cases(draw) -> Case:
    groups = draw(st.integers(1, 2))
    n, c, h, w = draw(images(max_side=6, max_channels=3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2])))
    attrs = {"out_channels": groups * draw(st.integers(1, 3)),
             "kernel": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
             "stride": stride, "padding": tuple(draw(st.integers(0, 3)) for _ in range(4)),
             "output_padding": tuple(draw(st.integers(0, s - 1)) for s in stride),
             "dilation": dilation, "groups": groups, "bias": draw(st.booleans()),
             "algorithm": draw(st.sampled_from(["col2im", "zero-insert"]))}
    shape = (n, c * groups, h, w)
    assume(_valid("convtranspose", attrs, [shape]))
    return Case(attrs, [shape], draw(dtypes))


@st.composite
def lrn_cases(draw) -> Case:
    attrs = {"size": draw(st.integers(1, 5)), "alpha": draw(st.floats(2.0**-13, 1.0, width=32)),
             "beta": draw(st.floats(0.5, 1.0, width=32)),
             "bias": draw(st.floats(0.5, 2.0, width=32))}
    return Case(attrs, [draw(images(max_channels=7))], draw(dtypes))


@st.composite
def axis_cases(draw, op: str, inclusive: bool = False) -> Case:
    """Ops whose one attribute is an axis (negative ones too)."""
    shape = draw(tensor_shapes())
    r = len(shape)
    axis = draw(st.integers(-r, r if inclusive else r - 1))
    return Case({"axis": axis}, [shape], draw(dtypes))


@st.composite
def concat_cases(draw) -> Case:
    base = list(draw(tensor_shapes()))
    axis = draw(st.integers(-len(base), len(base) - 1))
    shapes = []
    for _ in range(draw(st.integers(1, 3))):
        base[axis] = draw(st.integers(1, 4))
        shapes.append(tuple(base))
    return Case({"axis": axis}, shapes, draw(dtypes))


@st.composite
def split_cases(draw) -> Case:
    shape = draw(tensor_shapes(max_side=6))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    dim, sizes = shape[axis], []
    while dim:
        sizes.append(draw(st.integers(1, dim)))
        dim -= sizes[-1]
    return Case({"axis": axis, "sizes": sizes}, [shape], draw(dtypes))


@st.composite
def reshape_cases(draw) -> Case:
    """Merge runs of neighbouring dims, then write some as 0 (copy) and one as -1 (infer)."""
    shape = draw(tensor_shapes(max_side=4))
    target: list[int] = []
    i = 0
    while i < len(shape):
        j = draw(st.integers(i + 1, len(shape)))
        target.append(math.prod(shape[i:j]))
        i = j
    written = [0 if i < len(shape) and d == shape[i] and draw(st.booleans()) else d
               for i, d in enumerate(target)]
    if draw(st.booleans()):
        written[draw(st.integers(0, len(written) - 1))] = -1
    return Case({"shape": written}, [shape], draw(dtypes))


@st.composite
def transpose_cases(draw) -> Case:
    shape = draw(tensor_shapes())
    perm = draw(st.none() | st.permutations(range(len(shape))))
    return Case({} if perm is None else {"perm": perm}, [shape], draw(dtypes))


@st.composite
def slice_cases(draw) -> Case:
    shape = draw(tensor_shapes(max_side=6))
    r = len(shape)
    axes = draw(st.permutations(range(r)))[:draw(st.integers(1, r))]
    index = st.one_of(st.integers(-8, 8), st.sampled_from([INT64_MAX, -INT64_MAX]))
    starts = [draw(index) for _ in axes]
    ends = [draw(index) for _ in axes]
    steps = [draw(st.sampled_from([1, 1, 2, 3, -1, -2])) for _ in axes]
    attrs: dict[str, Any] = {"starts": starts, "ends": ends}
    if draw(st.booleans()) or axes != list(range(len(axes))):
        attrs["axes"] = [a - r if draw(st.booleans()) else a for a in axes]
    if draw(st.booleans()) or any(s != 1 for s in steps):
        attrs["steps"] = steps
    assume(_valid("slice", attrs, [shape]))
    return Case(attrs, [shape], draw(dtypes))


@st.composite
def expand_cases(draw) -> Case:
    """A target shape that broadcasts with the input: longer or shorter, 1s on either side
    (torch's expand_as of a squeeze-excite gate to its feature map)."""
    shape = draw(tensor_shapes())
    extra = draw(st.lists(st.integers(1, 3), max_size=4 - len(shape)))
    target = [*extra, *(draw(st.sampled_from([1, d, 3])) if d == 1 else
                        draw(st.sampled_from([1, d])) for d in shape)]
    drop = draw(st.integers(0, len(target) - 1))       # a shorter target broadcasts too
    return Case({"shape": target[drop:] if all(t == 1 for t in target[:drop]) else target},
                [shape], draw(dtypes))


@st.composite
def tile_cases(draw) -> Case:
    shape = draw(tensor_shapes(max_side=4))
    return Case({"repeats": draw(st.lists(st.integers(1, 3), min_size=len(shape),
                                          max_size=len(shape)))}, [shape], draw(dtypes))


@st.composite
def gemm_cases(draw) -> Case:
    m, k = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    factor = st.sampled_from([1.0, 1.0, 0.5, -2.0])
    attrs = {"out_features": draw(st.integers(1, 6)), "alpha": draw(factor),
             "beta": draw(factor), "trans_a": draw(st.booleans()),
             "trans_b": draw(st.booleans()), "bias": draw(st.booleans())}
    return Case(attrs, [(k, m) if attrs["trans_a"] else (m, k)], draw(dtypes))


@st.composite
def matmul_cases(draw) -> Case:
    k = draw(st.integers(1, 5))
    batch = draw(tensor_shapes(0, 2, max_side=3))
    a_rank, b_rank = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    assume(a_rank > 1 or b_rank > 1)  # two vectors make a scalar, which no layer produces

    def operand(rank: int, vector: Shape, matrix: Shape) -> Shape:
        if rank == 1:
            return vector
        lead = batch[len(batch) - min(len(batch), rank - 2):]
        lead = tuple(1 if draw(st.booleans()) else d for d in lead)
        return (*lead, *matrix)

    a = operand(a_rank, (k,), (draw(st.integers(1, 4)), k))
    b = operand(b_rank, (k,), (k, draw(st.integers(1, 4))))
    if draw(st.booleans()):
        return Case({"constant_shape": b}, [a], draw(dtypes))
    return Case({}, [a, b], draw(dtypes))


@st.composite
def reduce_cases(draw) -> Case:
    """Some axes (negative ones too) or all; sometimes an input of more than one block of the
    sum of squares (`reduce.BLOCK`) with the reduced axes outside and inside a block."""
    shape = draw(st.one_of(tensor_shapes(max_side=6),
                           st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 40),
                                     st.integers(1, 12))))
    r = len(shape)
    axes = draw(st.none() | st.lists(st.integers(-r, r - 1), min_size=1, max_size=r,
                                     unique_by=lambda a: a % r))
    return Case({"axes": axes, "keepdims": draw(st.booleans())}, [shape], draw(dtypes))


@st.composite
def prelu_cases(draw) -> Case:
    """A slope broadcasting to the input: a trailing part of its shape, some dims 1 (one per
    channel: (C, 1, 1))."""
    shape = draw(tensor_shapes(max_side=6))
    rank = draw(st.integers(1, len(shape)))
    slope = tuple(1 if draw(st.booleans()) else d for d in shape[-rank:])
    return Case({"slope_shape": slope}, [shape], draw(dtypes))


@st.composite
def layernorm_cases(draw) -> Case:
    """The trailing axes (ONNX's), or any set (channels: ConvNeXt's), negative ones too; with
    and without bias; sometimes more than one block of squares (`reduce.BLOCK`)."""
    shape = draw(st.one_of(tensor_shapes(max_side=6),
                           st.tuples(st.integers(1, 3), st.integers(1, 24), st.integers(1, 30),
                                     st.integers(1, 30))))
    r = len(shape)
    if draw(st.booleans()):
        start = draw(st.integers(0, r - 1))
        axes = [a - r for a in range(start, r)]
    else:
        axes = draw(st.lists(st.integers(-r, r - 1), min_size=1, max_size=r,
                             unique_by=lambda a: a % r))
    return Case({"axes": axes, "epsilon": draw(st.sampled_from([1e-5, 1e-6, 0.5])),
                 "bias": draw(st.booleans())}, [shape], draw(dtypes))


@st.composite
def pad_cases(draw) -> Case:
    """Every mode; reflect's pads smaller than the side they mirror; in constant mode some
    negative (cropping, at least one element left)."""
    shape = draw(tensor_shapes(max_side=6))
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    limit = [d - 1 if mode == "reflect" else 3 for d in shape]
    pads = [draw(st.integers(0, m)) for m in limit] + [draw(st.integers(0, m)) for m in limit]
    if mode == "constant" and draw(st.booleans()):
        for axis, d in enumerate(shape):        # crop up to d - 1 elements from either end
            before = draw(st.integers(-(d - 1), pads[axis]))
            after = draw(st.integers(-(d - 1 + min(before, 0)), pads[axis + len(shape)]))
            pads[axis], pads[axis + len(shape)] = before, after
    return Case({"pads": pads, "mode": mode, "value": draw(st.floats(-2, 2, width=32))},
                [shape], draw(dtypes))


@st.composite
def resize_cases(draw) -> Case:
    """Up and down, by scales or to sizes, every coordinate and nearest mode."""
    shape = draw(images(max_side=6))
    attrs: dict[str, Any] = {
        "mode": draw(st.sampled_from(["nearest", "linear"])),
        "coordinates": draw(st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners",
                                             "asymmetric"])),
        "nearest": draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor",
                                         "ceil"]))}
    if draw(st.booleans()):     # a scale that would leave no row is 1
        attrs["scales"] = [s if math.floor(side * s) else 1.0 for side, s in
                           zip(shape[2:], [draw(st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0]))
                                           for _ in range(2)], strict=True)]
    else:
        attrs["sizes"] = [draw(st.integers(1, 13)) for _ in range(2)]
    return Case(attrs, [shape], draw(dtypes))


def _valid(op: str, attrs: dict[str, Any], shapes: list[Shape]) -> bool:
    try:
        operators.make(op, **attrs).output_shapes(shapes)
    except ValueError:
        return False
    return True


CASES: dict[str, Callable[[], st.SearchStrategy]] = {
    "conv": conv_cases,
    "convtranspose": convtranspose_cases,
    "relu": unary(),
    "clip": unary(clip_attrs()),
    "sigmoid": unary(),
    "hardsigmoid": unary(st.fixed_dictionaries(
        {"alpha": st.floats(0.0625, 1.0, width=32), "beta": st.floats(-1.0, 1.0, width=32)})),
    "hardswish": unary(),
    "identity": unary(),
    "add": arithmetic(3),
    "mul": arithmetic(3),
    "sub": arithmetic(2),
    "div": arithmetic(2),
    "batchnorm": batchnorm_cases,
    "maxpool": lambda: pool_cases("maxpool"),
    "avgpool": lambda: pool_cases("avgpool"),
    "globalavgpool": lambda: st.builds(lambda s, d: Case({}, [s], d), images(), dtypes),
    "lrn": lrn_cases,
    "softmax": lambda: axis_cases("softmax"),
    "concat": concat_cases,
    "split": split_cases,
    "flatten": lambda: axis_cases("flatten", inclusive=True),
    "reshape": reshape_cases,
    "transpose": transpose_cases,
    "slice": slice_cases,
    "expand": expand_cases,
    "tile": tile_cases,
    "gemm": gemm_cases,
    "matmul": matmul_cases,
    "reducesum": reduce_cases,
    "reducemean": reduce_cases,
    "reducemax": reduce_cases,
    "reducel2": reduce_cases,
    "leakyrelu": unary(st.fixed_dictionaries({"alpha": st.floats(-2.0, 2.0, width=32)})),
    "elu": unary(st.fixed_dictionaries({"alpha": st.floats(0.0625, 2.0, width=32)})),
    "selu": unary(st.fixed_dictionaries({"alpha": st.floats(0.0625, 2.0, width=32),
                                         "gamma": st.floats(0.0625, 2.0, width=32)})),
    "erf": unary(),
    "gelu": unary(st.fixed_dictionaries({"approximate": st.sampled_from(["none", "tanh"])})),
    "prelu": prelu_cases,
    "sqrt": unary(),
    "pow": unary(st.fixed_dictionaries({"exponent": st.sampled_from([2.0, 3.0, 0.5, -1.0])})),
    "layernorm": layernorm_cases,
    "instancenorm": lambda: st.builds(
        lambda s, e, d: Case({"epsilon": e}, [s], d),
        tensor_shapes(3, 4, max_side=7), st.sampled_from([1e-5, 0.25]), dtypes),
    "pad": pad_cases,
    "resize": resize_cases,
}


# -- running a case -----------------------------------------------------------------------------
def _data(op: Operator, case: Case, seed: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    return operator_data(op, case.shapes, case.dtype, seed, case.nonzero)


#: ONNX defines HardSwish as a function with the float32 attribute alpha = 1/6, so in float64 the
#: reference evaluator is off by float32's rounding of 1/6 (we use the exact 1/6, as PyTorch does).
#: erf (and GELU through it) is a rational approximation made for float32: 2.2e-9 relative in
#: any dtype. ONNX's tanh GELU rounds sqrt(2 / pi) and 0.044715 to float32 constants.
FLOAT64_TOLERANCE = {"hardswish": 1e-7, "erf": 1e-8, "gelu": 1e-7}


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str, what: str,
                 op: str = "") -> None:
    """Relative agreement, with the largest magnitude as the scale for values near zero."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = 1e-5 if dtype == "float32" else FLOAT64_TOLERANCE.get(op, 1e-11)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def run_onnx_reference(op: Operator, case: Case, xs: list[np.ndarray],
                       weights: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = single_layer_model(op.op, op.attrs, case.shapes, weights, dtype=case.dtype)
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. exp overflow in Sigmoid
        return list(ReferenceEvaluator(model).run(None, feeds))


def run_onnxruntime(op: Operator, case: Case, xs: list[np.ndarray],
                    weights: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    model = single_layer_model(op.op, op.attrs, case.shapes, weights, dtype=case.dtype)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX's opset-17 shape inference keeps ceil_mode's last window
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return list(session.run(None, {f"x{i}": x for i, x in enumerate(xs)}))


def lrn_reference(x: np.ndarray, size: int, alpha: float, beta: float,
                  bias: float) -> np.ndarray:
    """ONNX's LRN as its specification words it, in float64. (onnx 1.23's ReferenceEvaluator
    loops over the batch axis instead of the channels, so it is wrong whenever N != C.)"""
    x = x.astype(np.float64)
    square_sum = np.zeros_like(x)
    for c in range(x.shape[1]):
        lo = max(0, c - math.floor((size - 1) / 2))
        hi = min(x.shape[1] - 1, c + math.ceil((size - 1) / 2))
        square_sum[:, c] = (x[:, lo:hi + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * square_sum) ** beta


_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf_reference(op: str, attrs: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """erf and GELU in float64 through `math.erf` (or tanh: GELU's tanh form)."""
    x = x.astype(np.float64)
    if op == "erf":
        return _erf(x)
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def reference_evaluator_is_wrong(op: str, attrs: dict[str, Any], shapes: list[Shape],
                                 dtype: str = "float32") -> bool:
    """Configurations where onnx 1.23's ReferenceEvaluator is wrong (onnxruntime, and PyTorch or
    a brute-force implementation, agree with each other and with us).

    Pooling: its common pooling code, used for every AveragePool and for MaxPool with stride 1
    and dilation 1, gets ceil_mode windows wrong (values, or an IndexError) and reads pads as
    (top, bottom, left, right), not ONNX's (top, left, bottom, right) (wrong shapes and values
    unless left == bottom).
    Slice: with a negative step, a start before the first element must be clamped to 0 (ONNX's
    text; onnxruntime does); it slices with NumPy's rules instead, which select nothing.
    Erf (and the Gelu function built on it) is computed in float32 whatever the dtype, and so
    are LayerNormalization's statistics (stash_type 1, the only one it implements).
    Pad with negative pads (cropping): it pads with np.pad, which refuses them.
    Resize by scales to a fractional scale * size: ONNX's text (and onnxruntime) use the
    output's length, floor(scale * size), in align_corners and in pytorch_half_pixel's test
    for a single row; it uses scale * size.
    ConvTranspose with groups: it writes one output channel per group (a broadcast error, or
    a reshape error when the group has several).
    """
    if op == "convtranspose":
        return attrs["groups"] > 1
    if op in ("maxpool", "avgpool"):
        common = op == "avgpool" or (attrs["stride"] == (1, 1) and attrs["dilation"] == (1, 1))
        return common and (attrs["ceil_mode"] or len(set(attrs["padding"])) > 1)
    if op in ("erf", "gelu", "layernorm"):
        return dtype != "float32"
    if op == "resize":
        return resize_reference_is_wrong(attrs, shapes[0])
    if op == "pad":
        return min(attrs["pads"]) < 0
    if op == "slice":
        shape = shapes[0]
        n = len(attrs["starts"])
        axes = attrs["axes"] if attrs["axes"] is not None else range(n)
        steps = attrs["steps"] if attrs["steps"] is not None else (1,) * n
        return any(step < 0 and start < -shape[axis]
                   for start, axis, step in zip(attrs["starts"], axes, steps, strict=True))
    return False


def resize_reference_is_wrong(attrs: dict[str, Any], shape: Shape) -> bool:
    """Where the evaluator takes the output's length as scale * size, not its floor."""
    if attrs["scales"] is None:
        return False
    fractional = [(math.floor(d * s), d * s) for d, s in zip(shape[2:], attrs["scales"],
                                                             strict=True)]
    if attrs["coordinates"] == "align_corners":
        return any(lo != exact for lo, exact in fractional)
    return attrs["coordinates"] == "pytorch_half_pixel" and any(
        lo == 1 != exact for lo, exact in fractional)


def onnxruntime_runs(op: str, attrs: dict[str, Any], dtype: str) -> bool:
    """onnxruntime refuses pooling pads as large as the kernel, and float64 AveragePool, Erf,
    Gelu, LayerNormalization and Resize."""
    if (op in ("avgpool", "erf", "gelu", "layernorm", "resize", "convtranspose")
            and dtype != "float32"):
        return False
    if op in ("maxpool", "avgpool"):
        top, left, bottom, right = attrs["padding"]
        kh, kw = attrs["kernel"]
        return max(top, bottom) < kh and max(left, right) < kw
    return True


def references(name: str, op: Operator, case: Case) -> dict[str, Reference]:
    """The value oracles of a case: ONNX's reference evaluator on the exported layer, or where
    it is wrong, onnxruntime and brute force."""
    def onnx_reference(xs: list[np.ndarray], weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        return run_onnx_reference(op, case, xs, weights)

    def onnxruntime(xs: list[np.ndarray], weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        return run_onnxruntime(op, case, xs, weights)

    out: dict[str, Reference] = {}
    if name == "lrn":
        out["brute-force LRN"] = lambda xs, _: [lrn_reference(xs[0], **op.attrs)]
        if case.dtype == "float32" and op.attrs["size"] % 2:  # onnxruntime: float, odd sizes
            out["onnxruntime"] = onnxruntime
    elif reference_evaluator_is_wrong(name, op.attrs, case.shapes, case.dtype):
        if onnxruntime_runs(name, op.attrs, case.dtype):
            out["onnxruntime"] = onnxruntime
    else:
        out["ONNX reference"] = onnx_reference
    if name in ("maxpool", "avgpool"):
        out["brute-force pool"] = lambda xs, _: [pool_reference(xs[0], name, op.attrs)]
    if name in ("erf", "gelu"):
        out["math.erf"] = lambda xs, _: [erf_reference(name, op.attrs, xs[0])]
    if name in ("layernorm", "instancenorm"):
        out["float64 NumPy"] = lambda xs, w: [norm_reference(op, xs[0], w)]
    if name == "pad":
        out["np.pad"] = lambda xs, _: [pad_reference(xs[0], **op.attrs)]
    if name == "convtranspose":
        out["brute-force transposed convolution"] = lambda xs, w: [
            convtranspose_reference(xs[0], w["weight"], w.get("bias"), op.attrs)]
    return out


def convtranspose_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                            attrs: dict[str, Any]) -> np.ndarray:
    """ConvTranspose by its definition, in float64: input (i, j) through tap (p, q) adds
    x * w to output (i*stride + p*dilation - pad_top, j*stride + q*dilation - pad_left),
    input channel ci of group ci // (C/g) feeding that group's output channels; the sum is
    then cropped to the output (output_padding extends it at the bottom and right)."""
    n, c, h, width = x.shape
    _, mg, kh, kw = w.shape
    groups = attrs["groups"]
    cg = c // groups
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    top, left, bottom, right = attrs["padding"]
    oph, opw = attrs["output_padding"]
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (width - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, groups * mg, full_h, full_w))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for g in range(groups):
        xg, wg = x64[:, g * cg:(g + 1) * cg], w64[g * cg:(g + 1) * cg]
        for i in range(h):
            for j in range(width):
                for p in range(kh):
                    for q in range(kw):
                        full[:, g * mg:(g + 1) * mg, i * sh + p * dh, j * sw + q * dw] += (
                            xg[:, :, i, j] @ wg[:, :, p, q])
    y = full[:, :, top:full_h - bottom, left:full_w - right]
    return y if b is None else y + b.astype(np.float64)[None, :, None, None]


def pad_reference(x: np.ndarray, pads: tuple[int, ...], mode: str, value: float) -> np.ndarray:
    """Crop by the negative pads, then np.pad by the others."""
    rank = x.ndim
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[i + rank]))
                 for i in range(rank))
    widths = [(max(0, pads[i]), max(0, pads[i + rank])) for i in range(rank)]
    extra = {"constant_values": value} if mode == "constant" else {}
    return np.pad(x[crop], widths, mode=mode, **extra)


def norm_reference(op: Operator, x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """Layer and instance norm in float64 with NumPy's mean and variance."""
    rank = x.ndim
    axes = op.normalized(rank)  # type: ignore[attr-defined]
    spanned = op.weight_axes(rank)  # type: ignore[attr-defined]
    x = x.astype(np.float64)
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(
        x.var(axis=axes, keepdims=True) + op.attrs["epsilon"])
    view = tuple(x.shape[a] if a in spanned else 1 for a in range(rank))
    y = y * weights["scale"].reshape(view)
    return y + weights["bias"].reshape(view) if "bias" in weights else y


def check_case(name: str, case: Case, seed: int) -> None:
    """The shipped checks, with the ONNX oracles (some looser in float64, see above)."""
    op = operators.make(name, **case.attrs)
    tolerance = FLOAT64_TOLERANCE.get(name) if case.dtype == "float64" else None
    check_operator(op, case.shapes, case.dtype, seed, nonzero=case.nonzero,
                   references=references(name, op, case), tolerance=tolerance)


OPERATORS = operators.names()


def test_every_operator_has_cases() -> None:
    missing = sorted(set(OPERATORS) - set(CASES))
    assert not missing, f"operators without test cases: {', '.join(missing)}"


@pytest.mark.parametrize("name", OPERATORS)
@settings(max_examples=examples(30))
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_operator(name: str, data: st.DataObject, seed: int) -> None:
    if name not in CASES:
        pytest.fail(f"no cases for operator {name!r}")
    check_case(name, data.draw(CASES[name]()), seed)


# -- pooling against more oracles ---------------------------------------------------------------
def pool_reference(x: np.ndarray, op: str, attrs: dict[str, Any]) -> np.ndarray:
    """Brute force in float64, one output at a time: the window's taps listed, the ones inside
    the input kept; avgpool's divisor counts the kept taps, or with count_include_pad those
    inside the padded input."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (top, left, bottom, right) = (attrs["kernel"], attrs["stride"],
                                                      attrs["padding"])
    dh, dw = attrs.get("dilation", (1, 1))

    def taps(o: int, s: int, k: int, d: int, before: int) -> list[int]:
        return [o * s + t * d - before for t in range(k)]

    def out_size(size: int, k: int, s: int, d: int, before: int, after: int) -> int:
        """Windows in padded coordinates: each must fit; in ceil_mode, one more may stick out
        while the last one has not reached the end, if it starts before the trailing pad."""
        padded, o = size + before + after, 1
        while True:
            start, end = o * s, o * s + d * (k - 1)
            if attrs["ceil_mode"]:
                more = (o - 1) * s + d * (k - 1) < padded - 1 and start < size + before
            else:
                more = end <= padded - 1
            if not more:
                return o
            o += 1

    ho, wo = out_size(h, kh, sh, dh, top, bottom), out_size(w, kw, sw, dw, left, right)
    y = np.empty((n, c, ho, wo))
    for i in range(ho):
        rows = taps(i, sh, kh, dh, top)
        real_rows = [r for r in rows if 0 <= r < h]
        for j in range(wo):
            cols = taps(j, sw, kw, dw, left)
            real_cols = [q for q in cols if 0 <= q < w]
            window = x[:, :, real_rows][:, :, :, real_cols].astype(np.float64)
            if op == "maxpool":
                y[:, :, i, j] = window.max(axis=(2, 3))
                continue
            if attrs["count_include_pad"]:
                divisor = (sum(-top <= r < h + bottom for r in rows)
                           * sum(-left <= q < w + right for q in cols))
            else:
                divisor = len(real_rows) * len(real_cols)
            y[:, :, i, j] = window.sum(axis=(2, 3)) / divisor
    return y


@pytest.mark.parametrize("name", ["maxpool", "avgpool"])
@settings(max_examples=50)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_pooling_matches_onnxruntime(name: str, data: st.DataObject, seed: int) -> None:
    """onnxruntime gets ceil_mode and asymmetric padding right, but rejects pads >= kernel."""
    case = data.draw(pool_cases(name))
    op = operators.make(name, **case.attrs)
    assume(onnxruntime_runs(name, op.attrs, case.dtype))
    xs, _ = _data(op, case, seed)
    expected = run_onnxruntime(op, case, xs, {})[0]
    assert_close(op.run(xs, {})[0], expected, case.dtype, f"{op} vs onnxruntime")


@pytest.mark.parametrize("name", ["maxpool", "avgpool"])
@settings(max_examples=50)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_pooling_matches_torch(name: str, data: st.DataObject, seed: int) -> None:
    """PyTorch: symmetric padding of at most half the kernel, ceil_mode included."""
    torch = pytest.importorskip("torch")
    case = data.draw(pool_cases(name))
    op = operators.make(name, **case.attrs)
    a = op.attrs
    top, left, bottom, right = a["padding"]
    dh, dw = a.get("dilation", (1, 1))
    assume((top, left) == (bottom, right))
    assume(2 * top <= dh * (a["kernel"][0] - 1) + 1 and 2 * left <= dw * (a["kernel"][1] - 1) + 1)
    xs, _ = _data(op, case, seed)
    x = torch.from_numpy(xs[0])
    if name == "maxpool":
        expected = torch.nn.functional.max_pool2d(x, a["kernel"], a["stride"], (top, left),
                                                  a["dilation"], ceil_mode=a["ceil_mode"])
    else:
        expected = torch.nn.functional.avg_pool2d(x, a["kernel"], a["stride"], (top, left),
                                                  ceil_mode=a["ceil_mode"],
                                                  count_include_pad=a["count_include_pad"])
    assert_close(op.run(xs, {})[0], expected.numpy(), case.dtype, f"{op} vs torch")


def test_pool_window_in_padding_only_is_an_error() -> None:
    with pytest.raises(ValueError, match="maxpool: the window of output row 0 covers only"):
        operators.make("maxpool", kernel=2, padding=(2, 0, 0, 0)).output_shapes([(1, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"avgpool: .* does not fit"):
        operators.make("avgpool", kernel=5).output_shapes([(1, 1, 4, 4)])


# -- memory facts the planner relies on -----------------------------------------------------------
def test_gemm_never_copies_a_transposed_operand() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)  # trans_a: A is x.T, (64, 256)
    b = rng.standard_normal((512, 256)).astype(np.float32)  # trans_b: B is b.T, 512 KiB
    op = operators.make("gemm", out_features=512, trans_a=True, trans_b=True)
    weights = {"b": b, "c": rng.standard_normal(512).astype(np.float32)}
    np.testing.assert_allclose(op.run([x], weights)[0], x.T @ b.T + weights["c"], rtol=1e-4,
                               atol=1e-4)
    assert measured_workspace(op, [x], weights) < 32 * 1024


@pytest.mark.parametrize(("name", "attrs", "shape"), [
    ("layernorm", {"axes": [-1]}, (1, 56, 56, 96)),    # in NHWC: over a strided axis, cast
    ("layernorm", {"axes": [1]}, (1, 96, 56, 56)),     # ConvNeXt's channel norm
    ("instancenorm", {}, (2, 64, 56, 56)),
])
def test_float64_statistics_stay_within_their_allowance_on_large_inputs(
        name: str, attrs: dict[str, Any], shape: tuple[int, ...]) -> None:
    """NumPy's casting buffers (float32 data met by float64 statistics) fill only on inputs
    larger than the drawn cases; the operator's allowance counts them in float64 items."""
    op = operators.make(name, **attrs)
    assert op.overhead_bytes([shape], 4) > run_overhead_bytes(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # the float64 retyping check's NaNs
        check_operator(op, [shape])


def test_broadcasting_ops_stay_within_small_ufunc_buffers() -> None:
    """Broadcast operands make NumPy buffer (32 KiB per operand by default); runs use less."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64, 32, 32)).astype(np.float32)
    for name, attrs, weights in [
            ("batchnorm", {}, {"scale": np.ones(64, np.float32),
                               "shift": np.zeros(64, np.float32)}),
            ("mul", {"constant_shape": (64, 1, 1)}, {"constant": np.ones((64, 1, 1), np.float32)}),
            ("avgpool", {"kernel": 3, "stride": 2, "padding": 1}, {})]:
        op = operators.make(name, **attrs)
        measured = measured_workspace(op, [x], weights)
        assert measured <= op.workspace_bytes([x.shape], 4), name
        # beyond the buffers it declares, only the small allowance (not 32 KiB per operand)
        untracked = measured - 4 * sum(math.prod(shape) for shape in
                                       op.workspace_shapes([x.shape]).values())
        assert untracked <= run_overhead_bytes(4) < 64 * 1024, name


def test_can_overwrite() -> None:
    assert operators.make("relu").can_overwrite([(1, 2, 3, 3)])
    assert operators.make("add").can_overwrite([(1, 4, 3, 3), (4, 1, 1)])
    assert not operators.make("add").can_overwrite([(4, 1, 1), (1, 4, 3, 3)])
    assert not operators.make("maxpool", kernel=1).can_overwrite([(1, 2, 3, 3)])
    assert not operators.make("identity").can_overwrite([(1, 2, 3, 3)])


def test_layouts_depend_on_the_constant() -> None:
    assert "NHWC" in operators.make("add").layouts
    assert "NHWC" in operators.make("mul", constant_shape=(1, 1, 1, 1)).layouts
    assert operators.make("sub", constant_shape=(3, 1, 1)).layouts == ("NCHW",)


def test_export_names_initializers_with_the_prefix() -> None:
    op = operators.make("conv", out_channels=4, kernel=3, padding=(0, 1, 2, 1))
    weights = {"weight": np.zeros((4, 2, 3, 3), np.float32), "bias": np.zeros(4, np.float32)}
    nodes, inits = layer_to_onnx("conv", op.attrs, ["x"], ["y"], weights, "block1/conv")
    assert [n.op_type for n in nodes] == ["Conv"]
    assert {t.name for t in inits} == {"block1/conv/weight", "block1/conv/bias"}
    pads = next(a for a in nodes[0].attribute if a.name == "pads")
    assert list(pads.ints) == [0, 1, 2, 1]
    with pytest.raises(ValueError, match="nope"):
        layer_to_onnx("nope", {}, ["x"], ["y"], {}, "p")


# -- errors -------------------------------------------------------------------------------------
def _make(op: str, **attrs: Any) -> Callable[[], Any]:
    return lambda: operators.make(op, **attrs)


def _shapes(op: str, shapes: list[Shape], **attrs: Any) -> Callable[[], Any]:
    return lambda: operators.make(op, **attrs).output_shapes(shapes)


@pytest.mark.parametrize(("call", "message"), [
    (_make("relu", alpha=1), "relu: unknown attribute"),
    (_make("maxpool", kernal=3), "maxpool: unknown attribute"),
    (_make("maxpool"), "maxpool: kernel is required"),
    (_make("avgpool", kernel=2, dilation=2), "avgpool: unknown attribute"),
    (_make("lrn"), "lrn: size is required"),
    (_make("concat"), "concat: axis is required"),
    (_make("reshape"), "reshape: shape is required"),
    (_make("split", axis=1), "split: sizes is required"),
    (_make("slice", starts=[0]), "slice: ends is required"),
    (_make("gemm"), "gemm: out_features is required"),
    (_make("maxpool", kernel=0), "maxpool: kernel must be positive"),
    (_make("maxpool", kernel=2, padding=-1), "maxpool: padding must not be negative"),
    (_make("avgpool", kernel=2, padding=(1, 2, 3)), "avgpool: padding must be"),
    (_make("avgpool", kernel=2, ceil_mode="yes"), "avgpool: ceil_mode must be a bool"),
    (_make("clip", min=2.0, max=1.0), "clip: min 2.0 is greater than max"),
    (_make("clip", min="low"), "clip: min must be a number"),
    (_make("hardsigmoid", alpha=float("nan")), "hardsigmoid: alpha must be finite"),
    (_make("lrn", size=0), "lrn: size must be >= 1"),
    (_make("softmax", axis=1.5), "softmax: axis must be an int"),
    (_make("reshape", shape=[-1, -1]), "reshape: shape .* more than one -1"),
    (_make("reshape", shape=[2, -3]), "reshape: shape must be >= -1"),
    (_make("transpose", perm=[0, 0]), "transpose: perm .* not a permutation"),
    (_make("split", sizes=[2, 0]), "split: sizes must be >= 1"),
    (_make("slice", starts=[0], ends=[1], steps=[0]), "slice: steps .* contain 0"),
    (_make("slice", starts=[0, 1], ends=[1]), "slice: ends has 1 values"),
    (_make("gemm", out_features=0), "gemm: out_features must be >= 1"),
    (_make("gemm", out_features=2, trans_b=2), "gemm: trans_b must be a bool"),
    (_make("add", constant_shape=[2, 0]), "add: constant_shape must be >= 1"),
    (lambda: operators.make("add").check_arity(1), "add takes 2 or more"),
    (lambda: operators.make("sub").check_arity(3), "sub takes 2 input"),
    (lambda: operators.make("div", constant_shape=[1]).check_arity(2), "div takes 1 input"),
    (lambda: operators.make("relu").check_arity(2), "relu takes 1 input"),
    (lambda: operators.make("matmul").check_arity(1), "matmul takes 2 input"),
    (_shapes("add", [(2, 3), (4,)]), "add: operand shapes .* do not broadcast"),
    (_shapes("mul", [(2, 3)], constant_shape=(2,)), "mul: operand shapes .* do not broadcast"),
    (_shapes("concat", [(1, 2, 3), (1, 3, 4)], axis=1), "concat: input shapes .* differ"),
    (_shapes("concat", [(1, 2, 3), (1, 2)], axis=0), "concat: input shapes .* differ"),
    (_shapes("concat", [(1, 2)], axis=2), "concat: axis 2 is out of range"),
    (_shapes("reshape", [(2, 3)], shape=[4, 2]), "reshape: shape .* holds 8 elements"),
    (_shapes("reshape", [(2, 3)], shape=[4, -1]), "reshape: cannot infer"),
    (_shapes("reshape", [(6,)], shape=[0, 0]), "reshape: .* copies dimension 1"),
    (_shapes("split", [(5, 3)], sizes=[2, 2]), "split: sizes .* add up to 4"),
    (_shapes("transpose", [(2, 3)], perm=[2, 0, 1]), "transpose: perm .* rank-2"),
    (_shapes("slice", [(4, 4)], starts=[3], ends=[1]), "slice: .* select nothing"),
    (_shapes("slice", [(4, 4)], starts=[0, 0], ends=[1, 1], axes=[1, -1]),
     "slice: axis 1 appears twice"),
    (_shapes("gemm", [(2, 3, 4)], out_features=2), "gemm needs a 2-D input"),
    (_shapes("matmul", [(2, 3), (4, 5)]), "matmul: shapes .* do not multiply"),
    (_shapes("matmul", [(2, 2, 3), (3, 3, 5)]), "matmul: the batch dimensions"),
    (_shapes("maxpool", [(1, 2, 3)], kernel=2), "maxpool needs a 4-D"),
    (_shapes("globalavgpool", [(1, 2)]), "globalavgpool needs a 4-D"),
    (_shapes("lrn", [(1, 2, 3)], size=3), "lrn needs a 4-D"),
    (_shapes("batchnorm", [(3,)]), "batchnorm needs an input of rank >= 2"),
    (_shapes("softmax", [(2, 3)], axis=-3), "softmax: axis -3 is out of range"),
    (_shapes("flatten", [(2, 3)], axis=3), "flatten: axis 3 is out of range"),
])
def test_errors_name_the_operator(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_gemm_rejects_weights_of_the_wrong_shape() -> None:
    op = operators.make("gemm", out_features=3)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"gemm: weight 'b' has shape \(5, 3\), expected \(4, 3\)"):
        op.run([x], {"b": np.zeros((5, 3), np.float32), "c": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="gemm: weight 'c' is missing"):
        op.run([x], {"b": np.zeros((4, 3), np.float32)})


def test_unknown_operator() -> None:
    with pytest.raises(ValueError, match="unknown operator 'nope'"):
        operators.make("nope")


# -- ONNX export -> import ----------------------------------------------------------------------
def round_trip(name: str, case: Case, seed: int) -> None:
    """The layer exported to ONNX and imported back computes what the operator computes."""
    op = operators.make(name, **case.attrs)
    xs, weights = _data(op, case, seed)
    model = single_layer_model(op.op, op.attrs, case.shapes, weights, dtype=case.dtype)
    network = load_onnx(model.SerializeToString())
    assert list(network.inputs.values()) == [tuple(s) for s in case.shapes], f"{op}: inputs"
    report = run_network(network, {f"x{i}": x for i, x in enumerate(xs)})
    ys = op.run([x.copy() for x in xs], weights)
    assert len(report.outputs) == len(ys), f"{op}: {len(report.outputs)} outputs after import"
    for y, imported in zip(ys, report.outputs.values(), strict=True):
        assert_close(imported, y, case.dtype, f"{op} on {case.shapes} after export and import")


@pytest.mark.parametrize("name", OPERATORS)
@settings(max_examples=examples(8))
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_operator_round_trips_onnx(name: str, data: st.DataObject, seed: int) -> None:
    case = data.draw(CASES[name]())
    assume(case.dtype == "float32")          # networks are float32
    round_trip(name, case, seed)


# -- the checks catch broken operators (not registered: subclasses of real ones) -----------------
class WrongShape(Relu):
    """Says one more leading dimension than it returns."""

    def output_shapes(self, shapes):
        return [(1, *super().output_shapes(shapes)[0])]


class WrongDtype(Relu):
    def run(self, xs, weights, layout="NCHW", inplace=False):
        return [y.astype(np.float64) for y in super().run(xs, weights, layout, inplace)]


class Strided(Transpose):
    """Returns the transposed view instead of a contiguous copy."""

    def run(self, xs, weights, layout="NCHW", inplace=False):
        return [xs[0].transpose(self._perm(xs[0].ndim))]


class Copies(Identity):
    """Declares itself a view but copies."""

    def run(self, xs, weights, layout="NCHW", inplace=False):
        return [xs[0].copy()]


class Unflagged(Reshape):
    """Returns a view of its input without declaring it (the executor would reuse the input)."""

    view = False


class ClobbersInput(Relu):
    """Always runs in place, even when asked not to."""

    def run(self, xs, weights, layout="NCHW", inplace=False):
        return super().run(xs, weights, layout, True)


class NotInPlace(Relu):
    """Says it can overwrite its input, but always allocates."""

    def run(self, xs, weights, layout="NCHW", inplace=False):
        return super().run(xs, weights, layout, False)


class NhwcIgnored(BatchNorm):
    """Treats NHWC storage as NCHW (scales the wrong axis)."""

    def run(self, xs, weights, layout="NCHW", inplace=False):
        return super().run(xs, weights, "NCHW", inplace)


class Understated(Softmax):
    def workspace_bytes(self, shapes, itemsize):
        return 0


class Overstated(Softmax):
    def workspace_bytes(self, shapes, itemsize):
        return super().workspace_bytes(shapes, itemsize) + 1024 * 1024


class IgnoresOut(Relu):
    """Writes into new arrays whatever it is given."""

    def run(self, xs, weights, layout="NCHW", inplace=False, out=None, workspace=None):
        return super().run(xs, weights, layout, inplace, workspace=workspace)


class IgnoresWorkspace(Softmax):
    """Allocates its temporaries whatever it is given."""

    def run(self, xs, weights, layout="NCHW", inplace=False, out=None, workspace=None):
        return super().run(xs, weights, layout, inplace, out)


class TakesAnyOut(Relu):
    """Writes into any out it is given, unchecked (NumPy casts into a float64 one)."""

    def run(self, xs, weights, layout="NCHW", inplace=False, out=None, workspace=None):
        if out is None or inplace:
            return super().run(xs, weights, layout, inplace)
        np.maximum(xs[0], 0, out=out[0])
        return list(out)


class OffByOne(Relu):
    def run(self, xs, weights, layout="NCHW", inplace=False):
        ys = super().run(xs, weights, layout, inplace)
        ys[0].flat[-1] += 1e-2
        return ys


IMAGE = [(2, 3, 3, 3)]  # C == H == W: a channel axis mistaken for another still broadcasts


def _relu_reference(xs: list[np.ndarray], _: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.maximum(xs[0], 0)]


@pytest.mark.parametrize(("broken", "shapes", "references", "message"), [
    (WrongShape(), IMAGE, None, "output_shapes says"),
    (WrongDtype(), IMAGE, None, "dtype float64, expected float32"),
    (Strided(perm=[0, 2, 3, 1]), [(2, 3, 4, 5)], None, "not C-contiguous"),
    (Copies(), IMAGE, None, "does not share the input's memory"),
    (Unflagged(shape=[2, -1]), IMAGE, None, "shares memory with an input"),
    (ClobbersInput(), IMAGE, None, "changed its input"),
    (NotInPlace(), IMAGE, None, "did not write its output over the first input"),
    (NhwcIgnored(), IMAGE, None, "in NHWC is not the NCHW one transposed"),
    (Understated(axis=0), [(2, 16, 32, 32)], None, "over the declared workspace"),
    (Overstated(axis=0), [(2, 16, 32, 32)], None, "far above"),
    (OffByOne(), IMAGE, {"max(x, 0)": _relu_reference}, "differs from max"),
    (IgnoresOut(), IMAGE, None, "returned other arrays than the given ones"),
    (IgnoresWorkspace(axis=0), [(2, 16, 32, 32)], None, "into given arrays allocated"),
    (TakesAnyOut(), IMAGE, None, "accepted an out of the wrong dtype"),
])
def test_each_check_catches_a_broken_operator(broken: Operator, shapes: list[Shape],
                                              references: dict[str, Reference] | None,
                                              message: str) -> None:
    with pytest.raises(ConformanceError, match=message) as raised:
        check_operator(broken, shapes, references=references)
    assert type(broken).__name__ in str(raised.value) and str(shapes) in str(raised.value)
    if references is None:  # and through the list form, from the class
        with pytest.raises(ConformanceError, match=type(broken).__name__):
            check_operator_cases(type(broken), [Case(broken.attrs, shapes)])


def test_the_real_operators_pass_where_the_broken_ones_fail() -> None:
    """The cases above are valid: the operators the broken ones derive from pass them."""
    assert check_operator_cases("relu", [Case({}, IMAGE), Case({}, [(3, 5)], "float64")]) == 2
    check_operator(operators.make("relu"), IMAGE, references={"max(x, 0)": _relu_reference})
    for name, attrs, shapes in [("transpose", {"perm": [0, 2, 3, 1]}, [(2, 3, 4, 5)]),
                                ("identity", {}, IMAGE), ("reshape", {"shape": [2, -1]}, IMAGE),
                                ("batchnorm", {}, IMAGE), ("softmax", {"axis": 0},
                                                          [(2, 16, 32, 32)])]:
        assert check_operator_cases(name, [Case(attrs, shapes)]) == 1
