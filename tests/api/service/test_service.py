"""The HTTP service end to end, against a real uvicorn server started by `convplan serve`:
planning (built-in, description, ONNX upload), running a plan, the Pareto frontier, profiling
jobs, every kind of bad input (4xx with a JSON body, never 500, the server keeps serving) and a
bounded load test. Costs are analytic or measured with tiny budgets, so this stays fast."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from convplan.kernels import registry
from convplan.selector.network import Network
from convplan.selector.onnx import reference_outputs
from tests.support import DATA
from tests.support.service_server import TINY, Server, assert_json_error, running_server

LIMITS = {"CONVPLAN_MAX_BODY": "1MiB", "CONVPLAN_MAX_LAYERS": "200",
          "CONVPLAN_MAX_BUDGET": "0.05", "CONVPLAN_MAX_TIME_LIMIT": "20"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("service"), LIMITS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server):
    with server.client() as c:
        yield c


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def _wait_job(client: httpx.Client, url: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(url).json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


@pytest.fixture(scope="module")
def warm_tiny(client: httpx.Client) -> dict:
    """Profile TINY (one thread, a tiny budget) through a job: the store is then warm."""
    created = client.post("/v1/profile", json={"network": TINY, "threads": 1, "budget_s": 0.01})
    assert created.status_code == 202, created.text
    assert created.headers["location"] == created.json()["url"]
    job = _wait_job(client, created.json()["url"])
    assert job["status"] == "succeeded", job
    return job


def _cli_json(command: str) -> object:
    done = subprocess.run([sys.executable, "-m", "convplan", command, "--json"],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


# -- the happy paths -----------------------------------------------------------------------------
def test_health_catalogue_and_docs(client: httpx.Client) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["slots"] >= 1
    names = [a["name"] for a in client.get("/v1/algorithms").json()]
    assert names == registry.names()
    networks = [n["name"] for n in client.get("/v1/networks").json()]
    assert networks[:4] == ["alexnet", "vgg16", "googlenet", "resnet50"]
    # the same documents as `convplan algorithms --json` and `convplan networks --json`
    assert client.get("/v1/algorithms").json() == _cli_json("algorithms")
    assert client.get("/v1/networks").json() == _cli_json("networks")
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/plan", "/v1/plan/onnx", "/v1/pareto", "/v1/run", "/v1/profile",
            "/v1/jobs/{job_id}"} <= set(paths)


def test_plan_a_builtin_under_a_cap(client: httpx.Client) -> None:
    # AlexNet holds 233 MiB of weights (its classifier's counted too)
    response = client.post("/v1/plan", json={"network": "alexnet", "memory_cap": "240MiB",
                                             "measure": False, "threads": 1})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["network"] == "alexnet" and plan["costs"] == "analytic"
    assert plan["memory_cap_bytes"] == 240 * 2**20
    assert plan["predicted"]["peak_bytes"] <= 240 * 2**20
    assert set(plan["baselines"]) == {"fastest", "im2col", "greedy", "lowest_memory"}
    convs = [layer["name"] for layer in plan["layers"] if layer["op"] == "conv"]
    assert sorted(plan["assignment"]) == sorted(convs)


def test_plan_under_an_arena_cap_and_one_below_the_least(client: httpx.Client) -> None:
    free = client.post("/v1/plan", json={"network": "googlenet", "measure": False}).json()
    cap = free["predicted"]["arena_bytes"]      # achievable, and below im2col's
    assert cap < free["baselines"]["im2col"]["arena_bytes"]
    response = client.post("/v1/plan", json={"network": "googlenet", "arena_cap": cap,
                                             "memory_cap": "1GiB", "measure": False})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["arena_cap_bytes"] == cap >= plan["predicted"]["arena_bytes"]
    response = client.post("/v1/plan", json={"network": "googlenet", "arena_cap": "1kB",
                                             "measure": False})
    assert response.status_code == 422 and "smallest achievable arena" in response.text


def test_plan_a_description(client: httpx.Client) -> None:
    response = client.post("/v1/plan", json={"network": TINY, "memory_cap": 10**6,
                                             "measure": False, "solver": "highs"})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["network"] == "tiny" and plan["solver"]["name"] == "highs"
    assert [layer["name"] for layer in plan["layers"]] == [x["name"] for x in TINY["layers"]]
    assert all(layer["candidates"] for layer in plan["layers"])


def test_run_a_plan_document_and_an_assignment(client: httpx.Client) -> None:
    plan = client.post("/v1/plan", json={"network": TINY, "measure": False}).json()
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    expected = reference_outputs(Network.from_description(TINY), {"x": x})["fc"]
    for given in (plan, {"assignment": plan["assignment"], "layouts": plan["layouts"]}):
        response = client.post("/v1/run", json={"network": TINY, "plan": given,
                                                "input": _npy(x), "repeat": 2})
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["output_format"] == "npy" and report["output_shapes"] == {"fc": [1, 4]}
        y = np.load(io.BytesIO(base64.b64decode(report["output"])))
        np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=1e-4, atol=1e-5)
        assert report["within_prediction"]
        assert 0 < report["measured_peak_bytes"] <= report["predicted_peak_bytes"]
        convs = {layer["name"]: layer["algorithm"] for layer in report["layers"]
                 if layer["op"] == "conv"}
        assert convs == plan["assignment"]
        assert report["plan"] is None


def test_run_plans_first_under_a_cap_with_a_seeded_input(client: httpx.Client) -> None:
    response = client.post("/v1/run", json={"network": TINY, "memory_cap": "1MiB",
                                            "measure": False, "seed": 7, "check": True})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["plan"]["memory_cap_bytes"] == 2**20
    assert report["predicted_peak_bytes"] <= 2**20 and report["within_prediction"]
    assert report["max_abs_error"] < 1e-4


def test_plan_an_uploaded_onnx_file(client: httpx.Client) -> None:
    data = (DATA / "torch_resnetish.onnx").read_bytes()
    response = client.post("/v1/plan/onnx", files={"file": ("resnetish.onnx", data)},
                           data={"measure": "false", "memory_cap": "4MiB", "threads": "1"})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["costs"] == "analytic" and plan["memory_cap_bytes"] == 4 * 2**20
    assert {layer["op"] for layer in plan["layers"]} >= {"conv", "add", "gemm"}


def test_pareto_frontier(client: httpx.Client) -> None:
    response = client.post("/v1/pareto", json={"network": "googlenet", "measure": False,
                                               "points": 4})
    assert response.status_code == 200, response.text
    frontier = response.json()
    points = frontier["points"]
    assert points and frontier["costs"] == "analytic"
    for a, b in itertools.pairwise(points):
        assert a["peak_bytes"] < b["peak_bytes"] and a["time_s"] > b["time_s"]
    assert set(frontier["baselines"]) == {"fastest", "im2col", "greedy", "lowest_memory"}


def test_profile_job_runs_to_completion_and_warms_the_store(client: httpx.Client,
                                                            warm_tiny: dict) -> None:
    result = warm_tiny["result"]
    assert result["network"] == "tiny" and result["threads"] == 1
    assert result["requested"] == result["measured"] + result["cached"] > 0
    assert warm_tiny["progress"]["done"] == warm_tiny["progress"]["total"]
    assert warm_tiny["finished_at"] >= warm_tiny["started_at"] >= warm_tiny["created_at"]
    again = client.post("/v1/profile", json={"network": TINY, "threads": 1, "budget_s": 0.01})
    job = _wait_job(client, again.json()["url"])
    assert job["status"] == "succeeded"
    assert job["result"]["measured"] == 0 and job["result"]["cached"] == result["requested"]
    plan = client.post("/v1/plan", json={"network": TINY, "threads": 1, "measure": True})
    assert plan.status_code == 200 and plan.json()["costs"] == "measured"


# -- bad input through every door ----------------------------------------------------------------
def _chunks(total: int):
    sent = 0
    while sent < total:
        yield b" " * 65536
        sent += 65536


def _layers(n: int) -> dict:
    layers = [{"name": f"r{i}", "op": "relu", "inputs": [f"r{i - 1}" if i else "x"]}
              for i in range(n)]
    return {"inputs": [{"name": "x", "shape": [1, 4]}], "layers": layers}


def _conv(**changes: object) -> dict:
    layer = {"name": "c", "op": "conv", "inputs": ["x"], "out_channels": 4, "kernel": 3}
    return {"inputs": [{"name": "x", "shape": [1, 3, 8, 8]}], "layers": [{**layer, **changes}]}


def _huge_npy() -> str:
    """An .npy header declaring 40 GB (and no data): refused before NumPy allocates it."""
    buffer = io.BytesIO()
    buffer.write(np.lib.format.magic(1, 0))
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100000, 100000)})
    return base64.b64encode(buffer.getvalue()).decode()


ONNX = (DATA / "torch_resnetish.onnx").read_bytes()
JSON = {"content-type": "application/json"}

BAD_REQUESTS = {
    "oversize body (Content-Length)": (
        "/v1/plan", {"content": b"{" + b" " * (2 << 20) + b"}", "headers": JSON}, 413),
    "oversize body (chunked, no Content-Length)": (
        "/v1/plan", {"content": _chunks(2 << 20), "headers": JSON}, 413),
    "oversize upload": ("/v1/plan/onnx", {"files": {"file": ("m.onnx", b"\0" * (2 << 20))}},
                        413),
    "truncated JSON": ("/v1/plan", {"content": b'{"network": "alexnet", "memo',
                                    "headers": JSON}, 422),
    "JSON that is not an object": ("/v1/plan", {"json": [1, 2]}, 422),
    "text body": ("/v1/plan", {"content": b"alexnet", "headers": {"content-type": "text/plain"}},
                  415),
    "form body to a JSON door": ("/v1/run", {"data": {"network": "alexnet"}}, 415),
    "JSON to the upload door": ("/v1/plan/onnx", {"json": {"network": "alexnet"}}, 422),
    "upload without a file": ("/v1/plan/onnx", {"data": {"measure": "false"}}, 422),
    "invalid ONNX bytes": ("/v1/plan/onnx", {"files": {"file": ("m.onnx", b"not onnx" * 9)},
                                             "data": {"measure": "false"}}, 400),
    "truncated ONNX file": ("/v1/plan/onnx", {"files": {"file": ("m.onnx", ONNX[:2000])},
                                              "data": {"measure": "false"}}, 400),
    "cap -1": ("/v1/plan", {"json": {"network": "alexnet", "memory_cap": "-1",
                                     "measure": False}}, 400),
    "cap -1 (int)": ("/v1/plan", {"json": {"network": "alexnet", "memory_cap": -1,
                                           "measure": False}}, 400),
    "cap 1 parsec": ("/v1/plan", {"json": {"network": "alexnet", "memory_cap": "1 parsec",
                                           "measure": False}}, 400),
    "cap 1.5 (a float)": ("/v1/plan", {"json": {"network": "alexnet", "memory_cap": 1.5}}, 422),
    "cap in the form": ("/v1/plan/onnx", {"files": {"file": ("m.onnx", ONNX)},
                                          "data": {"memory_cap": "lots", "measure": "false"}},
                        400),
    "unknown built-in": ("/v1/plan", {"json": {"network": "alexnet2", "measure": False}}, 404),
    "a server path is not a network": ("/v1/plan", {"json": {"network": "/etc/passwd"}}, 404),
    "unknown built-in (pareto)": ("/v1/pareto", {"json": {"network": "nope"}}, 404),
    "unknown built-in (profile)": ("/v1/profile", {"json": {"network": "nope"}}, 404),
    "unknown solver": ("/v1/plan", {"json": {"network": "alexnet", "solver": "gurobi"}}, 422),
    "too many threads": ("/v1/plan", {"json": {"network": "alexnet", "threads": 4096,
                                               "measure": False}}, 422),
    "too many threads (run)": ("/v1/run", {"json": {"network": TINY, "threads": 4096}}, 422),
    "too many layers": ("/v1/plan", {"json": {"network": _layers(201), "measure": False}}, 422),
    "a huge input tensor": ("/v1/plan", {"json": {"network": {
        "inputs": [{"name": "x", "shape": [1, 3, 100000, 100000]}],
        "layers": [{"name": "r", "op": "relu", "inputs": ["x"]}]}, "measure": False}}, 422),
    "huge weights": ("/v1/plan", {"json": {"network": _conv(out_channels=10**8),
                                           "measure": False}}, 422),
    "unknown operator": ("/v1/plan", {"json": {"network": _conv(op="fft"), "measure": False}},
                         400),
    "a cycle": ("/v1/plan", {"json": {"network": {
        "inputs": [{"name": "x", "shape": [1, 4]}],
        "layers": [{"name": "a", "op": "relu", "inputs": ["b"]},
                   {"name": "b", "op": "relu", "inputs": ["a"]}]}, "measure": False}}, 400),
    "a shape mismatch": ("/v1/plan", {"json": {"network": _conv(kernel=99),
                                               "measure": False}}, 400),
    "a description missing layers": ("/v1/plan", {"json": {"network": {
        "inputs": [{"name": "x", "shape": [1, 4]}]}}}, 422),
    "run: input not base64": ("/v1/run", {"json": {"network": TINY, "input": "%%%",
                                                   "measure": False}}, 400),
    "run: input not .npy": ("/v1/run", {"json": {"network": TINY, "measure": False,
                                                 "input": base64.b64encode(b"xyz").decode()}},
                            400),
    "run: input of the wrong shape": ("/v1/run", {"json": {
        "network": TINY, "measure": False, "input": _npy(np.zeros((1, 3, 8, 8), np.float32))}},
        400),
    "run: a huge declared input": ("/v1/run", {"json": {"network": TINY, "measure": False,
                                                        "input": _huge_npy()}}, 400),
    "run: a plan naming unknown layers": ("/v1/run", {"json": {
        "network": TINY, "plan": {"assignment": {"nope": "im2col"}}}}, 400),
    "run: a plan with an unknown algorithm": ("/v1/run", {"json": {
        "network": TINY, "plan": {"assignment": {"conv1": "fft", "conv2": "im2col"}}}}, 400),
    "run: not a plan": ("/v1/run", {"json": {"network": TINY, "plan": {"layouts": {}}}}, 422),
    "run: unknown algorithm": ("/v1/run", {"json": {"network": TINY, "algorithm": "fft"}}, 400),
    "run: an infeasible cap": ("/v1/run", {"json": {"network": TINY, "memory_cap": 1,
                                                    "measure": False}}, 422),
    "profile: a bad budget": ("/v1/profile", {"json": {"network": TINY, "budget_s": -1}}, 422),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_json_4xx(client: httpx.Client, case: str) -> None:
    path, kwargs, status = BAD_REQUESTS[case]
    assert_json_error(client.post(path, **kwargs), status)


def test_an_infeasible_cap_states_the_smallest_achievable_peak(client: httpx.Client) -> None:
    response = client.post("/v1/plan", json={"network": "alexnet", "memory_cap": 1,
                                             "measure": False})
    body = assert_json_error(response, 422)
    assert body["error"] == "planning_failed"
    assert "smallest achievable peak is" in body["detail"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/jobs/0123456789abcdef", 404), ("GET", "/v1/jobs/..%2F..%2Fetc", 404),
    ("GET", "/v2/plan", 404), ("GET", "/v1/plan", 405), ("DELETE", "/healthz", 405)])
def test_unknown_jobs_routes_and_methods(client: httpx.Client, method: str, path: str,
                                         status: int) -> None:
    assert_json_error(client.request(method, path), status)


def test_the_server_keeps_serving_after_bad_input(client: httpx.Client, server: Server
                                                  ) -> None:
    for case in ("truncated JSON", "invalid ONNX bytes", "huge weights"):
        path, kwargs, _ = BAD_REQUESTS[case]
        client.post(path, **kwargs)
    assert client.get("/healthz").json()["status"] == "ok"
    assert server.process.poll() is None
    assert "Traceback" not in server.log_text()


# -- load ----------------------------------------------------------------------------------------
def test_load_200_plans_16_at_a_time(server: Server, warm_tiny: dict) -> None:
    """Zero errors with a warm cost store (TINY was profiled at one thread)."""
    body = {"network": TINY, "threads": 1, "memory_cap": "1MiB", "measure": True}

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
            gate = asyncio.Semaphore(16)

            async def one() -> int:
                async with gate:
                    response = await c.post("/v1/plan", json=body)
                    assert response.json()["costs"] == "measured"
                    return response.status_code

            return await asyncio.gather(*(one() for _ in range(200)))

    started = time.monotonic()
    statuses = asyncio.run(main())
    assert statuses == [200] * 200
    assert time.monotonic() - started < 90
