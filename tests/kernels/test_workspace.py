"""workspace_bytes(spec) is an exact prediction: tracemalloc's measured peak of extra allocation
during run() is never above it and not far below it (within 25% + 64 KiB). So is what `prepare`
allocates."""

from __future__ import annotations

import numpy as np
import pytest

from convplan.kernels import ConvSpec, registry
from convplan.kernels.checks import (
    SPECS,
    check_preparation,
    check_workspace,
    fitted_specs,
    measured_preparation,
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


#: A ResNet-50 stage-4 3x3 layer: 9 MiB of weights.
RESNET_3X3 = ConvSpec(n=1, c=512, h=7, w=7, m=512, kh=3, kw=3, padding=1)


@pytest.mark.parametrize("name", ["winograd-2x2-3x3", "winograd-4x4-3x3"])
def test_winograd_prepares_in_blocks_within_a_mebibyte(name: str) -> None:
    """Transforming all weights at once in float64 took 3x the kept bytes (108 MiB for 36);
    in blocks of output channels the transient is `prepare_block_bytes` and einsum's buffers."""
    algorithm = registry.get(name)
    assert algorithm.prepare_block(RESNET_3X3) < RESNET_3X3.m
    check_preparation(algorithm, RESNET_3X3)
    kept = algorithm.prepared_bytes(RESNET_3X3, bias=False)
    assert algorithm.prepare_extra_bytes(RESNET_3X3) < 1.2 * 2**20
    assert measured_preparation(algorithm, RESNET_3X3) < kept + 1.2 * 2**20


@pytest.mark.parametrize("name", ["winograd-2x2-3x3", "winograd-4x4-3x3"])
@pytest.mark.parametrize("spec", [
    RESNET_3X3,
    ConvSpec(n=1, c=2048, h=4, w=4, m=3, kh=3, kw=3),              # blocks of one channel
    ConvSpec(n=1, c=24, h=6, w=6, m=24, kh=3, kw=3, groups=24),
    ConvSpec(n=1, c=16, h=6, w=6, m=10, kh=3, kw=3, groups=2),
], ids=["resnet", "wide", "depthwise", "grouped"])
def test_winograd_blocks_give_the_same_bits_as_one_transform(name: str, spec: ConvSpec) -> None:
    """float64 per element, rounded once: bit for bit what one whole einsum gave."""
    algorithm = registry.get(name)
    w = np.random.default_rng(5).standard_normal(spec.weight_shape).astype(np.float32)
    g = np.array(algorithm.matrices["G"], dtype=np.float64)
    grouped = w.reshape(spec.groups, spec.mg, spec.cg, 3, 3).astype(np.float64)
    whole = np.einsum("ar,gmcrs,bs->gabmc", g, grouped, g).reshape(
        spec.groups, algorithm.alpha**2, spec.mg, spec.cg).astype(np.float32)
    blocked = algorithm.prepare(w, None, spec).weights
    assert blocked.dtype == whole.dtype and blocked.shape == whole.shape
    assert np.array_equal(blocked.view(np.uint32), whole.view(np.uint32))


def test_a_reshaping_prepare_allocates_nothing() -> None:
    """im2col keeps the caller's weights: 9 MiB before, now only a few objects."""
    assert registry.get("im2col").prepare_extra_bytes(RESNET_3X3) == 0
    assert not registry.get("im2col").prepare_copies(RESNET_3X3)
    assert measured_preparation(registry.get("im2col"), RESNET_3X3) < 8 * 1024
