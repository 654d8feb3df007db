"""Every registered algorithm against the independent float64 reference, through the checks
the package ships (`convplan.kernels.checks`): on the fixed corpus, on specs hypothesis draws,
and on deliberately broken algorithms, which every check must catch. Found via the registry,
so a new algorithm is tested without touching this file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from convplan.kernels import ConvSpec, conv2d, registry
from convplan.kernels.algorithms.patch import Im2col, Im2row
from convplan.kernels.algorithms.winograd import Winograd2x2
from convplan.kernels.base import Prepared
from convplan.kernels.checks import (
    ConformanceError,
    check_algorithm,
    check_matches_reference,
    check_out_argument,
    check_preparation,
    check_supports_is_honest,
    check_workspace,
    check_workspace_argument,
    fit,
    reference_conv2d,
)
from tests.support.strategies import conv_specs

ALGORITHMS = registry.names()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_passes_the_shipped_checks(name: str) -> None:
    assert check_algorithm(registry.get(name)) >= 1


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(), seed=st.integers(0, 2**16), bias=st.booleans())
def test_matches_reference(name: str, spec: ConvSpec, seed: int, bias: bool) -> None:
    fitted = fit(spec, registry.get(name))
    assume(fitted is not None)
    check_matches_reference(registry.get(name), fitted, seed, bias)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(max_side=10), seed=st.integers(0, 2**16))
def test_float64(name: str, spec: ConvSpec, seed: int) -> None:
    fitted = fit(spec, registry.get(name))
    assume(fitted is not None)
    check_matches_reference(registry.get(name), dataclasses.replace(fitted, dtype="float64"),
                            seed, bias=True)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(max_side=12), seed=st.integers(0, 2**16))
def test_supports_is_honest(name: str, spec: ConvSpec, seed: int) -> None:
    """Directly and through `conv2d`: a spec the algorithm does not run is refused by name."""
    algorithm = registry.get(name)
    check_supports_is_honest(algorithm, spec, seed)
    if not algorithm.supports(spec):
        x = np.zeros(spec.input_shape(), dtype=spec.dtype)
        w = np.zeros(spec.weight_shape, dtype=spec.dtype)
        with pytest.raises(ValueError, match="does not support"):
            conv2d(x, w, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                   groups=spec.groups, algorithm=name)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_out_argument_is_filled_and_returned(name: str) -> None:
    spec = fit(ConvSpec(n=2, c=4, h=9, w=8, m=4, kh=3, kw=3, padding=1), registry.get(name))
    assert spec is not None
    check_out_argument(registry.get(name), spec)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(max_side=10))
def test_runs_into_given_buffers(name: str, spec: ConvSpec) -> None:
    """Into a given output and workspace: the same bits, the same arrays, nothing allocated
    beyond the allowance; wrong workspaces are refused."""
    fitted = fit(spec, registry.get(name))
    assume(fitted is not None)
    check_workspace_argument(registry.get(name), fitted)


def test_a_given_workspace_is_checked_like_out() -> None:
    spec = ConvSpec(n=1, c=8, h=8, w=7, m=6, kh=3, kw=3, padding=1)
    im2col = registry.get("im2col")
    x = np.ones(spec.input_shape(), np.float32)
    prepared = im2col.prepare(np.ones(spec.weight_shape, np.float32), None, spec)
    (name, shape), = im2col.workspace_shapes(spec).items()
    out = np.empty(spec.output_shape(), np.float32)
    with pytest.raises(ValueError, match=r"has buffers \[\], expected \['patches'\]"):
        im2col.run(x, prepared, spec, out=out, workspace={})
    with pytest.raises(ValueError, match="workspace 'patches' must be a writeable C-contiguous"):
        im2col.run(x, prepared, spec, workspace={name: np.empty(shape, np.float32).T})
    read_only = np.empty(shape, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="workspace 'patches' must be a writeable"):
        im2col.run(x, prepared, spec, workspace={name: read_only})
    arena = np.empty(out.size + int(np.prod(shape)), np.float32)
    overlapping = arena[:int(np.prod(shape))].reshape(shape)
    with pytest.raises(ValueError, match="workspace 'patches' overlaps out"):
        im2col.run(x, prepared, spec, out=arena[-out.size - 1:-1].reshape(out.shape),
                   workspace={name: overlapping})
    with pytest.raises(ValueError, match="out overlaps the input"):
        im2col.run(x, prepared, spec, out=x.reshape(-1)[:out.size].reshape(out.shape))
    disjoint = im2col.run(x, prepared, spec, out=arena[-out.size:].reshape(out.shape),
                          workspace={name: overlapping})
    assert np.shares_memory(disjoint, arena)


@pytest.mark.parametrize("name", ALGORITHMS)
@given(spec=conv_specs(max_side=10))
def test_preparation_allocates_what_it_declares(name: str, spec: ConvSpec) -> None:
    fitted = fit(spec, registry.get(name))
    assume(fitted is not None)
    check_preparation(registry.get(name), fitted)


def test_a_reshaping_algorithm_keeps_a_read_only_view_of_the_callers_weights() -> None:
    spec = ConvSpec(n=1, c=8, h=6, w=6, m=4, kh=3, kw=3, padding=1)
    w = np.ones(spec.weight_shape, np.float32)
    b = np.ones(spec.m, np.float32)
    prepared = registry.get("im2col").prepare(w, b, spec)
    assert np.shares_memory(prepared.weights, w) and np.shares_memory(prepared.bias, b)
    assert not prepared.weights.flags.writeable and not prepared.bias.flags.writeable
    assert w.flags.writeable and b.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        prepared.weights[0, 0, 0] = 2.0
    copied = registry.get("im2col").prepare(np.asfortranarray(w), b.astype(">f4"), spec)
    assert not np.shares_memory(copied.weights, w) and not np.shares_memory(copied.bias, b)
    assert np.array_equal(copied.weights, prepared.weights)


def test_a_view_that_is_a_copy_is_refused() -> None:
    """The claim (`prepare_copies`) and the behaviour are one fact."""
    spec = ConvSpec(n=1, c=8, h=6, w=6, m=4, kh=3, kw=3, padding=1)
    with pytest.raises(RuntimeError, match="'false-view' says its prepared weights are a view"):
        FalseView().prepare(np.ones(spec.weight_shape, np.float32), None, spec)


# -- the checks catch broken algorithms (not registered: plain instances) -------------------------
class OffByOne(Im2col):
    name = "off-by-one"

    def run(self, x, prepared, spec, out=None):
        y = super().run(x, prepared, spec, out)
        y.flat[-1] += 1e-2
        return y


class Boastful(Winograd2x2):
    """Claims every spec, computes only 3x3 stride-1 ones right."""
    name = "boastful"

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        return None


class Silent(Im2col):
    """Refuses without saying who refused."""
    name = "silent"

    def unsupported_reason(self, spec: ConvSpec) -> str | None:
        return None if spec.groups == 1 else "grouped"

    def require(self, spec: ConvSpec) -> None:
        if spec.groups != 1:
            raise ValueError("no")


class IgnoresOut(Im2col):
    name = "ignores-out"

    def run(self, x, prepared, spec, out=None):
        return super().run(x, prepared, spec)


class IgnoresWorkspace(Im2col):
    """Allocates its workspace whatever it is given."""
    name = "ignores-workspace"

    def run(self, x, prepared, spec, out=None, workspace=None):
        return super().run(x, prepared, spec, out)


class Understated(Im2col):
    name = "understated"

    def workspace_bytes(self, spec: ConvSpec) -> int:
        return 0


class WritesWeights(Im2col):
    """Scales its prepared weights in place on every run."""
    name = "writes-weights"

    def _run_group(self, x, w, out, spec, ws) -> None:
        w *= 1.0
        super()._run_group(x, w, out, spec, ws)


class FalseView(Im2row):
    """Claims its transposed weights are a view."""
    name = "false-view"
    weight_order = (0, 1, 2, 3, 4)

    def _prepare_weights(self, w, spec):
        return w.transpose(0, 3, 4, 2, 1).reshape(spec.groups, -1, spec.mg)


class HiddenView(Im2col):
    """Says it copies, keeps a view."""
    name = "hidden-view"

    def prepare_copies(self, spec: ConvSpec) -> bool:
        return True

    def prepare(self, w, b, spec):
        view = np.asarray(w).reshape(spec.groups, spec.mg, -1).view()
        view.flags.writeable = False
        return Prepared(self.name, spec.weight_shape, spec.groups, view, None)


class WriteablePrepared(Im2row):
    name = "writeable-prepared"

    def prepare(self, w, b, spec):
        prepared = super().prepare(w, b, spec)
        return dataclasses.replace(prepared, weights=prepared.weights.copy())


class HiddenTransient(Winograd2x2):
    """Does not declare its float64 transform."""
    name = "hidden-transient"

    def prepare_extra_bytes(self, spec: ConvSpec) -> int:
        return 0


class OverstatedTransient(Im2col):
    name = "overstated-transient"

    def prepare_extra_bytes(self, spec: ConvSpec) -> int:
        return 2**20


SPEC = ConvSpec(n=1, c=8, h=12, w=11, m=6, kh=3, kw=3, padding=1)
WIDE = ConvSpec(n=1, c=32, h=8, w=8, m=32, kh=3, kw=3, padding=1)
GROUPED = ConvSpec(n=1, c=8, h=12, w=11, m=6, kh=3, kw=3, padding=1, groups=2)


@pytest.mark.parametrize(("broken", "check", "spec", "message"), [
    (OffByOne(), check_matches_reference, SPEC, "relative error"),
    (Boastful(), check_matches_reference, ConvSpec(n=1, c=4, h=9, w=9, m=4, kh=5, kw=5),
     "relative error|failed"),
    (Silent(), check_supports_is_honest, GROUPED, "without naming itself"),
    (IgnoresOut(), check_out_argument, SPEC, "another array"),
    (Understated(), check_workspace, SPEC, "over the declared workspace"),
    (IgnoresWorkspace(), check_workspace_argument, SPEC, "into given buffers allocated"),
    (WritesWeights(), check_matches_reference, SPEC, "read-only"),
    (FalseView(), check_preparation, SPEC, "says its prepared weights are a view"),
    (HiddenView(), check_preparation, SPEC, "share memory with the caller's"),
    (WriteablePrepared(), check_preparation, SPEC, "are writeable"),
    (HiddenTransient(), check_preparation, WIDE, "over the"),
    (OverstatedTransient(), check_preparation, SPEC, "far above"),
])
def test_each_check_catches_a_broken_algorithm(broken, check, spec, message) -> None:
    with pytest.raises(ConformanceError, match=message) as raised:
        check(broken, spec)
    assert broken.name in str(raised.value)
    with pytest.raises(ConformanceError, match=broken.name):
        check_algorithm(broken)


def test_auto_matches_reference_on_common_layers() -> None:
    rng = np.random.default_rng(3)
    for kernel, stride, padding, groups in [(3, 1, 1, 1), (1, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 2),
                                            (3, 1, 1, 8), (7, 2, 3, 1)]:
        x = rng.standard_normal((2, 8, 15, 13)).astype(np.float32)
        w = rng.standard_normal((8, 8 // groups, kernel, kernel)).astype(np.float32)
        y = conv2d(x, w, stride=stride, padding=padding, groups=groups)
        expected = reference_conv2d(x, w, stride=(stride, stride), padding=(padding,) * 4,
                                    groups=groups)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_padding_same_and_valid() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 10, 9)).astype(np.float32)
    w = rng.standard_normal((5, 3, 4, 3)).astype(np.float32)
    same = conv2d(x, w, padding="same", dilation=2)
    assert same.shape == (1, 5, 10, 9)
    expected = reference_conv2d(x, w, padding=(3, 2, 3, 2), dilation=(2, 2))
    np.testing.assert_allclose(same, expected, rtol=1e-4, atol=1e-4)
    assert conv2d(x, w, padding="valid").shape == (1, 5, 7, 7)
