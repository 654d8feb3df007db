"""The Python API's real shapes: `convplan.load_network(model, batch=..., input_shapes=...)`,
`convplan.plan` / `convplan.run` of the loaded network (or of a name with the same options),
and a plan for other shapes refused by `convplan.run`."""

from __future__ import annotations

import json

import pytest

import convplan
from convplan.selector.planning import PlanError
from tests.support.cli import TINY


def test_a_plan_for_batch_2_runs_at_batch_2_only(tmp_path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    network = convplan.load_network(path, batch=2)
    assert network.inputs == {"x": (2, 4, 8, 8)}
    plan = convplan.plan(network, measure=False, threads=1)
    assert plan.inputs == {"x": [2, 4, 8, 8]}
    report = convplan.run(path, plan, batch=2, threads=1)
    assert report.outputs["c2"].shape == (2, 8, 8, 8)
    with pytest.raises(PlanError, match="made for inputs x=2x4x8x8"):
        convplan.run(path, plan, threads=1)
    with pytest.raises(ValueError, match="for a network given by name or path"):
        convplan.run(network, plan, batch=2)
