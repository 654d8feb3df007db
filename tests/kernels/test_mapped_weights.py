"""Prepared weights a compiled plan maps from its file: every algorithm states their shape
without preparing (`prepared_shape`), runs with them read-only and memory-mapped (the same
outputs, bit for bit, as with the weights it prepared itself), and the byte counts see a
mapped array as itself, not as the whole file it is a view of."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convplan.kernels import ConvSpec, registry
from convplan.kernels.base import Prepared
from convplan.kernels.checks import fit, reference_conv2d
from convplan.kernels.executor import buffers_of, held_bytes, mapped_bytes
from tests.support.strategies import conv_specs, examples

ALGORITHMS = registry.names()


def mapped_copy(directory: Path, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """``arrays`` written one after another into a file and mapped back read-only (the views
    hold the map; it goes with the last of them), and the file's size."""
    path = directory / "arrays.bin"
    offsets = []
    with path.open("wb") as file:
        for a in arrays:
            offsets.append(file.tell())
            file.write(np.ascontiguousarray(a).tobytes())
            file.write(bytes(-file.tell() % 64))
    with path.open("rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    views = [np.frombuffer(mapping, a.dtype, a.size, offset).reshape(a.shape)
             for a, offset in zip(arrays, offsets, strict=True)]
    return views, len(mapping)


@pytest.mark.parametrize("name", ALGORITHMS)
@settings(max_examples=examples(12), deadline=None)
@given(spec=conv_specs(max_side=10), seed=st.integers(0, 2**16), bias=st.booleans())
def test_runs_with_read_only_mapped_prepared_weights(tmp_path_factory: pytest.TempPathFactory,
                                                      name: str, spec: ConvSpec, seed: int,
                                                      bias: bool) -> None:
    """The run reads the prepared arrays and never writes them: mapped read-only (a write
    would raise), they give exactly the outputs of the in-memory prepared weights, which agree
    with the float64 reference."""
    algorithm = registry.get(name)
    fitted = fit(spec, algorithm)
    assume(fitted is not None)
    assert fitted is not None
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(fitted.input_shape(algorithm.input_layout)).astype(np.float32)
    w = rng.standard_normal(fitted.weight_shape).astype(np.float32)
    b = rng.standard_normal(fitted.m).astype(np.float32) if bias else None
    prepared = algorithm.prepare(w, b, fitted)
    assert prepared.weights.shape == algorithm.prepared_shape(fitted)
    arrays = [prepared.weights] + ([prepared.bias] if prepared.bias is not None else [])
    views, _ = mapped_copy(tmp_path_factory.mktemp("mapped"), arrays)
    mapped = Prepared(prepared.algorithm, prepared.weight_shape, prepared.groups, views[0],
                      views[1] if bias else None)
    assert not any(v.flags.writeable for v in views)
    expected = algorithm.run(x, prepared, fitted)
    got = algorithm.run(x, mapped, fitted)
    again = algorithm.run(x, mapped, fitted)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)
    for view, array in zip(views, arrays, strict=True):
        np.testing.assert_array_equal(view, array)      # untouched
    if algorithm.input_layout == "NCHW" and algorithm.output_layout == "NCHW":
        reference = reference_conv2d(x, w, b, stride=fitted.stride, padding=fitted.padding,
                                     dilation=fitted.dilation, groups=fitted.groups)
        scale = max(float(np.abs(reference).max()), 1.0)
        assert float(np.abs(got - reference).max()) <= 1e-3 * scale


@pytest.mark.parametrize("name", ALGORITHMS)
@settings(max_examples=examples(25), deadline=None)
@given(spec=conv_specs(max_side=12))
def test_prepared_shape_is_the_shape_prepare_returns(name: str, spec: ConvSpec) -> None:
    """Known without preparing, so a loader can map arrays of it; and its elements are the
    prepared bytes the memory model counts."""
    algorithm = registry.get(name)
    fitted = fit(spec, algorithm)
    assume(fitted is not None)
    assert fitted is not None
    w = np.ones(fitted.weight_shape, np.float32)
    prepared = algorithm.prepare(w, None, fitted)
    assert prepared.weights.shape == algorithm.prepared_shape(fitted)
    assert algorithm.prepared_bytes(fitted, bias=False) == prepared.weights.nbytes


def test_prepared_forms_tell_different_layouts_apart() -> None:
    """Algorithms whose prepared arrays could have one shape but differ in the order of their
    elements have different forms, so a file's weights are never read in the wrong order."""
    spec = ConvSpec(n=1, c=4, h=6, w=6, m=4, kh=3, kw=3, padding=(1, 1, 1, 1))
    by_shape: dict[tuple[tuple[int, ...], str], str] = {}
    for algorithm in registry.applicable(spec):
        key = (algorithm.prepared_shape(spec), algorithm.prepared_form())
        w = np.random.default_rng(0).standard_normal(spec.weight_shape).astype(np.float32)
        data = algorithm.prepare(w, None, spec).weights.tobytes()
        if key in by_shape:         # same shape and form: the same bytes
            assert by_shape[key] == data, algorithm.name
        by_shape[key] = data
    forms = {a.prepared_form() for a in registry.all_algorithms()}
    assert len(forms) >= 8


def test_a_mapped_array_counts_as_itself_not_as_the_file(tmp_path: Path) -> None:
    arrays = [np.ones((100, 10), np.float32), np.zeros(7, np.float32)]
    views, file_bytes = mapped_copy(tmp_path, arrays)
    reshaped = views[0].reshape(10, 100)
    assert file_bytes > sum(a.nbytes for a in arrays)
    assert held_bytes(views) == sum(a.nbytes for a in arrays)
    assert held_bytes([*views, reshaped]) == sum(a.nbytes for a in arrays)   # a view: once
    assert mapped_bytes([*views, reshaped]) == sum(a.nbytes for a in arrays)
    assert mapped_bytes(arrays) == 0
    assert len(buffers_of(views)) == 2
    assert all(file_backed(v) for v in views) and not file_backed(arrays[0])


def file_backed(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a memory-mapped file (NumPy wraps the map in a memoryview)."""
    root: object = a
    while isinstance(root, np.ndarray):
        root = root.base
    return isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap)
