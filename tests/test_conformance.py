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
from strategies import conv_specs

from convplan.kernels import ConvSpec, conv2d, registry
from convplan.kernels.algorithms.patch import Im2col
from convplan.kernels.algorithms.winograd import Winograd2x2
from convplan.kernels.checks import (
    ConformanceError,
    check_algorithm,
    check_matches_reference,
    check_out_argument,
    check_supports_is_honest,
    check_workspace,
    fit,
    reference_conv2d,
)

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


class Understated(Im2col):
    name = "understated"

    def workspace_bytes(self, spec: ConvSpec) -> int:
        return 0


SPEC = ConvSpec(n=1, c=8, h=12, w=11, m=6, kh=3, kw=3, padding=1)
GROUPED = ConvSpec(n=1, c=8, h=12, w=11, m=6, kh=3, kw=3, padding=1, groups=2)


@pytest.mark.parametrize(("broken", "check", "spec", "message"), [
    (OffByOne(), check_matches_reference, SPEC, "relative error"),
    (Boastful(), check_matches_reference, ConvSpec(n=1, c=4, h=9, w=9, m=4, kh=5, kw=5),
     "relative error|failed"),
    (Silent(), check_supports_is_honest, GROUPED, "without naming itself"),
    (IgnoresOut(), check_out_argument, SPEC, "another array"),
    (Understated(), check_workspace, SPEC, "over the declared workspace"),
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
