"""Every ONNX light model shipped with the onnx package imports, runs and keeps the promise."""

from __future__ import annotations

import numpy as np
import pytest

from convplan.selector.baselines import lowest_memory_assignment, uniform_assignment
from convplan.selector.network import zoo
from convplan.selector.runner import run_network

MODELS = zoo.light_models()


def test_the_onnx_wheel_ships_the_nine_light_models() -> None:
    assert set(MODELS) >= {"bvlc_alexnet", "densenet121", "inception_v1", "inception_v2",
                           "resnet50", "shufflenet", "squeezenet", "vgg19", "zfnet512"}


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_the_shipped_output(name: str) -> None:
    """The onnx test-suite's input and tolerance (rtol 1e-3, atol 1e-7; densenet 2e-3)."""
    network = zoo.builtin(f"onnx:{name}")
    inputs, expected = zoo.light_model_io(name)
    report = run_network(network, inputs, threads=1)
    (y,) = report.outputs.values()
    rtol = 2e-3 if name == "densenet121" else 1e-3
    np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("assignment", ["im2col", "lowest-memory"])
def test_light_model_peak_memory_is_predicted(name: str, assignment: str) -> None:
    """measured <= predicted <= 1.05 x measured + 1 MiB, under two different assignments."""
    network = zoo.builtin(f"onnx:{name}")
    chosen = (uniform_assignment(network, "im2col") if assignment == "im2col"
              else lowest_memory_assignment(network))
    report = run_network(network, assignment=chosen, strict=True, threads=1)
    measured, predicted = report.measured_peak_bytes, report.predicted_peak_bytes
    assert measured <= predicted <= 1.05 * measured + 2**20, (measured, predicted)
    used = {layer.algorithm for layer in report.layers if layer.algorithm}
    if assignment == "im2col":
        assert used == {"im2col"}


def test_lowest_memory_beats_im2col_on_vgg19() -> None:
    network = zoo.builtin("onnx:vgg19")
    peaks = [run_network(network, assignment=a(network), threads=1).predicted_peak_bytes
             for a in (lambda n: uniform_assignment(n, "im2col"), lowest_memory_assignment)]
    assert peaks[1] < peaks[0] - 50 * 2**20


@pytest.mark.parametrize("name", MODELS)
def test_a_light_model_loaded_for_the_run_keeps_the_promise(name: str) -> None:
    """Loaded for the run alone (its originals dropped once prepared, the preparation phase
    counted), under the lowest-memory plan and its mixed algorithms: the same bounds."""
    network = zoo.load_network(f"onnx:{name}")
    report = run_network(network, assignment=lowest_memory_assignment(network), strict=True,
                         threads=1, owned=True)
    measured, predicted = report.measured_peak_bytes, report.predicted_peak_bytes
    assert report.weights_released and not any(n.weights for n in network.conv_nodes)
    assert measured <= predicted <= 1.05 * measured + 2**20, (measured, predicted)
