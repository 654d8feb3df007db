"""The analytic fallback: a rough cost when nothing was measured on this machine.

A plan built on estimates says so (``source="analytic"``); the numbers only need to rank the
candidates sensibly. The model is a roofline sum, deliberately simple:

    time = calls * CALL_OVERHEAD_S + flops / (GEMM_FLOPS_PER_THREAD * threads)
                                   + bytes moved / BANDWIDTH_BYTES_PER_S

A convolution's bytes moved are its input, output and prepared weights plus its workspace twice
(each buffer is written, then read by the GEMM): the per-algorithm difference comes from that
extra traffic, since every algorithm does the same multiply-adds. A layout transform reads and
writes its tensor once. Another operator moves its inputs, outputs, weights and temporaries;
only gemm and matmul count FLOPs. Workspace is the algorithm's or operator's exact prediction.
A convolution makes `ConvAlgorithm.calls` calls from Python (one per group and tap for most
algorithms: a depthwise layer of hundreds of groups is then rightly slow for them); every
other step one.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from convplan.kernels import ConvSpec, registry
from convplan.kernels.base import run_overhead_bytes
from convplan.kernels.operators import Operator

from .measurement import Measurement

#: Assumed single-precision GEMM rate of one thread (a modern AVX2/AVX-512 core: 60-250).
GEMM_FLOPS_PER_THREAD = 100e9
#: Assumed memory bandwidth seen by the copies and element-wise work (one socket, cached).
BANDWIDTH_BYTES_PER_S = 10e9
#: Python and NumPy overhead of one call, so that free operations are not free.
CALL_OVERHEAD_S = 5e-6


def roofline_time(flops: float, bytes_moved: float, threads: int, calls: int = 1) -> float:
    """Seconds for ``calls`` calls from Python, ``flops`` at the assumed GEMM rate and
    ``bytes_moved`` at the bandwidth."""
    return (calls * CALL_OVERHEAD_S + flops / (GEMM_FLOPS_PER_THREAD * max(threads, 1))
            + bytes_moved / BANDWIDTH_BYTES_PER_S)


def _estimate(time_s: float, workspace_bytes: int) -> Measurement:
    return Measurement(time_s, int(workspace_bytes), "analytic", 0, 0.0)


def conv_estimate(spec: ConvSpec, algorithm: str, threads: int = 1) -> Measurement:
    """Estimated time and predicted workspace of ``algorithm`` on ``spec``."""
    alg = registry.get(algorithm)
    workspace = alg.workspace_bytes(spec)
    tensors = (prod(spec.input_shape()) + prod(spec.output_shape())) * spec.itemsize
    moved = tensors + alg.prepared_bytes(spec) + 2 * workspace
    return _estimate(roofline_time(spec.flops, moved, threads, alg.calls(spec)), workspace)


def transform_estimate(shape: Sequence[int], itemsize: int = 4) -> Measurement:
    """A layout transform: one read and one write of the tensor; its copy is the workspace."""
    nbytes = prod(shape) * itemsize
    return _estimate(roofline_time(0, 2 * nbytes, 1), nbytes)


def op_flops(operator: Operator, shapes: Sequence[Sequence[int]]) -> int:
    """Multiply-adds x 2 of gemm and matmul (output elements x contraction length); 0 else."""
    if operator.op not in ("gemm", "matmul"):
        return 0
    first = tuple(shapes[0])
    contraction = first[0] if operator.op == "gemm" and operator.attrs.get("trans_a") \
        else first[-1]
    outputs = operator.output_shapes([tuple(s) for s in shapes])
    return 2 * sum(prod(s) for s in outputs) * contraction


def op_estimate(operator: Operator, shapes: Sequence[Sequence[int]], threads: int = 1,
                itemsize: int = 4) -> Measurement:
    """Another operator: memory-bound except gemm/matmul; a view moves nothing."""
    shapes = [tuple(s) for s in shapes]
    workspace = operator.workspace_bytes(shapes, itemsize)
    if operator.view:
        return _estimate(roofline_time(0, 0, threads), workspace)
    elements = (sum(prod(s) for s in shapes)
                + sum(prod(s) for s in operator.output_shapes(shapes))
                + sum(prod(s) for s in operator.weight_shapes(shapes).values()))
    temporaries = max(0, workspace - run_overhead_bytes(itemsize))
    moved = elements * itemsize + temporaries
    return _estimate(roofline_time(op_flops(operator, shapes), moved, threads), workspace)
