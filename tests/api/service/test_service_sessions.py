"""/v1/run keeps a few `Session`s in each worker (CONVPLAN_SESSION_CACHE): a repeated run of
the same network, plan, shapes and threads is neither loaded nor prepared again, gives the same
output, and still measures within its prediction; anything else gets a session of its own, the
cache stays bounded, bad input is still refused, and a request that needs the room the cache
holds gets it. The task functions run here as a worker runs them; one test goes through a real
server."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from convplan.api.service import work
from convplan.settings import ServiceSettings
from tests.support.cli import CORES
from tests.support.service_server import TINY, Server, running_server


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    work.SESSIONS.clear()
    yield
    work.SESSIONS.clear()


def settings(size: int = 2) -> ServiceSettings:
    return ServiceSettings.from_env({}, session_cache=size)


def output(answer: dict) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(answer["output"])))


def npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def source(network: str | dict, shapes: work.InputShapes | None = None) -> work.Source:
    """What `work.source` makes of a request's network (a description as plain data)."""
    return ("builtin", network, shapes) if isinstance(network, str) else \
        ("description", dict(network), shapes)


def run(network: str | dict, body: dict, size: int = 2) -> dict:
    return work.run_task(source(network), {"threads": 1, **body}, settings(size))


def test_a_repeated_run_reuses_its_session() -> None:
    plan = {"assignment": {"conv1": "kn2row", "conv2": "im2col"}}
    first = run(TINY, {"plan": plan, "repeat": 2})
    [session] = work.SESSIONS._sessions.values()
    arena, prepared = session.executor.arena, dict(session.executor.prepared)
    again = run(TINY, {"plan": plan})
    other = run(TINY, {"plan": plan, "seed": 1})
    assert (first["session_reused"], again["session_reused"], other["session_reused"]) == \
        (False, True, True)
    assert len(work.SESSIONS) == 1
    assert session.executor.arena is arena
    assert all(session.executor.prepared[k] is p for k, p in prepared.items())
    np.testing.assert_array_equal(output(first), output(again))
    assert not np.array_equal(output(first), output(other))
    same = ("network", "predicted_peak_bytes", "weights_released", "arena_bytes")
    for answer in (first, again, other):
        assert answer["within_prediction"]
        assert 0 < answer["measured_peak_bytes"] <= answer["predicted_peak_bytes"]
        assert {layer["name"]: layer["algorithm"] for layer in answer["layers"]
                if layer["op"] == "conv"} == plan["assignment"]
        assert {k: answer[k] for k in same} == {k: first[k] for k in same}


def test_a_different_request_gets_a_session_of_its_own_and_the_cache_stays_bounded() -> None:
    model = "onnx:squeezenet"
    assert not run(model, {"algorithm": "im2col"})["session_reused"]
    kept = next(iter(work.SESSIONS._sessions.values()))
    others = [({"algorithm": "kn2row"}, model),                      # another algorithm
              ({"algorithm": "im2col", "batch": 2}, model),          # other shapes
              ({"algorithm": "im2col"}, {**TINY, "seed": 1})]        # another description
    if CORES > 1:
        others.append(({"algorithm": "im2col", "threads": 2}, model))
    for body, network in others:
        shapes = work.InputShapes(batch=body.pop("batch")) if "batch" in body else None
        answer = work.run_task(source(network, shapes), {"threads": 1, **body},
                               settings(2))
        assert not answer["session_reused"], body
        assert len(work.SESSIONS) <= 2
    assert kept.closed                              # the least recently used went first
    assert run({**TINY, "seed": 1}, {"algorithm": "im2col"})["session_reused"]


def test_no_cache_and_a_check_load_for_the_request_alone() -> None:
    assert not run(TINY, {"algorithm": "im2col"}, size=0)["session_reused"]
    assert not run(TINY, {"algorithm": "im2col"}, size=0)["session_reused"]
    assert len(work.SESSIONS) == 0
    run(TINY, {"algorithm": "im2col"})
    checked = run(TINY, {"algorithm": "im2col", "check": True})
    assert not checked["session_reused"] and checked["max_abs_error"] < 1e-4
    assert run(TINY, {"algorithm": "im2col"})["session_reused"]      # left as it was


