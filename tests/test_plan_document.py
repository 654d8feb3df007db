"""The plan document is one pydantic model, `Plan`: its JSON is, key for key and type for type,
the document convplan has always written (pinned by ``data/alexnet_plan.json``, made by the
dict-building code `Plan` replaced, for the same network, costs and cap)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convplan.profiles.profiler import Profiler
from convplan.selector import zoo
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

PINNED = Path(__file__).parent / "data" / "alexnet_plan.json"
#: What differs between two solves of the same problem.
VARIES = {"/solver/solve_seconds"}


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
    problem = build_problem(network, estimated).problem
    cap = (minimum_peak(problem).peak_bytes + solve(problem).peak_bytes) // 2
    plan = make_plan(network, estimated, cap, machine={"cpu": "test"}, threads=1)
    assert isinstance(plan, Plan)
    ours = list(leaves(plan.model_dump(mode="json")))
    pinned = list(leaves(json.loads(PINNED.read_text())))
    assert [path for path, _ in ours] == [path for path, _ in pinned]     # keys, in order
    for (path, got), (_, want) in zip(ours, pinned, strict=True):
        assert type(got) is type(want), path                             # 0 stays 0, not 0.0
        if path not in VARIES:
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
