"""Random networks (residual, inception-style concat, depthwise, grouped, strided, pooled) give
the reference's output under several algorithm assignments, and keep the memory promise."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from convplan.kernels import registry
from convplan.selector.inputs import random_inputs
from convplan.selector.lowering import lower
from convplan.selector.network import Network
from convplan.selector.onnx import reference_outputs
from convplan.selector.runner import run_network
from tests.support.arena_runs import check_arena_runs
from tests.support.networks import network_descriptions
from tests.support.strategies import examples

ASSIGNMENTS = ["default", "im2col", "kn2row-aa-nhwc", "im2row", "direct", "random", "random"]


@settings(max_examples=examples(60))
@given(description=network_descriptions(), choice=st.sampled_from(ASSIGNMENTS),
       data=st.data())
def test_random_network_matches_the_reference(description, choice, data) -> None:
    network = Network.from_description(description)
    assignment, algorithm = None, None
    if choice == "random":
        assignment = {}
        for node in network.conv_nodes:
            names = [a.name for a in registry.applicable(network.conv_spec(node))]
            assignment[node.name] = data.draw(st.sampled_from(names))
    elif choice != "default":
        algorithm = choice
    inputs = random_inputs(network, seed=1)
    report = run_network(network, inputs, assignment=assignment, algorithm=algorithm,
                         strict=assignment is not None, threads=1)
    expected = reference_outputs(network, inputs)
    for name, y in report.outputs.items():
        ref = expected[name]
        # float32 against onnxruntime's float32; Winograd's transforms round a little more
        np.testing.assert_allclose(y, ref, rtol=0, atol=3e-4 * float(np.abs(ref).max()) + 1e-6)
    measured, predicted = report.measured_peak_bytes, report.predicted_peak_bytes
    assert measured <= predicted <= 1.05 * measured + 2**20
    # Tighter than that: beyond 5%, only the fixed allowances (executor, ufunc buffers) remain.
    assert predicted <= 1.05 * measured + 128 * 1024


@settings(max_examples=examples(30))
@given(description=network_descriptions(), choice=st.sampled_from(ASSIGNMENTS),
       data=st.data())
def test_runs_in_the_arena_equal_runs_that_allocate(description, choice, data) -> None:
    """One executor, three runs (the second on other inputs): each equals a run where every
    step allocates, bit for bit; no run changes an earlier run's outputs or the inputs."""
    network = Network.from_description(description)
    assignment = {n.name: data.draw(st.sampled_from(
        [a.name for a in registry.applicable(network.conv_spec(n))]))
        for n in network.conv_nodes} if choice == "random" else None
    algorithm = None if choice in ("default", "random") else choice
    program = lower(network, assignment, algorithm=algorithm).program
    check_arena_runs(program, random_inputs(network, seed=1), random_inputs(network, seed=2))


def test_the_strategy_draws_every_kind_of_block() -> None:
    """The generator is not stuck on one shape of network."""
    ops: set[str] = set()
    grouped = depthwise = strided = False

    @settings(max_examples=120, database=None, derandomize=True)   # the same draws every run
    @given(network_descriptions())
    def collect(description) -> None:
        nonlocal grouped, depthwise, strided
        for layer in description["layers"]:
            ops.add(layer["op"])
            if layer["op"] == "conv":
                groups = layer.get("groups", 1)
                depthwise |= groups > 1 and groups == layer["out_channels"]
                grouped |= groups > 1
                strided |= layer.get("stride", 1) > 1

    collect()
    assert {"conv", "add", "concat", "maxpool", "avgpool", "gemm", "batchnorm"} <= ops
    assert grouped and depthwise and strided