def test_bad_input_to_a_cached_session_is_refused_and_it_still_serves() -> None:
    run(TINY, {"algorithm": "im2col"})
    for bad, words in ((npy(np.zeros((1, 3, 8, 8), np.float32)), "has shape [1, 3, 8, 8]"),
                       ("%%%", "not base64"),
                       (base64.b64encode(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', "
                                         b"'fortran_order': False, 'shape': (1, 3, 16, 16), }"
                                         + b" " * 50 + b"\n").decode(), "declares")):
        with pytest.raises(work.ServiceError) as refused:
            run(TINY, {"algorithm": "im2col", "input": bad})
        assert refused.value.status == 400 and refused.value.code == "invalid_input"
        assert words in refused.value.message
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    answer = run(TINY, {"algorithm": "im2col", "input": npy(x)})
    assert answer["session_reused"]
    fresh = run(TINY, {"algorithm": "im2col", "input": npy(x)}, size=0)
    np.testing.assert_array_equal(output(answer), output(fresh))


def test_a_plan_for_another_network_is_refused_before_anything_is_cached() -> None:
    with pytest.raises(work.ServiceError) as refused:
        run(TINY, {"plan": {"network": "alexnet", "assignment": {"conv1": "im2col",
                                                                  "conv2": "im2col"}}})
    assert refused.value.code == "invalid_plan" and len(work.SESSIONS) == 0


#: In a fresh process under an address-space limit that holds one AlexNet session and a bit
#: more, not two: the second request gets the room of the first, which the cache closes.
_CROWDED = """
import json
from convplan.api.service import work
from convplan.api.service.workers import limit_memory
from convplan.settings import ServiceSettings

def size():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))

settings = ServiceSettings.from_env({}, session_cache=2)
work.run_task(work.source('onnx:squeezenet'), {'algorithm': 'im2col', 'threads': 1}, settings)
work.SESSIONS.clear()
base = size()
work.run_task(work.source('alexnet'), {'algorithm': 'im2col', 'threads': 1}, settings)
held = size() - base
limit_memory(size() + int(0.8 * held))
second = work.run_task(work.source('alexnet'), {'algorithm': 'kn2row', 'threads': 1}, settings)
[(key, session)] = work.SESSIONS._sessions.items()
print(json.dumps({"held": held, "within": second["within_prediction"],
                  "kept": key[1], "reused": second["session_reused"]}))
"""


def test_a_request_that_needs_the_caches_room_gets_it() -> None:
    done = subprocess.run([sys.executable, "-c", _CROWDED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["held"] > 200 * 2**20                 # AlexNet's weights, held
    assert result["kept"] == ["algorithm", "kn2row"] and not result["reused"]
    assert result["within"]


# -- through a real server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("sessions"),
                        {"CONVPLAN_CONCURRENCY": "2", "CONVPLAN_SESSION_CACHE": "1"}) as s:
        yield s


def test_the_server_reuses_sessions_in_its_workers(server: Server) -> None:
    """Each worker keeps its own: with two workers, the third identical run at the latest
    finds one."""
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    body = {"network": TINY, "algorithm": "kn2row", "threads": 1, "input": npy(x)}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answers = [client.post("/v1/run", json=body) for _ in range(3)]
        bad = client.post("/v1/run", json={**body, "input": npy(x[:, :2])})
    assert [a.status_code for a in answers] == [200] * 3, answers[-1].text
    reports = [a.json() for a in answers]
    assert any(r["session_reused"] for r in reports) and not reports[0]["session_reused"]
    for report in reports:
        np.testing.assert_array_equal(output(report), output(reports[0]))
        assert report["within_prediction"]
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_input"
