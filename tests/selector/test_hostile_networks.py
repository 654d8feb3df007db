"""Correct or refused under aliasing: random networks of one-channel and H*W == 1 tensors, views,
self-operands and fan-out, run under random plans (and under plans the planner makes from random
costs), give onnxruntime's outputs, leave the caller's input untouched, and keep the memory
promise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convplan.kernels.executor import Executor, Program, Step
from convplan.kernels.layout import convert
from convplan.profiles.measurement import Measurement
from convplan.selector.lowering import lower
from convplan.selector.network import Network
from convplan.selector.onnx import reference_outputs
from convplan.selector.planning import make_plan
from convplan.selector.runner import run_network
from tests.support.arena_runs import check_arena_runs
from tests.support.hostile_networks import aliasing_descriptions, random_plans
from tests.support.strategies import examples


def _inputs(network: Network, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)      # both signs, so relu and clip change something
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in network.inputs.items()}


def _check(network: Network, assignment, layouts) -> None:
    inputs = _inputs(network, 3)
    pristine = {k: v.copy() for k, v in inputs.items()}
    report = run_network(network, inputs, assignment=assignment, layouts=layouts, strict=True,
                         threads=1)
    for name, x in inputs.items():
        np.testing.assert_array_equal(x, pristine[name], err_msg=f"input {name} was modified")
    expected = reference_outputs(network, pristine)
    for name, y in report.outputs.items():
        ref = expected[name].reshape(y.shape)
        np.testing.assert_allclose(y, ref, rtol=0, atol=3e-4 * float(np.abs(ref).max()) + 1e-5,
                                   err_msg=f"output {name}")
    assert report.measured_peak_bytes <= report.predicted_peak_bytes
    program = lower(network, assignment, layouts=layouts, strict=True).program
    check_arena_runs(program, pristine, _inputs(network, 4))


@settings(max_examples=examples(80), deadline=None)
@given(description=aliasing_descriptions(), data=st.data())
def test_random_plans_on_aliasing_networks_are_correct(description, data) -> None:
    network = Network.from_description(description)
    assignment, layouts = data.draw(random_plans(network))
    _check(network, assignment, layouts)


@settings(max_examples=examples(25), deadline=None)
@given(description=aliasing_descriptions(), seed=st.integers(0, 2**16))
def test_plans_the_planner_makes_from_any_costs_are_correct(description, seed) -> None:
    """Random costs steer the ILP into layout choices measured costs also reach."""
    network = Network.from_description(description)
    rng = np.random.default_rng(seed)

    def costs(requests):
        return {(r.kind, r.key, r.candidate): Measurement(float(rng.uniform(1e-6, 1e-3)), 0,
                                                           "analytic") for r in requests}

    plan = make_plan(network, costs, None, machine={}, threads=1, with_baselines=False)
    _check(network, plan.assignment, plan.layouts)


@pytest.mark.parametrize("shape", [(1, 1, 4, 5), (2, 3, 1, 1), (1, 1, 1, 1), (2, 1, 3, 1)])
@pytest.mark.parametrize(("src", "dst"), [("NCHW", "NHWC"), ("NHWC", "NCHW")])
def test_a_layout_transform_owns_its_output(shape, src, dst) -> None:
    """Where the transposed array is already contiguous NumPy would return a view."""
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    y = convert(x, src, dst)
    assert y.flags.c_contiguous and y.flags.owndata
    assert not np.shares_memory(x, y)


def test_the_executor_refuses_a_step_that_returns_other_arrays_than_it_was_given() -> None:
    """The last line of defence: a step that writes must return the arrays it was given (the
    arena's views, the output buffers); its input, or a new array, is an error."""
    from convplan.kernels import operators

    relu = operators.make("relu")
    step = Step(name="bad", kind="op", inputs=["x"], outputs=["y"], operator=relu)
    program = Program([step], ["x"], ["y"], {"x": (1, 1, 2, 2), "y": (1, 1, 2, 2)})
    x = np.ones((1, 1, 2, 2), np.float32)
    assert Executor(program).run({"x": x}).outputs["y"] is not x

    class Aliasing(type(relu)):         # returns its input, but is not declared a view
        op = "aliasing"

        def run(self, xs, weights, layout="NCHW", inplace=False, out=None, workspace=None):
            return [xs[0]]

    class Allocating(type(relu)):       # ignores the arrays it is given
        op = "allocating"

        def run(self, xs, weights, layout="NCHW", inplace=False, out=None, workspace=None):
            return [np.maximum(xs[0], 0)]

    for broken in (Aliasing(), Allocating()):
        step.operator = broken
        with pytest.raises(RuntimeError, match="other than the ones it was given"):
            Executor(program).run({"x": x})


def _layers_of(*layers: dict) -> list[dict]:
    return list(layers)


HIDDEN_TEMPORARIES = {
    # NumPy copies an operand that overlaps the output but is not the same array
    "a tensor plus a 3-D view of itself": ((1, 32, 128, 128), _layers_of(
        {"name": "r", "op": "relu", "inputs": ["x"]},
        {"name": "v", "op": "reshape", "inputs": ["r"], "shape": [32, 128, 128]},
        {"name": "a", "op": "add", "inputs": ["r", "v"]})),
    "a view of a tensor times the tensor": ((1, 16, 64, 64), _layers_of(
        {"name": "r", "op": "sigmoid", "inputs": ["x"]},
        {"name": "v", "op": "flatten", "inputs": ["r"], "axis": 0},
        {"name": "v4", "op": "reshape", "inputs": ["v"], "shape": [16, 64, 64]},
        {"name": "m", "op": "mul", "inputs": ["r", "v4"]})),
    # thousands of array objects, each small beside its own bookkeeping
    "15 splits into 64 parts each": ((1, 64, 2, 2), _layers_of(
        *[{"name": f"sp{j}", "op": "split", "inputs": ["x"], "axis": 1, "sizes": [1] * 64,
           "outputs": [f"p{j}_{i}" for i in range(64)]} for j in range(15)],
        {"name": "cat", "op": "concat", "axis": 1,
         "inputs": [f"p{j}_{i}" for j in range(15) for i in range(64)]})),
    "900 live tiny tensors": ((1, 1, 2, 2), _layers_of(
        *[{"name": f"r{i}", "op": "relu", "inputs": ["x"]} for i in range(900)],
        {"name": "cat", "op": "concat", "inputs": [f"r{i}" for i in range(900)], "axis": 1})),
}


@pytest.mark.parametrize("case", list(HIDDEN_TEMPORARIES))
def test_the_memory_model_counts_what_numpy_allocates_behind_the_scenes(case) -> None:
    shape, layers = HIDDEN_TEMPORARIES[case]
    network = Network.from_description({"name": "t", "inputs": [{"name": "x", "shape": shape}],
                                        "layers": layers})
    report = run_network(network, _inputs(network, 0), threads=1)
    assert report.measured_peak_bytes <= report.predicted_peak_bytes


def test_names_that_look_like_the_lowering_s_own_are_still_read_right() -> None:
    """A layer named as lowering names a layout copy (``x@NHWC>c``), and one with a ``#`` as
    the arena names workspaces: the program reads what the network says, under every
    algorithm (im2row copies ``x`` into NHWC for ``c``)."""
    description = {
        "name": "lookalikes", "seed": 0, "inputs": [{"name": "x", "shape": [1, 8, 8, 8]}],
        "layers": [
            {"name": "x@NHWC>c", "op": "relu", "inputs": ["x"]},
            {"name": "c", "op": "conv", "inputs": ["x"], "out_channels": 8, "kernel": 3,
             "padding": 1},
            {"name": "block#1", "op": "conv", "inputs": ["x@NHWC>c"], "out_channels": 8,
             "kernel": 3, "padding": 1},
        ],
        "outputs": ["c", "block#1"]}
    network = Network.from_description(description)
    x = {"x": np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)}
    want = run_network(network, x, algorithm="direct", threads=1).outputs
    for algorithm in ("im2row", "im2col", "kn2row"):
        got = run_network(network, x, algorithm=algorithm, threads=1).outputs
        for name in ("c", "block#1"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4,
                                       err_msg=f"{algorithm}: {name}")
