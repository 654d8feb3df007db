"""workspace_bytes(spec) is an exact prediction: tracemalloc's measured peak of extra allocation
during run() is never above it and not far below it (within 25% + 64 KiB)."""

from __future__ import annotations

import numpy as np
import pytest
from strategies import fit

from convplan.kernels import ConvSpec, registry
from convplan.kernels.measure import peak_allocation
from convplan.selector.layers import paper_layer

SLACK = 64 * 1024
SPECS = [
    ConvSpec(n=2, c=32, h=28, w=28, m=48, kh=3, kw=3, padding=1),
    ConvSpec(n=1, c=16, h=30, w=31, m=16, kh=5, kw=5, padding=(2, 1, 0, 3)),
    ConvSpec(n=1, c=24, h=40, w=40, m=24, kh=3, kw=3, padding=1, groups=24),
    ConvSpec(n=1, c=64, h=20, w=20, m=32, kh=1, kw=1),
    ConvSpec(n=1, c=64, h=21, w=20, m=32, kh=1, kw=1, stride=2),
    ConvSpec(n=2, c=12, h=33, w=35, m=18, kh=7, kw=7, stride=2, padding=3, groups=3),
    ConvSpec(n=1, c=8, h=40, w=38, m=16, kh=3, kw=3, dilation=2, padding=(2, 2, 1, 0)),
    ConvSpec(n=1, c=64, h=56, w=56, m=64, kh=3, kw=3, padding=1),
]


def measure_workspace(algorithm, spec: ConvSpec, seed: int = 0) -> int:
    """Peak bytes allocated by one run beyond input, prepared weights and a preallocated out."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape(algorithm.input_layout)).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    prepared = algorithm.prepare(w, rng.standard_normal(spec.m).astype(spec.dtype), spec)
    out = np.empty(spec.output_shape(algorithm.output_layout), dtype=spec.dtype)
    algorithm.run(x, prepared, spec, out=out)  # warm caches of lazily created objects
    return peak_allocation(lambda: algorithm.run(x, prepared, spec, out=out))


def _cases():
    for name in registry.names():
        seen = set()
        for spec in SPECS:
            fitted = fit(spec, registry.get(name))
            if fitted is not None and fitted not in seen:
                seen.add(fitted)
                yield pytest.param(name, fitted, id=f"{name}-{fitted.key()}")


@pytest.mark.parametrize(("name", "spec"), list(_cases()))
def test_prediction_is_a_tight_upper_bound(name: str, spec: ConvSpec) -> None:
    algorithm = registry.get(name)
    predicted = algorithm.workspace_bytes(spec)
    measured = measure_workspace(algorithm, spec)
    assert measured <= predicted, f"{name}: measured {measured} > predicted {predicted}"
    assert predicted <= 1.25 * measured + SLACK, f"{name}: predicted {predicted} >> {measured}"


def test_the_papers_memory_claims_on_vgg16_conv3_1() -> None:
    spec = paper_layer("vgg16:conv3_1")
    mhw = spec.m * spec.ho * spec.wo * 4
    patches = spec.kh * spec.kw * spec.c * spec.ho * spec.wo * 4
    aa = measure_workspace(registry.get("kn2row-aa"), spec)
    assert aa < 0.01 * mhw, f"kn2row-aa used {aa} bytes, {aa / mhw:.2%} of M*H*W*4"
    as_ = measure_workspace(registry.get("kn2row-as"), spec)
    assert mhw <= as_ <= 1.05 * mhw
    im2col = measure_workspace(registry.get("im2col"), spec)
    assert patches <= im2col <= 1.05 * patches


def test_kn2row_aa_never_copies_a_strided_view() -> None:
    """With blocks of one row and no wrap (valid padding) nothing but interpreter objects is
    allocated: every GEMM reads and accumulates in place."""
    spec = ConvSpec(n=1, c=64, h=30, w=30, m=64, kh=3, kw=3)
    algorithm = registry.get("kn2row-aa")
    assert algorithm.workspace_shapes(spec) == {}
    assert measure_workspace(algorithm, spec) < 16 * 1024


@pytest.mark.parametrize(("name", "spec"), list(_cases()))
def test_prepared_bytes_are_predicted(name: str, spec: ConvSpec) -> None:
    algorithm = registry.get(name)
    w = np.ones(spec.weight_shape, dtype=spec.dtype)
    prepared = algorithm.prepare(w, np.ones(spec.m, dtype=spec.dtype), spec)
    assert prepared.nbytes == algorithm.prepared_bytes(spec)
