"""A real convplan HTTP server for the service tests: started through the project's own entry
point (`python -m api.cli serve`, i.e. `convplan serve`) on 127.0.0.1 and a free port, stopped
at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import ROOT

#: A small network every service test can plan, run and profile in well under a second.
TINY = {
    "name": "tiny", "seed": 0,
    "inputs": [{"name": "x", "shape": [1, 3, 16, 16]}],
    "layers": [
        {"name": "conv1", "op": "conv", "inputs": ["x"], "out_channels": 8, "kernel": 3,
         "padding": 1},
        {"name": "relu1", "op": "relu", "inputs": ["conv1"]},
        {"name": "conv2", "op": "conv", "inputs": ["relu1"], "out_channels": 8, "kernel": 1},
        {"name": "sum", "op": "add", "inputs": ["relu1", "conv2"]},
        {"name": "gap", "op": "globalavgpool", "inputs": ["sum"]},
        {"name": "flat", "op": "flatten", "inputs": ["gap"]},
        {"name": "fc", "op": "gemm", "inputs": ["flat"], "out_features": 4},
    ]}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def web_modules() -> list[str]:
    """The FastAPI and Starlette modules this process has imported (run in a worker process:
    workers build plans and job documents with pydantic alone)."""
    return sorted(m for m in sys.modules if m.partition(".")[0] in ("fastapi", "starlette"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(tmp: Path, env: Mapping[str, str] | None = None, *,
                   ready_timeout_s: float = 60) -> Iterator[Server]:
    """Start the server, wait for /healthz (bounded), yield it, terminate it."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    environment = {**os.environ, "CONVPLAN_DB": str(tmp / "costs.sqlite"),
                   "PYTHONUNBUFFERED": "1", **(env or {})}
    if "CONVPLAN_API_KEY" not in (env or {}):
        environment.pop("CONVPLAN_API_KEY", None)   # the caller's key would change the tests
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "convplan", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--log-level", "warning"], cwd=ROOT, env=environment, stdout=sink,
            stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n"
                                   f"{server.log_text()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no /healthz within {ready_timeout_s} s:\n"
                                   f"{server.log_text()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def assert_json_error(response: httpx.Response, *statuses: int) -> dict:
    """A 4xx answer with the service's JSON error body (and no traceback)."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body
