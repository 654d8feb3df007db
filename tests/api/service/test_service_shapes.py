"""The service's `batch` and `input_shapes` fields, against a real server: a plan made for a
batch records it, /v1/run runs that batch and refuses a plan for another, bad shapes and a
batch over the limits are 4xx answers naming the problem."""

from __future__ import annotations

import httpx
import pytest

from tests.support import DATA
from tests.support.service_server import TINY, Server, assert_json_error, running_server

LIMITS = {"CONVPLAN_MAX_BODY": "1MiB", "CONVPLAN_MAX_BUDGET": "0.05",
          "CONVPLAN_MAX_TIME_LIMIT": "20"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("service-shapes"), LIMITS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server):
    with server.client() as c:
        yield c


def test_a_plan_for_a_batch_runs_at_that_batch_and_no_other(client: httpx.Client) -> None:
    plan = client.post("/v1/plan", json={"network": TINY, "batch": 3, "measure": False,
                                         "threads": 1})
    assert plan.status_code == 200, plan.text
    assert plan.json()["inputs"] == {"x": [3, 3, 16, 16]}
    ran = client.post("/v1/run", json={"network": TINY, "batch": 3, "plan": plan.json(),
                                       "threads": 1, "check": True})
    assert ran.status_code == 200, ran.text
    [shape] = ran.json()["output_shapes"].values()
    assert shape[0] == 3 and ran.json()["max_rel_error"] < 1e-4
    refused = client.post("/v1/run", json={"network": TINY, "plan": plan.json(), "threads": 1})
    body = assert_json_error(refused, 400)
    assert body["error"] == "invalid_plan" and "made for inputs x=3x3x16x16" in body["detail"]


def test_input_shapes_of_a_builtin_and_bad_shapes(client: httpx.Client) -> None:
    pareto = client.post("/v1/pareto", json={"network": "alexnet", "input_shapes": {
        "data_0": [2, 3, 224, 224]}, "measure": False, "threads": 1, "points": 2})
    assert pareto.status_code == 200, pareto.text
    unknown = client.post("/v1/plan", json={"network": TINY, "input_shapes": {"y": [1, 3]},
                                            "measure": False})
    assert "'y' is not an input" in assert_json_error(unknown, 400)["detail"]
    for bad in ({"batch": 0}, {"batch": True}, {"input_shapes": {"x": [0, 3, 16, 16]}},
                {"input_shapes": {"x": []}}):
        assert_json_error(client.post("/v1/plan", json={"network": TINY, **bad}), 422)
    huge = client.post("/v1/plan", json={"network": "resnet50", "batch": 10**6,
                                         "measure": False})
    assert assert_json_error(huge, 422)["error"] == "network_too_large"


def test_an_onnx_upload_plans_for_a_batch(client: httpx.Client) -> None:
    data = (DATA / "torch_resnetish.onnx").read_bytes()
    plan = client.post("/v1/plan/onnx", files={"file": ("m.onnx", data)},
                       data={"batch": "2", "measure": "false", "threads": "1"})
    assert plan.status_code == 200, plan.text
    assert plan.json()["inputs"] == {"input": [2, 3, 32, 32]}
    plan = client.post("/v1/plan/onnx", files={"file": ("m.onnx", data)},
                       data={"input_shape": "input=3x3x32x32", "measure": "false"})
    assert plan.status_code == 200, plan.text
    assert plan.json()["inputs"] == {"input": [3, 3, 32, 32]}
    bad = client.post("/v1/plan/onnx", files={"file": ("m.onnx", data)},
                      data={"input_shape": "input=3x3xab", "measure": "false"})
    assert "cannot read" in assert_json_error(bad, 400)["detail"]
