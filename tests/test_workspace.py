"""workspace_bytes(spec) is an exact prediction: tracemalloc's measured peak of extra allocation
during run() is never above it and not far below it (within 25% + 64 KiB)."""

from __future__ import annotations

import pytest

from convplan.kernels import ConvSpec, registry
from convplan.kernels.checks import (
    SPECS,
    check_workspace,
    fitted_specs,
    measured_workspace,
)
from convplan.selector.network import paper_layer


def _cases():
    for name in registry.names():
        for spec in fitted_specs(registry.get(name), SPECS):
            yield pytest.param(name, spec, id=f"{name}-{spec.key()}")


@pytest.mark.parametrize(("name", "spec"), list(_cases()))
def test_prediction_is_a_tight_upper_bound(name: str, spec: ConvSpec) -> None:
    """Workspace within [measured, 1.25 x measured + 64 KiB]; prepared bytes exact."""
    check_workspace(registry.get(name), spec)


def test_the_papers_memory_claims_on_vgg16_conv3_1() -> None:
    spec = paper_layer("vgg16:conv3_1")
    mhw = spec.m * spec.ho * spec.wo * 4
    patches = spec.kh * spec.kw * spec.c * spec.ho * spec.wo * 4
    aa = measured_workspace(registry.get("kn2row-aa"), spec)
    assert aa < 0.01 * mhw, f"kn2row-aa used {aa} bytes, {aa / mhw:.2%} of M*H*W*4"
    as_ = measured_workspace(registry.get("kn2row-as"), spec)
    assert mhw <= as_ <= 1.05 * mhw
    im2col = measured_workspace(registry.get("im2col"), spec)
    assert patches <= im2col <= 1.05 * patches


def test_kn2row_aa_never_copies_a_strided_view() -> None:
    """With blocks of one row and no wrap (valid padding) nothing but interpreter objects is
    allocated: every GEMM reads and accumulates in place."""
    spec = ConvSpec(n=1, c=64, h=30, w=30, m=64, kh=3, kw=3)
    algorithm = registry.get("kn2row-aa")
    assert algorithm.workspace_shapes(spec) == {}
    assert measured_workspace(algorithm, spec) < 16 * 1024
