"""`--check` compares what can show an error: the logits before a final softmax, and it says
when the compared tensor is degenerate (constant or one-hot) so agreement proves little."""

from __future__ import annotations

import numpy as np

from convplan.selector.inputs import random_inputs
from convplan.selector.network import Network
from convplan.selector.runner import degenerate, run_network, softmax_inputs


def _network(scale: float) -> Network:
    return Network.from_description({
        "name": "head", "seed": 1, "inputs": [{"name": "x", "shape": [2, 3, 6, 6]}],
        "layers": [
            {"name": "c", "op": "conv", "inputs": ["x"], "out_channels": 8, "kernel": 3},
            {"name": "gap", "op": "globalavgpool", "inputs": ["c"]},
            {"name": "flat", "op": "flatten", "inputs": ["gap"]},
            {"name": "fc", "op": "gemm", "inputs": ["flat"], "out_features": 5},
            {"name": "big", "op": "mul", "inputs": ["fc"], "constant_shape": [1]},
            {"name": "view", "op": "reshape", "inputs": ["big"], "shape": [2, 5]},
            {"name": "prob", "op": "softmax", "inputs": ["view"], "axis": 1}]},
        weights={"big": {"constant": np.array([scale], np.float32)}})


def test_the_softmax_input_is_found_through_views() -> None:
    assert softmax_inputs(_network(1.0)) == {"prob": "view"}


def test_degenerate_outputs_are_named() -> None:
    assert degenerate(np.full((2, 10), 3.0)) == "constant"
    assert degenerate(np.eye(4)[:2]) == "one-hot"
    assert degenerate(np.random.default_rng(0).random((2, 10))) is None
    soft = np.exp(np.arange(10.0))[None] / np.exp(np.arange(10.0)).sum()
    assert degenerate(soft) is None


def test_check_compares_the_logits_and_flags_a_saturated_softmax() -> None:
    network = _network(1e4)             # the softmax saturates: its output is one-hot
    report = run_network(network, random_inputs(network, 0), threads=1, check=True)
    assert any("compared 'view'" in note for note in report.notes), report.notes
    assert not any("is one-hot" in note for note in report.notes)     # the logits are not
    assert report.max_rel_error is not None and report.max_rel_error < 1e-5
    probabilities = report.outputs["prob"]
    assert degenerate(probabilities) == "one-hot"


def test_the_check_after_release_is_the_same_check() -> None:
    """A network handed over has its conv originals dropped once prepared; the check draws the
    seeded weights again for the reference and reuses the prepared ones for the logits, so it
    reports exactly what it reports on a network the caller keeps."""
    kept, owned = _network(3.0), _network(3.0)
    inputs = random_inputs(kept, 0)
    a = run_network(kept, inputs, threads=1, check=True)
    b = run_network(owned, inputs, threads=1, check=True, owned=True)
    assert b.weights_released and not a.weights_released
    assert (a.max_abs_error, a.max_rel_error, a.notes) == (b.max_abs_error, b.max_rel_error,
                                                           b.notes)
    np.testing.assert_array_equal(a.outputs["prob"], b.outputs["prob"])
    np.testing.assert_array_equal(owned.node("c").weights["weight"],
                                  kept.node("c").weights["weight"])     # drawn again, same bits


def test_weights_that_cannot_be_had_again_are_kept_for_the_check() -> None:
    network = _network(3.0)
    given = Network.from_description(
        {"name": "given", "inputs": [{"name": "x", "shape": [1, 3, 6, 6]}],
         "layers": [{"name": "c", "op": "conv", "inputs": ["x"], "out_channels": 2,
                     "kernel": 3}]},
        weights={"c": {k: v[:2] for k, v in network.node("c").weights.items()}})
    report = run_network(given, threads=1, check=True, owned=True)
    assert not report.weights_released and given.node("c").weights
    assert any("weights kept" in note for note in report.notes)
    assert report.max_rel_error is not None and report.max_rel_error < 1e-5
