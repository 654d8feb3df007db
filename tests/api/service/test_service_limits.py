"""The service's manners under pressure and behind a key: a server with one heavy-request slot
and no waiting room answers the second of two simultaneous heavy requests with 503 and
Retry-After (and serves again afterwards); with CONVPLAN_API_KEY set, /v1 needs X-API-Key
while /healthz and /docs stay open."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from convplan.settings import ServiceSettings, SettingsError
from tests.support.service_server import TINY, Server, assert_json_error, running_server

KEY = "test-key-0123456789"
RESTRICTED = {"CONVPLAN_CONCURRENCY": "1", "CONVPLAN_QUEUE": "0",
              "CONVPLAN_MAX_PENDING_JOBS": "1", "CONVPLAN_API_KEY": KEY}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("restricted"), RESTRICTED) as s:
        yield s


def test_requests_without_the_key_are_refused(server: Server) -> None:
    with server.client() as anonymous:
        for path in ("/v1/networks", "/v1/algorithms", "/v1/jobs/x"):
            body = assert_json_error(anonymous.get(path), 401)
            assert body["error"] == "unauthorized"
        assert_json_error(anonymous.post("/v1/plan", json={"network": "alexnet"}), 401)
        assert_json_error(anonymous.get("/v1/networks", headers={"X-API-Key": "wrong"}), 401)
        # the key is checked before the body is validated or its content type looked at
        assert_json_error(anonymous.post("/v1/run", json={"no such field": 1}), 401)
        assert_json_error(anonymous.post("/v1/pareto", content=b"x",
                                         headers={"content-type": "text/plain"}), 401)
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/docs").status_code == 200
        schema = anonymous.get("/openapi.json").json()
        assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_requests_with_the_key_are_served(server: Server) -> None:
    with server.client(headers={"X-API-Key": KEY}) as client:
        assert client.get("/v1/networks").status_code == 200
        response = client.post("/v1/plan", json={"network": TINY, "measure": False})
        assert response.status_code == 200, response.text


def test_a_saturated_server_answers_503_with_retry_after(server: Server) -> None:
    slow = {"network": "alexnet", "algorithm": "im2col", "repeat": 5, "threads": 1}

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     headers={"X-API-Key": KEY}) as c:
            first = asyncio.create_task(c.post("/v1/run", json=slow))
            deadline = time.monotonic() + 30
            while (await c.get("/healthz")).json()["busy"] == 0:   # the first holds the slot
                assert time.monotonic() < deadline and not first.done()
                await asyncio.sleep(0.02)
            second = await c.post("/v1/plan", json={"network": TINY, "measure": False})
            return await first, second

    first, second = asyncio.run(main())
    assert first.status_code == 200, first.text
    body = assert_json_error(second, 503)
    assert body["error"] == "busy"
    assert int(second.headers["retry-after"]) >= 1
    with server.client(headers={"X-API-Key": KEY}) as client:   # the slot is free again
        assert client.post("/v1/plan", json={"network": TINY, "measure": False}
                           ).status_code == 200


def test_the_job_table_refuses_beyond_its_pending_bound(server: Server) -> None:
    with server.client(headers={"X-API-Key": KEY}) as client:
        body = {"network": TINY, "threads": 1, "budget_s": 0.01}
        first = client.post("/v1/profile", json=body)
        assert first.status_code == 202, first.text
        second = client.post("/v1/profile", json=body)
        if client.get(first.json()["url"]).json()["status"] in ("queued", "running"):
            assert_json_error(second, 503)
            assert "retry-after" in second.headers
        deadline = time.monotonic() + 60
        while client.get(first.json()["url"]).json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_settings_come_from_the_environment_and_bad_ones_are_named() -> None:
    settings = ServiceSettings.from_env({"CONVPLAN_MAX_BODY": "2MiB", "CONVPLAN_CONCURRENCY": "3",
                                         "CONVPLAN_API_KEY": "s3cr3t-v4lue"})
    assert settings.max_body == 2 * 2**20 and settings.concurrency == 3
    assert settings.key == "s3cr3t-v4lue" and "s3cr3t" not in repr(settings)
    assert ServiceSettings.from_env({}).max_body == 64 * 2**20
    for name, value in (("CONVPLAN_MAX_BODY", "lots"), ("CONVPLAN_CONCURRENCY", "0"),
                        ("CONVPLAN_QUEUE_TIMEOUT", "soon")):
        with pytest.raises(SettingsError, match=name):
            ServiceSettings.from_env({name: value})


@pytest.mark.parametrize(("host", "key", "warned"), [
    ("0.0.0.0", None, True), ("example.org", None, True), ("0.0.0.0", "k", False),
    ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False)])
def test_serve_warns_on_a_public_host_without_a_key(monkeypatch: pytest.MonkeyPatch, host: str,
                                                    key: str | None, warned: bool) -> None:
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from convplan.api.cli.serve import register

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append((a, k)))
    if key is None:
        monkeypatch.delenv("CONVPLAN_API_KEY", raising=False)
    else:
        monkeypatch.setenv("CONVPLAN_API_KEY", key)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["--host", host, "--port", "8123", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert ("without an API key" in result.output) is warned
    assert calls == [(("convplan.api.service.app:create_app",), {
        "factory": True, "host": host, "port": 8123, "workers": 2, "log_level": "info",
        "timeout_graceful_shutdown": 5})]


def test_importing_the_app_module_reads_no_settings() -> None:
    """uvicorn makes the app (`create_app`, factory=True): importing the module builds nothing,
    so a wrong variable is reported by `convplan serve` in words, not at import."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CONVPLAN_MAX_BODY": "lots"}
    done = subprocess.run([sys.executable, "-c", "import convplan.api.service.app as m; "
                           "print(hasattr(m, 'app'))"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_serve_warns_of_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from convplan.api.cli.serve import register

    misspelt = "CONVPLAN" + "_MAX_BODDY"      # (split: not a name of the source's own)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setenv(misspelt, "1MiB")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0 and f"{misspelt} is not a convplan setting" in result.output


def test_serve_refuses_bad_limits_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from convplan.api.cli.serve import register

    monkeypatch.setenv("CONVPLAN_MAX_BODY", "a lot")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2 and "CONVPLAN_MAX_BODY" in result.output


def test_the_worker_pool_queues_within_bounds_and_survives_a_dead_worker() -> None:
    """One slot, one waiting place: the second request waits, the third is refused; a worker
    that dies answers 503 and the pool carries on with a fresh process."""
    import os

    from convplan.api.service.work import ServiceError
    from convplan.api.service.workers import Saturated, WorkerPool

    async def main() -> None:
        pool = WorkerPool(1, queue=1, wait_s=30)
        pool.start()
        try:
            outcomes = await asyncio.gather(*(pool.run(time.sleep, 0.5) for _ in range(3)),
                                            return_exceptions=True)
            assert sum(o is None for o in outcomes) == 2
            assert sum(isinstance(o, Saturated) for o in outcomes) == 1
            assert pool.busy == 0 and pool.waiting == 0
            with pytest.raises(ServiceError) as died:
                await pool.run(os._exit, 3)
            assert died.value.status == 503
            assert await pool.run(abs, -2) == 2
        finally:
            pool.stop()

    asyncio.run(main())


def test_worker_processes_never_import_the_web_framework(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path) -> None:
    """A worker that planned and profiled (its answers a `Plan` and a `ProfileResult`, pydantic
    documents) has imported neither FastAPI nor Starlette: the web stack stays in the server."""
    from convplan.api.service import work
    from convplan.api.service.schemas import ProfileResult
    from convplan.api.service.workers import WorkerPool
    from tests.support.service_server import web_modules

    monkeypatch.setenv("CONVPLAN_DB", str(tmp_path / "costs.sqlite"))
    settings = ServiceSettings.from_env({})
    tiny = ("description", TINY)

    async def main() -> None:
        pool = WorkerPool(1, queue=0, wait_s=1)
        pool.start()
        try:
            plan = await pool.run(work.plan_task, tiny, {"measure": False, "threads": 1},
                                  settings)
            assert plan.network == "tiny" and plan.costs == "analytic"
            result = await pool.run(work.profile_task, tiny, 1, 0.01, settings)
            assert isinstance(result, ProfileResult) and result.requested > 0
            assert await pool.run(web_modules) == []
        finally:
            pool.stop()

    import convplan.api.service.app  # noqa: F401  (the server's side has it: the check can fail)

    assert "fastapi" in web_modules()
    asyncio.run(main())
