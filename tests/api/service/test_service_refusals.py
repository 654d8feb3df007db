"""Follow-ups of the service's hardening, each against a real server: a plan made for another
network is refused by /v1/run; a JSON body has a limit derived from the layer limit, checked
before parsing (ONNX uploads keep CONVPLAN_MAX_BODY); a 422 stays small whatever the body;
/healthz and profile results answer what their models say; a damaged cost store is the
server's 503, not the client's 400; a plan whose costs are all imported says so."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from convplan.api.service.schemas import Health, ProfileResult
from convplan.settings import JSON_BYTES_PER_LAYER, MiB, ServiceSettings, SettingsError
from tests.support.service_server import TINY, Server, assert_json_error, running_server

#: 50 layers: a JSON body may have 50 * 4 KiB + 1 MiB; an upload 4 MiB.
LAYERS = 50
JSON_LIMIT = LAYERS * JSON_BYTES_PER_LAYER + MiB
LIMITS = {"CONVPLAN_MAX_LAYERS": str(LAYERS), "CONVPLAN_MAX_BODY": "4MiB",
          "CONVPLAN_CONCURRENCY": "2"}
JSON = {"content-type": "application/json"}
PLAN = {"network": TINY, "measure": False, "threads": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("followups"), LIMITS) as s:
        yield s


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _renamed(name: str) -> dict:
    return {**TINY, "name": name}


def _wide_network(layers: int) -> dict:
    """A chain of ``layers`` relus: about 60 bytes of JSON each."""
    chain = [{"name": f"r{i}", "op": "relu", "inputs": [f"r{i - 1}" if i else "x"]}
             for i in range(layers)]
    return {"name": "wide", "inputs": [{"name": "x", "shape": [1, 3, 8, 8]}], "layers": chain}


def _wide_network_json(layers: int) -> bytes:
    """The body of a plan request for `_wide_network` (``layers``), written as text."""
    chain = ",".join(f'{{"name":"r{i}","op":"relu","inputs":["{f"r{i - 1}" if i else "x"}"]}}'
                     for i in range(layers))
    return (f'{{"network":{{"name":"wide","inputs":[{{"name":"x","shape":[1,3,8,8]}}],'
            f'"layers":[{chain}]}},"measure":false}}').encode()


# -- 1. a plan for another network --------------------------------------------------------------
def test_run_refuses_a_plan_made_for_another_network(client: httpx.Client) -> None:
    made = client.post("/v1/plan", json=PLAN)
    assert made.status_code == 200, made.text
    plan = made.json()
    assert plan["network"] == "tiny"
    # the same layers under another name: only the plan's `network` tells them apart
    refused = client.post("/v1/run", json={"network": _renamed("other"), "plan": plan})
    body = assert_json_error(refused, 400)
    assert body["error"] == "invalid_plan"
    assert "tiny" in body["detail"] and "other" in body["detail"], body
    # a built-in network: refused for its name, before the layers are compared
    refused = client.post("/v1/run", json={"network": "alexnet", "plan": plan})
    body = assert_json_error(refused, 400)
    assert "made for network" in body["detail"] and "alexnet" in body["detail"], body
    # the network it was made for runs it; so does a bare assignment (no network named)
    ran = client.post("/v1/run", json={"network": TINY, "plan": plan})
    assert ran.status_code == 200, ran.text
    assert ran.json()["network"] == "tiny" and ran.json()["within_prediction"] is True
    bare = {"assignment": plan["assignment"], "layouts": plan["layouts"]}
    ran = client.post("/v1/run", json={"network": _renamed("other"), "plan": bare})
    assert ran.status_code == 200, ran.text


# -- 2. the JSON body limit ---------------------------------------------------------------------
def test_settings_derive_the_json_body_limit_from_the_layer_limit() -> None:
    def limit(**env: str) -> int:
        return ServiceSettings.from_env({f"CONVPLAN_{k}": v for k, v in env.items()}
                                        ).json_body_limit

    assert limit() == 1000 * 4096 + MiB
    assert limit(MAX_LAYERS="10") == 10 * 4096 + MiB
    assert limit(MAX_JSON_BODY="3MiB") == 3 * MiB
    assert limit(MAX_BODY="1MiB") == MiB          # never above the body limit when derived
    with pytest.raises(SettingsError, match="CONVPLAN_MAX_JSON_BODY"):
        limit(MAX_JSON_BODY="big")


def test_a_json_body_over_its_limit_is_refused_before_parsing(server: Server,
                                                              client: httpx.Client) -> None:
    # a million layers (49 MiB): 413 from Content-Length, at once, and the server stays small
    huge = _wide_network_json(10**6)
    assert len(huge) > 49 * MiB
    rss_before = _rss_mib(server)
    started = time.monotonic()
    try:
        response = client.post("/v1/plan", content=huge, headers=JSON)
    except httpx.TransportError:  # the server may answer and close before all of it is sent
        response = None
    elapsed = time.monotonic() - started
    if response is not None:
        body = assert_json_error(response, 413)
        assert body["error"] == "body_too_large"
        assert "CONVPLAN_MAX_JSON_BODY" in body["detail"] and str(JSON_LIMIT) in body["detail"]
    assert elapsed < 5, elapsed
    assert _rss_mib(server) < rss_before + 50
    # without Content-Length (chunked): counted while it arrives
    body = assert_json_error(client.post("/v1/plan", content=_chunks(JSON_LIMIT + 1),
                                         headers=JSON), 413)
    assert "CONVPLAN_MAX_JSON_BODY" in body["detail"]
    # no Content-Type is read as JSON, so it has the JSON limit too
    body = assert_json_error(client.post("/v1/run", content=b" " * (JSON_LIMIT + 1)), 413)
    assert "CONVPLAN_MAX_JSON_BODY" in body["detail"]
    # a network at the layer limit fits in its body limit and is planned
    fits = client.post("/v1/plan", json={"network": _wide_network(LAYERS), "measure": False})
    assert fits.status_code == 200, fits.text
    # one layer more is the layer limit's refusal (422), not the body's
    over = client.post("/v1/plan", json={"network": _wide_network(LAYERS + 1),
                                         "measure": False})
    assert assert_json_error(over, 422)["error"] == "network_too_large"


def test_an_onnx_upload_keeps_the_larger_body_limit(client: httpx.Client) -> None:
    junk = b"\x00" * (2 * JSON_LIMIT)       # over the JSON limit, under CONVPLAN_MAX_BODY
    response = client.post("/v1/plan/onnx", files={"file": ("m.onnx", junk)},
                           data={"measure": "false"})
    body = assert_json_error(response, 400, 422)
    assert body["error"] != "body_too_large", body
    response = client.post("/v1/plan/onnx", files={"file": ("m.onnx", b"\x00" * (5 * MiB))},
                           data={"measure": "false"})
    body = assert_json_error(response, 413)
    assert "CONVPLAN_MAX_BODY" in body["detail"] and "JSON" not in body["detail"]


def _chunks(total: int, size: int = 64 << 10) -> Iterator[bytes]:
    yield b"{"
    sent = 1
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def _rss_mib(server: Server) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- 3. small validation errors -----------------------------------------------------------------
def test_a_422_stays_small_for_a_huge_unknown_key(client: httpx.Client) -> None:
    key = "k" * 600_000
    response = client.post("/v1/plan", json={**PLAN, key: 1})
    body = assert_json_error(response, 422)
    assert len(response.content) < 4096, len(response.content)
    assert body["errors"], body
    for problem in body["errors"]:
        assert all(len(str(part)) <= 64 for part in problem["loc"]), problem
        assert len(problem["msg"]) <= 256
    assert any(str(part).startswith("kkkk") and str(part).endswith("...")
               for problem in body["errors"] for part in problem["loc"]), body


def test_a_422_lists_ten_problems_and_counts_the_rest(client: httpx.Client) -> None:
    extra = {f"unknown_{i}": i for i in range(100)}
    response = client.post("/v1/plan", json={**PLAN, **extra})
    body = assert_json_error(response, 422)
    assert len(body["errors"]) == 10
    assert body["errors"][0]["loc"] == ["body", "unknown_0"]
    assert "and 95 more" in body["detail"], body["detail"]
    assert len(response.content) < 4096


# -- 4. what /healthz and a profile job answer is what their models say ------------------------
def test_health_and_its_schema_tell_the_truth(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    health = Health.model_validate(response.json())
    assert health.status == "ok" and health.workers.idle + health.workers.busy >= 1
    assert health.error is None and health.detail is None and health.replaced == 0
    schema = client.get("/openapi.json").json()
    model = schema["components"]["schemas"]["Health"]
    assert set(model["properties"]["status"]["enum"]) == {"ok", "unhealthy"}
    assert {"workers", "replaced", "error", "detail"} <= set(model["properties"])
    unhealthy = schema["paths"]["/healthz"]["get"]["responses"]["503"]
    assert unhealthy["content"]["application/json"]["schema"]["$ref"].endswith("/Health")
    costs = schema["components"]["schemas"]["Plan"]["properties"]["costs"]
    assert "imported" in json.dumps(costs)
    assert "unmeasured" in schema["components"]["schemas"]["ProfileResult"]["properties"]


def test_a_profile_job_reports_what_it_left_unmeasured(client: httpx.Client) -> None:
    started = client.post("/v1/profile", json={"network": TINY, "threads": 1,
                                               "budget_s": 0.01})
    assert started.status_code == 202, started.text
    job = _finished(client, started.json()["url"])
    assert job["status"] == "succeeded", job
    result = ProfileResult.model_validate(job["result"])
    assert "unmeasured" in job["result"] and result.unmeasured == 0    # (no deadline hit)
    assert result.measured > 0


def _finished(client: httpx.Client, url: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(url).json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


# -- 5. and 6. the cost store: damaged is the server's 503; all imported says so ---------------
@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("store")
    db = tmp / "store" / "costs.sqlite"
    db.parent.mkdir()
    with running_server(tmp, {"CONVPLAN_DB": str(db), "CONVPLAN_CONCURRENCY": "1"}) as s:
        yield s, db


def _assert_store_refused(client: httpx.Client, db: Path) -> None:
    for path, body in (("/v1/plan", PLAN), ("/v1/pareto", {**PLAN, "points": 2}),
                       ("/v1/run", {"network": TINY, "threads": 1, "measure": False})):
        error = assert_json_error(client.post(path, json=body), 503)
        assert error["error"] == "cost_store", (path, error)
        assert str(db) in error["detail"], error
    # a profile job is accepted (the network is fine) and fails for the store
    started = client.post("/v1/profile", json={"network": TINY, "threads": 1,
                                               "budget_s": 0.01})
    assert started.status_code == 202, started.text
    job = _finished(client, started.json()["url"])
    assert job["status"] == "failed" and job["error"]["error"] == "cost_store", job
    # what needs no store is served; the workers are fine, and /healthz says so
    assert client.get("/v1/algorithms").status_code == 200
    ran = client.post("/v1/run", json={"network": TINY, "algorithm": "im2col", "threads": 1})
    assert ran.status_code == 200, ran.text
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok" and health.json()["replaced"] == 0


def test_a_damaged_cost_store_is_the_servers_503_not_a_bad_request(
        store_server: tuple[Server, Path]) -> None:
    server, db = store_server
    with server.client() as client:
        db.write_text("these are not the costs you are looking for\n")
        _assert_store_refused(client, db)
        db.unlink()
        # a valid store, measured by the server; then 512 bytes in its middle overwritten
        started = client.post("/v1/profile", json={"network": TINY, "threads": 1,
                                                   "budget_s": 0.01})
        assert _finished(client, started.json()["url"])["status"] == "succeeded"
        planned = client.post("/v1/plan", json=PLAN)
        assert planned.status_code == 200 and planned.json()["costs"] == "measured"
        size = db.stat().st_size
        assert size >= 4096, size
        with db.open("r+b") as handle:
            handle.seek(size // 2 - 256)
            handle.write(b"\xa5" * 512)
        _assert_store_refused(client, db)
        db.unlink()         # the operator moves it away: the server plans again
        assert client.post("/v1/plan", json=PLAN).status_code == 200


def test_a_plan_whose_costs_are_all_imported_says_imported(
        store_server: tuple[Server, Path]) -> None:
    from convplan.profiles.store import CostStore

    server, db = store_server
    export = db.parent / "export.json"
    with server.client() as client:
        db.unlink(missing_ok=True)
        started = client.post("/v1/profile", json={"network": TINY, "threads": 1,
                                                   "budget_s": 0.01})
        assert _finished(client, started.json()["url"])["status"] == "succeeded"
        with CostStore(db) as measured:
            assert measured.export(export) > 0
        db.unlink()
        with CostStore(db) as fresh:
            fresh.import_(export)
        plan = client.post("/v1/plan", json=PLAN)
        assert plan.status_code == 200, plan.text
        assert plan.json()["costs"] == "imported"
        assert {c["source"] for layer in plan.json()["layers"] for c in layer["candidates"]} \
            == {"imported"}
        frontier = client.post("/v1/pareto", json={**PLAN, "points": 2})
        assert frontier.status_code == 200, frontier.text
        assert frontier.json()["costs"] == "imported"
        # another first convolution: its costs are estimated, the rest imported: a mix
        layers = [{**TINY["layers"][0], "kernel": 5, "padding": 2}, *TINY["layers"][1:]]
        other = {**PLAN, "network": {**TINY, "layers": layers}}
        plan = client.post("/v1/plan", json=other)
        assert plan.status_code == 200 and plan.json()["costs"] == "mixed", plan.text
        frontier = client.post("/v1/pareto", json={**other, "points": 2})
        assert frontier.status_code == 200 and frontier.json()["costs"] == "mixed"
