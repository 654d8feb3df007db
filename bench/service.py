"""Plan latency and throughput of the HTTP service, against a real server it starts.

    python bench/service.py [--requests 120] [--clients 1,4,16]

Writes bench/results/service.md. The server (`convplan serve`, run as `python -m api.cli serve`
on 127.0.0.1, a fresh cost store in a temporary directory) first profiles the small network
through a /v1/profile job, so its plans read every cost from a warm store; GoogLeNet is planned
with analytic costs (a 142-layer ILP with its four baselines). Each level sends the same number
of POST /v1/plan requests from N concurrent clients (httpx, one connection each) after a
warm-up; latency is per request as the client sees it, throughput is requests over the level's
wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This folder holds bench/kernels.py, which would shadow the `kernels` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "service.md"

#: The README's example network: convolutions, a residual add, pooling, a classifier.
SMALL = {
    "name": "small", "seed": 0,
    "inputs": [{"name": "x", "shape": [1, 3, 32, 32]}],
    "layers": [
        {"name": "conv1", "op": "conv", "inputs": ["x"], "out_channels": 16, "kernel": 3,
         "padding": 1},
        {"name": "relu1", "op": "relu", "inputs": ["conv1"]},
        {"name": "branch", "op": "conv", "inputs": ["relu1"], "out_channels": 16, "kernel": 1},
        {"name": "sum", "op": "add", "inputs": ["relu1", "branch"]},
        {"name": "pool", "op": "maxpool", "inputs": ["sum"], "kernel": 2, "stride": 2,
         "ceil_mode": True},
        {"name": "gap", "op": "globalavgpool", "inputs": ["pool"]},
        {"name": "flat", "op": "flatten", "inputs": ["gap"]},
        {"name": "fc", "op": "gemm", "inputs": ["flat"], "out_features": 10},
        {"name": "prob", "op": "softmax", "inputs": ["fc"], "axis": 1}]}

#: name -> (request body, share of --requests per level)
WORKLOADS = {
    "small network, measured costs (warm store)": (
        {"network": SMALL, "threads": 1, "memory_cap": "1MiB", "measure": True}, 1.0),
    "googlenet, analytic costs": (
        {"network": "googlenet", "threads": 1, "memory_cap": "30MiB", "measure": False}, 0.25),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    # the service's default limits, but a longer wait for a worker: measure latency, not 503s
    env = {**os.environ, "CONVPLAN_DB": str(store), "CONVPLAN_QUEUE_TIMEOUT": "120"}
    env.pop("CONVPLAN_API_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "convplan", "serve", "--port", str(port),
                                "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not answer /healthz within 60 s")


def warm_store(url: str) -> dict:
    with httpx.Client(base_url=url, timeout=120) as client:
        created = client.post("/v1/profile", json={"network": SMALL, "threads": 1,
                                                   "budget_s": 0.05}).json()
        job = created
        while job["status"] in ("queued", "running"):
            time.sleep(0.2)
            job = client.get(created["url"]).json()
    if job["status"] != "succeeded":
        raise SystemExit(f"profiling failed: {job}")
    return job["result"]


async def level(url: str, body: dict, clients: int, requests: int) -> dict:
    """``requests`` plans from ``clients`` concurrent clients: latencies, errors, wall time."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            response = await client.post("/v1/plan", json=body)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    clients_ = [httpx.AsyncClient(base_url=url, timeout=300) for _ in range(clients)]
    try:
        for c in clients_:                         # connect and warm up once per client
            await c.post("/v1/plan", json=body)
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in clients_))
        wall = time.perf_counter() - started
    finally:
        for c in clients_:
            await c.aclose()
    latencies.sort()
    return {"clients": clients, "requests": requests, "errors": errors,
            "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
            "rps": requests / wall}


def in_process_ms(body: dict, store: Path, repeats: int = 5) -> float:
    """The same plan by `plan_network` in this process: what the service adds is the rest."""
    from convplan.selector.network import Network, zoo
    from convplan.selector.planning import PlanRequest, parse_bytes, plan_network

    network = (zoo.builtin(body["network"]) if isinstance(body["network"], str)
               else Network.from_description(body["network"]))
    request = PlanRequest(cap=parse_bytes(body["memory_cap"]), threads=body["threads"],
                          measure=body["measure"], db=str(store))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        plan_network(network, request)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=120, help="Requests per level.")
    parser.add_argument("--clients", default="1,4,16", help="Concurrency levels.")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(Path(tmp) / "costs.sqlite")
        try:
            profiled = warm_store(url)
            health = httpx.get(f"{url}/healthz").json()
            rows = []
            load_before = os.getloadavg()[0]
            local = {name: in_process_ms(body, Path(tmp) / "costs.sqlite")
                     for name, (body, _) in WORKLOADS.items()}
            for name, (body, share) in WORKLOADS.items():
                for clients in levels:
                    count = max(clients, round(args.requests * share))
                    row = asyncio.run(level(url, body, clients, count))
                    rows.append({"workload": name, **row})
                    print(f"{name}: {clients} client(s): p50 {row['p50_ms']:.1f} ms, p99 "
                          f"{row['p99_ms']:.1f} ms, {row['rps']:.1f} req/s, "
                          f"{row['errors']} error(s)", flush=True)
            load_after = os.getloadavg()[0]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    lines = [
        "# The HTTP service: plan latency and throughput",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"cores, Python {platform.python_version()}. One uvicorn process (`convplan "
        f"serve`, defaults: {health['slots']} worker processes for heavy requests) on "
        "127.0.0.1; clients on the same machine (httpx, one connection each). "
        "N POST /v1/plan per level after one warm-up request per client; "
        "latency as the client sees it (queueing for a worker included), throughput = "
        "requests / wall time. Every plan solves the ILP (CBC) and its four baselines. "
        "CONVPLAN_QUEUE_TIMEOUT=120 so a long queue shows as latency rather than 503s (with "
        "the default 10 s, requests queued longer than that are refused). Load average "
        f"(1 min) before the levels {load_before:.1f}, after {load_after:.1f}: above the "
        "core count means other processes shared the CPUs, and throughput at 4 and 16 clients "
        "is then below what the worker count allows.",
        "",
        f"The small network (README example, {len(SMALL['layers'])} layers) was profiled "
        f"first through a /v1/profile job ({profiled['measured']} costs measured at one "
        "thread), so its plans read every cost from the warm store; GoogLeNet (142 layers) "
        "uses analytic costs.",
        "",
        "In-process: the median of 5 `plan_network` calls on the same network and store in "
        "the benchmark's own process (no HTTP, no worker hop), measured before the levels.",
        "",
        "| workload | clients | requests | errors | p50 ms | p99 ms | requests/s | "
        "in-process ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.1f} | "
                     f"{local[r['workload']]:.1f} |")
    lines += ["", "More clients than worker processes only queue (bounded: CONVPLAN_QUEUE "
              "waiting requests, each at most CONVPLAN_QUEUE_TIMEOUT s, then 503), so "
              "throughput flattens at the worker count while latency grows with the queue."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
