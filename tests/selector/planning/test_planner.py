"""Plans on real networks: under several caps the executed plan keeps measured <= predicted <=
cap and still computes the reference's output; the plan document is complete."""

from __future__ import annotations

import numpy as np
import pytest

from convplan.profiles.profiler import Profiler
from convplan.selector.inputs import random_inputs
from convplan.selector.lowering import lower
from convplan.selector.network import zoo
from convplan.selector.planning import (
    Caps,
    Infeasible,
    PlanningError,
    PlanRequest,
    build_problem,
    costs_label,
    enumerate_candidates,
    evaluate,
    make_plan,
    minimum_peak,
    pareto,
    pareto_network,
    parse_bytes,
    plan_network,
    requests_for,
    solve,
)
from convplan.selector.planning import problem as problem_module
from convplan.selector.planning.ilp import copies
from convplan.selector.runner import run_network

NETWORKS = [*zoo.PAPER_NETWORKS, *(f"onnx:{m}" for m in zoo.light_models())]


def estimated(requests):
    """Analytic costs: the memory promise does not depend on where the times came from."""
    return Profiler(None, threads=1).costs(requests, measure_missing=False)


def caps_for(context) -> list[int]:
    """The memory model's peak of the lowest-memory plan, a binding cap between it and the
    fastest plan's peak (when they differ), and two generous ones: at least three distinct
    caps."""
    # (a hair above the lowest plan's peak: the solver may return another of the choices the
    # ILP ties at that peak, which the memory model may put up to a few KiB higher)
    low = int(context.predicted_peak(minimum_peak(context.problem).choice) * 1.0005)
    fast = context.predicted_peak(solve(context.problem).choice)
    return sorted({low, (low + fast) // 2, int(1.1 * low), max(fast, 2 * low)})


@pytest.mark.parametrize("name", NETWORKS)
def test_plans_keep_the_promise_under_three_caps(name: str) -> None:
    network = zoo.builtin(name)
    problem = build_problem(network, estimated)
    inputs = random_inputs(network, seed=2)
    caps = caps_for(problem)
    for cap in caps:
        plan = make_plan(network, estimated, cap, machine={}, threads=1, with_baselines=False)
        assert plan.predicted.peak_bytes <= cap
        # the run a plan promises: convplan run loads the network and owns its weights; the
        # outputs are checked under the tightest cap, whose plan strays furthest from the
        # defaults (each algorithm's numbers are checked on its own in tests/kernels)
        check = cap == caps[0]
        report = run_network(zoo.builtin(name), inputs, assignment=plan.assignment,
                             layouts=plan.layouts, strict=True, threads=1, check=check,
                             owned=True)
        assert report.weights_released
        assert report.predicted_peak_bytes == plan.predicted.peak_bytes
        assert report.measured_peak_bytes <= report.predicted_peak_bytes <= cap
        if check:
            # the logits where a softmax ends the network (constant weights tie them, and
            # one rounding step then flips the softmax)
            assert report.max_rel_error is not None and report.max_rel_error <= 1e-3


def test_the_model_bound_covers_the_memory_model_for_any_choice() -> None:
    """The ILP's per-step accounting is an upper bound of what the lowered program predicts."""
    rng = np.random.default_rng(0)
    for name in ("googlenet", "onnx:shufflenet", "onnx:densenet121"):
        problem = build_problem(zoo.builtin(name), estimated)
        for _ in range(15):
            choice = {n: int(rng.integers(len(c))) for n, c in problem.problem.candidates.items()}
            _, bound, outputs_nchw = evaluate(problem.problem, choice)
            if outputs_nchw:
                # the steps' peak: the ILP does not price the preparation before them
                profile = problem.predictions.profile(*problem.assignment(choice))
                peak = max(step.total_bytes for step in profile.steps)
                assert peak <= bound <= 1.05 * peak + 2**20


def test_plan_document_lists_every_candidate_and_the_baselines() -> None:
    network = zoo.builtin("onnx:squeezenet")
    problem = build_problem(network, estimated).problem
    # between the ILP's own lowest and fastest peaks: the ILP's optimum there is the plan
    cap = (minimum_peak(problem).peak_bytes + solve(problem).peak_bytes) // 2
    plan = make_plan(network, estimated, cap, machine={"cpu": "test"}, threads=1)
    assert plan.network == "onnx:squeezenet" and plan.memory_cap_bytes == cap
    assert plan.machine == {"cpu": "test"} and plan.costs == "analytic"
    assert plan.solver.optimal and plan.solver.name == "cbc"
    assert set(plan.baselines) == {"fastest", "im2col", "greedy", "lowest_memory"}
    # The ILP prices live bytes; the model also holds the arena's views and alignment, a few
    # KiB that vary with the plan, so the ILP's leanest plan is the model's within those.
    assert plan.baselines["lowest_memory"].peak_bytes <= plan.predicted.peak_bytes + 64 * 1024
    assert plan.predicted.time_s <= plan.baselines["im2col"].time_s + 1e-12 or \
        not plan.baselines["im2col"].fits_cap
    convs = [layer for layer in plan.layers if layer.op == "conv"]
    assert len(convs) == 26
    for layer in plan.model_dump(mode="json")["layers"]:
        names = [c["name"] for c in layer["candidates"]]
        chosen = layer["algorithm"] or layer["input_layout"]
        assert chosen in names
        assert {"time_s", "workspace_bytes", "input_layout", "output_layout"} <= set(layer)
    assert plan.assignment == {layer.name: layer.algorithm for layer in convs}


def test_an_infeasible_cap_states_the_minimum_peak() -> None:
    """The smallest achievable peak named is the memory model's, of the lowest-memory plan."""
    network = zoo.builtin("onnx:squeezenet")
    context = build_problem(network, estimated)
    low = context.predicted_peak(minimum_peak(context.problem).choice)
    with pytest.raises(Infeasible, match=f"smallest achievable peak is {low} bytes") as refused:
        make_plan(network, estimated, low // 2, machine={}, threads=1)
    assert (refused.value.cap, refused.value.smallest_bytes) == ("memory", low)
    assert issubclass(Infeasible, PlanningError)


def test_the_frontier_is_monotone_and_spans_the_range() -> None:
    problem = build_problem(zoo.builtin("googlenet"), estimated)
    frontier = pareto(problem, points=6)
    peaks = [p.peak_bytes for p in frontier]
    times = [p.time_s for p in frontier]
    assert peaks == sorted(peaks) and times == sorted(times, reverse=True)
    assert peaks[0] == minimum_peak(problem.problem).peak_bytes
    assert times[-1] == pytest.approx(solve(problem.problem).time_s)


def test_the_frontier_job_gives_one_document(tmp_path) -> None:
    """`pareto_network` (what `convplan pareto` and /v1/pareto call): the frontier over the
    sweep, the four baselines with no cap, and where the costs came from."""
    network = zoo.builtin("googlenet")
    frontier = pareto_network(network, PlanRequest(threads=1, measure=False,
                                                   db=str(tmp_path / "c.sqlite")), 4)
    assert frontier.network == "googlenet" and frontier.threads == 1
    assert frontier.costs == "analytic"
    assert frontier.points == pareto(build_problem(network, estimated), 4)
    assert set(frontier.baselines) == {"fastest", "im2col", "greedy", "lowest_memory"}
    assert all(b.fits_cap for b in frontier.baselines.values())


def test_costs_not_measured_by_the_deadline_are_estimated(tmp_path) -> None:
    """A job's ``measure_until`` (the service's deadline hook): once it has passed, nothing is
    measured and the costs are the analytic model's."""
    import time

    request = PlanRequest(threads=1, budget_s=0.01, db=str(tmp_path / "c.sqlite"))
    frontier = pareto_network(zoo.builtin("onnx:squeezenet"), request, 2,
                              measure_until=time.monotonic() - 1)
    assert frontier.costs == "analytic"
    plan = plan_network(zoo.builtin("onnx:squeezenet"), request,
                        measure_until=time.monotonic() - 1)
    assert plan.costs == "analytic"


@pytest.mark.parametrize(("sources", "label"), [
    ({"measured"}, "measured"), ({"imported"}, "imported"), ({"analytic"}, "analytic"),
    ({"measured", "analytic"}, "mixed"), (set(), "mixed")])
def test_the_costs_label_names_the_one_source(sources: set[str], label: str) -> None:
    assert costs_label(sources) == label


@pytest.mark.parametrize(("text", "size"), [("24MiB", 24 * 2**20), ("1.5 GiB", 3 * 2**29),
                                             ("500kB", 500_000), ("123456", 123456),
                                             (4096, 4096), ("2 MB", 2_000_000)])
def test_caps_accept_bytes_and_units(text, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["24 parsecs", "", "-5MiB", "0", "MiB", "1e9", "24 MiBs",
                                  "2**62", "24MiB;", True])
def test_caps_in_bad_units_are_clear_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|positive"):
        parse_bytes(text)


@pytest.mark.parametrize(("options", "message"), [
    ({"cap": "24 parsecs"}, "cannot read '24 parsecs' as a size: use bytes or a number"),
    ({"cap": "0"}, "a memory cap must be positive, got '0'"),
    ({"threads": 0}, "threads must be greater than or equal to 1, got 0"),
    ({"solver": "gurobi"}, "unknown solver 'gurobi'; use one of cbc, highs"),
    ({"time_limit_s": 0}, "time_limit_s must be greater than 0, got 0"),
    ({"budget_s": float("nan")}, "budget_s must be a finite number, got nan"),
])
def test_a_bad_plan_request_is_one_clear_message(options: dict, message: str) -> None:
    """What the CLI, the service and `convplan.plan` print: a line, not pydantic's report."""
    from pydantic import ValidationError

    with pytest.raises(ValueError) as error:
        PlanRequest(**options)
    assert str(error.value).startswith(message), error.value
    assert not isinstance(error.value, ValidationError) and "\n" not in str(error.value)


def test_a_plan_request_reads_its_cap_as_the_settings_read_sizes() -> None:
    from convplan.settings import ServiceSettings

    request = PlanRequest(cap="1.5 GiB", threads=2)
    assert request.cap == 3 * 2**29 == ServiceSettings.from_env({}, max_body="1.5 GiB").max_body
    assert type(request.cap) is int and PlanRequest(cap=4096).cap == 4096


def test_a_solution_the_memory_model_puts_over_the_cap_is_never_returned() -> None:
    """Make the ILP's accounting 1 MiB too optimistic at every step: what it returns under a
    binding cap would break the cap by the memory model, so it is solved again lower or
    refused, never returned. (Random costs, so the fastest plan is not the leanest.)"""
    from convplan.profiles.measurement import Measurement
    from convplan.selector.planning.solving import _held_to

    rng = np.random.default_rng(0)

    def costs(requests):
        return {(r.kind, r.key, r.candidate): Measurement(float(rng.uniform(1e-4, 1e-2)), 0,
                                                           "analytic") for r in requests}

    np_ = build_problem(zoo.builtin("onnx:squeezenet"), costs)
    honest = caps_for(np_)
    for n in np_.problem.fixed_bytes:
        np_.problem.fixed_bytes[n] -= 1 << 20
    broken = 0
    for cap in honest:
        raw = solve(np_.problem, cap)
        broken += np_.predicted_peak(raw.choice) > cap
        try:
            held = _held_to(np_, raw, Caps(cap), solver="cbc", time_limit_s=60)
        except Infeasible as error:
            assert "by the memory model" in str(error)
            continue
        assert np_.predicted_peak(held.choice) <= cap
    assert broken, "the optimistic accounting never broke a cap: the test shows nothing"


@pytest.mark.parametrize("name", ["googlenet", "onnx:shufflenet"])
def test_profiling_measures_exactly_what_the_problem_prices(name: str) -> None:
    """One enumeration: the requests `convplan profile` measures are the ones `build_problem`
    asks the cost function for, in the same order, and every candidate is priced by one."""
    network = zoo.builtin(name)
    asked: list = []

    def costs(requests):
        asked.extend(requests)
        return estimated(requests)

    problem = build_problem(network, costs).problem
    assert asked == requests_for(network)
    options = enumerate_candidates(network).options
    assert {n: [c.name for c in cs] for n, cs in problem.candidates.items()} == {
        n: [o.name for o in os_] for n, os_ in options.items()}
    assert len(asked) == len(set(asked))


def test_the_ilp_copies_exactly_what_lowering_copies() -> None:
    """One layout rule: the transforms the ILP prices for a choice are the transform steps the
    lowered program runs (tensor, consumer, layout), network outputs aside."""
    rng = np.random.default_rng(1)
    for name in ("googlenet", "onnx:shufflenet"):
        context = build_problem(zoo.builtin(name), estimated)
        for _ in range(10):
            choice = {n: int(rng.integers(len(c)))
                      for n, c in context.problem.candidates.items()}
            algorithms, layouts = context.assignment(choice)
            program = lower(context.network, algorithms, layouts=layouts, strict=True).program
            lowered = {(s.inputs[0], s.name.rsplit(">", 1)[1], s.layout)
                       for s in program.steps if s.kind == "transform"}
            priced = {(t, n, layout) for n in context.problem.order
                      for t, layout in copies(context.problem, choice, n)}
            assert {c for c in lowered if c[1] != "output"} == priced


def test_one_plan_request_lowers_each_assignment_once(monkeypatch, tmp_path) -> None:
    """The plan context remembers the memory model's profile of every assignment: the fixed
    bytes' program, the solution, the baselines and the document share them."""
    seen: list = []

    def counted(network, assignment, **kw):
        seen.append((tuple(sorted(assignment.items())), tuple(sorted(kw["layouts"].items()))))
        return lower(network, assignment, **kw)

    monkeypatch.setattr(problem_module, "lower", counted)
    network = zoo.builtin("onnx:squeezenet")
    low = minimum_peak(build_problem(network, estimated).problem).peak_bytes
    seen.clear()
    plan = plan_network(network, PlanRequest(cap=2 * low, threads=1, measure=False,
                                             db=str(tmp_path / "costs.sqlite")))
    assert plan.predicted.peak_bytes <= 2 * low
    assert len(seen) == len(set(seen)) <= 6     # fixed bytes, solution, four baselines


@pytest.mark.parametrize("name", ["onnx:squeezenet", "googlenet"])
def test_a_cap_the_model_meets_but_the_ilp_bound_does_not_is_planned(name: str) -> None:
    """The ILP bounds every step from above by a few KiB; a cap at the lowest-memory plan's
    predicted peak lies below that plan's bound, and is met (held to the memory model)."""
    network = zoo.builtin(name)
    context = build_problem(network, estimated)
    lowest = minimum_peak(context.problem)
    cap = context.predicted_peak(lowest.choice)
    assert cap < lowest.peak_bytes, "no gap between the model and the bound to test"
    plan = make_plan(network, estimated, cap, machine={}, threads=1, with_baselines=False)
    assert plan.predicted.peak_bytes <= cap
    assert plan.solver.optimal is False
    report = run_network(network, assignment=plan.assignment, layouts=plan.layouts,
                         strict=True)
    assert report.measured_peak_bytes <= report.predicted_peak_bytes <= cap
    try:                                   # below it: correct or refused, never over the cap
        tighter = make_plan(network, estimated, cap - 1, machine={}, threads=1,
                            with_baselines=False)
    except Infeasible as refused:
        assert "smallest achievable peak is" in str(refused)
    else:
        assert tighter.predicted.peak_bytes <= cap - 1
