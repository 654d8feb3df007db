"""Each document is one pydantic model. `Plan`: its JSON has, key for key and type for type, the
shape of the document convplan has always written (pinned by ``data/alexnet_plan.json``, made by
the dict-building code `Plan` replaced, for the same network, costs and cap). `RunReport`: the
document `convplan run --json` has always printed, the output arrays left out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from convplan.profiles.profiler import Profiler
from convplan.selector.network import zoo
from convplan.selector.planning import (
    Plan,
    PlanSpec,
    TransformDoc,
    build_problem,
    make_plan,
    minimum_peak,
    plan_spec,
    solve,
)
from convplan.selector.runner import run_network
from tests.support import DATA

PINNED = DATA / "alexnet_plan.json"
#: Values the document only carries over from the request (the rest is the planner's answer,
#: which other tests check; pinning it would pin the cost model and the memory model too).
GIVEN = {"/network", "/machine/cpu", "/threads", "/memory_cap_bytes", "/costs", "/solver/name"}


def estimated(requests):
    """Analytic costs: the same on every machine."""
    return Profiler(None, threads=1).costs(requests, measure_missing=False)


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every leaf of a JSON document, in document order."""
    if isinstance(value, dict):
        yield path, "{}"
        for key, item in value.items():
            yield from leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        yield path, f"[{len(value)}]"
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def test_the_plan_dumps_the_pinned_document_key_for_key() -> None:
    network = zoo.builtin("alexnet")
    context = build_problem(network, estimated)
    # between the memory model's lowest and fastest peaks (preparation included)
    cap = (context.predicted_peak(minimum_peak(context.problem).choice)
           + context.predicted_peak(solve(context.problem).choice)) // 2
    plan = make_plan(network, estimated, cap, machine={"cpu": "test"}, threads=1)
    assert isinstance(plan, Plan)
    ours = list(leaves(plan.model_dump(mode="json")))
    pinned = list(leaves(json.loads(PINNED.read_text())))
    assert [path for path, _ in ours] == [path for path, _ in pinned]     # keys, in order
    assert {path for path, _ in ours} >= GIVEN
    for (path, got), (_, want) in zip(ours, pinned, strict=True):
        assert type(got) is type(want), path                             # 0 stays 0, not 0.0
        if path in GIVEN:
            assert got == want, path
    # the JSON text too: the CLI writes json.dumps of the dump
    assert json.loads(json.dumps(plan.model_dump(mode="json"))) == plan.model_dump(mode="json")
    assert Plan.model_validate_json(plan.model_dump_json()) == plan


def test_a_transform_keeps_its_for_key() -> None:
    row = {"tensor": "t", "for": "conv1", "into": "NHWC", "time_s": 0.5, "bytes": 64}
    transform = TransformDoc.model_validate(row)
    assert transform.for_ == "conv1" and transform.model_dump(mode="json") == row
    assert TransformDoc.model_json_schema()["required"][1] == "for"


def test_a_plan_runs_as_its_spec() -> None:
    network = zoo.builtin("alexnet")
    plan = make_plan(network, estimated, None, machine={}, threads=1, with_baselines=False)
    spec = plan_spec(plan)
    assert isinstance(spec, PlanSpec)
    assert (spec.network, spec.assignment, spec.layouts, spec.threads) == \
        (plan.network, plan.assignment, plan.layouts, plan.threads)
    assert plan_spec(plan.model_dump(mode="json")).assignment == spec.assignment


#: The document `convplan run --json` printed before `RunReport` was a model: its keys in
#: order (a layer's keys once), each with its JSON type.
RUN_KEYS = ["network", "threads", "time_s", "measured_peak_bytes", "predicted_peak_bytes",
            "peak_step", "prepared_bytes", "constant_bytes", "input_bytes", "weight_bytes",
            "original_weight_bytes", "mapped_weight_bytes", "weights_released", "arena_bytes",
            "max_live_bytes", "footprint_bytes", "rss_baseline_bytes", "rss_peak_growth_bytes",
            "notes", "max_abs_error", "max_rel_error", "reference", "outputs", "layers"]
LAYER_KEYS = {"name": str, "op": str, "algorithm": (str, type(None)), "layout": str,
              "time_s": float, "workspace_bytes": int, "live_bytes": int}


def test_the_run_report_dumps_the_run_document_without_its_arrays() -> None:
    network = zoo.builtin("alexnet")
    report = run_network(network, threads=1, check=True)
    document = report.model_dump(mode="json")
    assert list(document) == RUN_KEYS
    assert document["outputs"] == {"prob_1": [1, 1000]}                 # shapes, not arrays
    assert report.outputs["prob_1"].shape == (1, 1000)
    assert isinstance(document["time_s"], float) and isinstance(document["threads"], int)
    assert isinstance(document["max_abs_error"], float) and document["reference"]
    assert 0 < document["max_live_bytes"] <= document["arena_bytes"] < report.predicted_peak_bytes
    # not measured by a run the caller did not wrap in a ResidentPeak (`convplan run` does)
    assert document["rss_peak_growth_bytes"] is None
    assert document["footprint_bytes"] > document["predicted_peak_bytes"]
    for layer in document["layers"]:
        assert list(layer) == list(LAYER_KEYS)
        assert all(isinstance(layer[k], t) for k, t in LAYER_KEYS.items()), layer
    assert json.loads(json.dumps(document)) == document
