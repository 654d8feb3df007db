"""Hostile and unusual input through every door, counted: correct, clean error, or other.

    python bench/robustness.py [--aliasing 40] [--json-sample 60] [--seed 0]

Writes bench/results/robustness.md. The inputs come from the test suite's own generators
(tests/support/hostile_onnx.py and the cases of tests/selector/test_hostile_onnx.py; the wrong-
typed attributes of tests/api/test_hostile_json.py; the damaged stores and hostile imports of
tests/profiles/test_hostile_store.py; the aliasing networks of
tests/support/hostile_networks.py) and go in as a user's would: the `convplan` CLI in a fresh
process per input (its own peak RSS), and a real server (`convplan serve` on 127.0.0.1, 2
workers) over HTTP, whose workers' peak RSS is read from /proc. After each door the server must
still answer /healthz and plan a small network.

Outcomes: "correct" (an accepted input whose output matches onnxruntime), "clean error" (exit 2
with one message and no traceback, or a JSON 4xx), "other" (anything else: a wrong output, a
traceback, a 5xx, a hang past the time limit, an input that should have been refused and was
not). Goal: no "other".
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# This folder holds bench/kernels.py, which would shadow the `kernels` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]   # the service tests import `service_server`

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from convplan.selector.network import Network  # noqa: E402
from convplan.selector.onnx import reference_outputs  # noqa: E402
from tests.api import test_hostile_json  # noqa: E402
from tests.profiles import test_hostile_store as stores  # noqa: E402
from tests.selector import test_hostile_onnx  # noqa: E402
from tests.support import hostile_networks  # noqa: E402
from tests.support.processes import run_convplan  # noqa: E402
from tests.support.service_server import TINY, running_server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "robustness.md"
CLI_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 120.0


@dataclass
class Door:
    """What one door saw: outcome counts, the worst time and memory, what went wrong."""

    name: str
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, outcome: str, seconds: float, rss: int | None, what: str, detail: str = ""
            ) -> None:
        self.outcomes[outcome] += 1
        self.seconds.append(seconds)
        if rss is not None:
            self.rss.append(rss)
        if outcome == "other":
            self.problems.append(f"{what}: {detail[:200]}")


# -- the CLI door ---------------------------------------------------------------------------------
def run_cli(args: list[str], timeout_s: float = CLI_TIMEOUT_S
            ) -> tuple[int | None, str, str, float, int]:
    """(exit status or None on timeout, stdout, stderr, seconds, the child's own peak RSS)."""
    start = time.monotonic()
    try:
        status, err, rss = run_convplan(args, cwd=Path(tempfile.gettempdir()),
                                        timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        return None, "", "", time.monotonic() - start, 0
    return status, "", err, time.monotonic() - start, rss


def cli_refusal(door: Door, what: str, args: list[str]) -> None:
    """An input that must be refused: exit 2, one message, no traceback."""
    status, _, err, seconds, rss = run_cli(args)
    clean = status == 2 and "Traceback" not in err and err.strip() != ""
    detail = "hang" if status is None else f"exit {status}: {err.strip()[-200:]}"
    door.add("clean error" if clean else "other", seconds, rss, what, detail)


# -- inputs ---------------------------------------------------------------------------------------
def onnx_cases() -> list[tuple[str, bytes]]:
    """Every malformed, bomb and subgraph file of tests/selector/test_hostile_onnx.py (but those
    refused only under limits smaller than the defaults)."""
    out = []
    for param in test_hostile_onnx.CASES:
        build, _, limits = param.values
        if not limits:
            out.append((param.id, test_hostile_onnx.as_bytes(build())))
    return out


def json_cases(sample: int, rng: random.Random) -> list[tuple[str, dict]]:
    """Layers with an attribute of the wrong type (each operator, each attribute), sampled."""
    cases = []
    for op, attribute, value in test_hostile_json.hostile_attributes():
        layer = {**test_hostile_json.VALID[op], "name": "l", "inputs": ["x"], attribute: value}
        cases.append((f"{op}.{attribute}={json.dumps(value)[:20]}",
                      test_hostile_json.net(layer)))
    rng.shuffle(cases)
    deep = test_hostile_json.net({**test_hostile_json.VALID["conv"], "name": "l",
                                  "inputs": ["x"], "kernel": test_hostile_json.nested(900)})
    huge = {"name": "t", "inputs": [{"name": "x", "shape": [1000000, 1000000]}],
            "layers": [{"name": "r", "op": "relu", "inputs": ["x"]}]}
    return [("900-deep attribute", deep), ("input of 10^12 elements", huge), *cases[:sample]]


def aliasing_cases(count: int, seed: int) -> list[tuple[dict, dict, dict]]:
    """(description, assignment, layouts) drawn by the test suite's strategies."""
    drawn: list[tuple[dict, dict, dict]] = []

    @hsettings(max_examples=count, database=None, derandomize=False, deadline=None,
               suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def draw(data) -> None:
        description = data.draw(hostile_networks.aliasing_descriptions())
        network = Network.from_description(description)
        assignment, layouts = data.draw(hostile_networks.random_plans(network))
        drawn.append((description, assignment, layouts))

    random.seed(seed)
    draw()
    return drawn[:count]


def npy(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def error_of(description: dict, x: np.ndarray, outputs: dict[str, np.ndarray]) -> float:
    """Max relative error of ``outputs`` against onnxruntime on input ``x``."""
    network = Network.from_description(description)
    expected = reference_outputs(network, {"x": x})
    worst = 0.0
    for name, ref in expected.items():
        y = outputs[name].reshape(ref.shape).astype(np.float64)
        worst = max(worst, float(np.abs(y - ref).max()) / max(float(np.abs(ref).max()), 1e-6))
    return worst


# -- doors ----------------------------------------------------------------------------------------
def cli_doors(tmp: Path, args: argparse.Namespace, rng: random.Random) -> list[Door]:
    doors = []
    door = Door("CLI `plan FILE.onnx` (malformed, bombs, subgraphs)")
    for name, data in onnx_cases():
        path = tmp / f"{name}.onnx"
        path.write_bytes(data)
        cli_refusal(door, name, ["plan", str(path), "--no-profile", "--db",
                                 str(tmp / "cli.sqlite")])
    doors.append(door)

    door = Door("CLI `plan FILE.json` (wrong types, deep nesting, huge shapes)")
    for name, description in json_cases(args.json_sample, rng):
        path = tmp / "description.json"
        try:
            path.write_text(json.dumps(description))
        except RecursionError:
            continue
        cli_refusal(door, name, ["plan", str(path), "--no-profile", "--db",
                                 str(tmp / "cli.sqlite")])
    doors.append(door)

    door = Door("CLI `run FILE.json --plan` (aliasing networks, random plans)")
    for k, (description, assignment, layouts) in enumerate(
            aliasing_cases(args.aliasing, args.seed)):
        desc_path, plan_path = tmp / "net.json", tmp / "plan.json"
        several = len(description["outputs"]) > 1
        x_path, y_path = tmp / "x.npy", tmp / ("y.npz" if several else "y.npy")
        desc_path.write_text(json.dumps(description))
        plan_path.write_text(json.dumps({"network": description["name"],
                                         "assignment": assignment, "layouts": layouts}))
        x = np.random.default_rng(k).standard_normal(description["inputs"][0]["shape"])
        x = x.astype(np.float32)
        x_path.write_bytes(npy(x))
        status, _, err, seconds, rss = run_cli(
            ["run", str(desc_path), "--plan", str(plan_path), "--input", str(x_path),
             "--output", str(y_path), "--threads", "1", "--json"])
        if status == 0:
            if several:
                with np.load(y_path, allow_pickle=False) as y:
                    outputs = dict(y)
            else:
                outputs = {description["outputs"][0]: np.load(y_path, allow_pickle=False)}
            error = error_of(description, x, outputs)
            door.add("correct" if error < 1e-3 else "other", seconds, rss, f"network {k}",
                     f"max relative error {error:.3g}")
        else:
            door.add("other", seconds, rss, f"network {k}", f"exit {status}: {err[-200:]}")
    doors.append(door)

    door = Door("CLI `profiles import` (hostile cost files)")
    for case, _ in stores.HOSTILE:
        where = tmp / f"import-{case.replace(' ', '_')}"
        where.mkdir()
        db = stores.make_store(where / "costs.sqlite", 5)
        before = stores.dump(db)
        status, _, err, seconds, rss = run_cli(
            ["profiles", "import", str(stores._hostile(where, case)), "--db", str(db)])
        clean = status == 2 and "Traceback" not in err and stores.dump(db) == before
        door.add("clean error" if clean else "other", seconds, rss, case,
                 f"exit {status}: {err[-200:]}")
    doors.append(door)

    door = Door("CLI `profiles list` (damaged and foreign stores)")
    damage: dict[str, Callable[[Path], None]] = {
        "bytes overwritten": lambda p: p.write_bytes(stores._damaged(p.read_bytes())),
        "truncated at a page": lambda p: p.write_bytes(stores._truncated_pages(p.read_bytes())),
        "another program's database": lambda p: (p.unlink(), stores._foreign(p)),
        "look-alike with a trigger": lambda p: (p.unlink(), stores._lookalike(p)),
        "text file": lambda p: p.write_text("not a database\n"),
    }
    for case, spoil in damage.items():
        where = tmp / f"store-{case.replace(' ', '_').replace(chr(39), '')}"
        where.mkdir()
        db = stores.make_store(where / "costs.sqlite", 400)
        spoil(db)
        cli_refusal(door, case, ["profiles", "list", "--db", str(db)])
    doors.append(door)
    return doors


def _worker_peak_rss(server_pid: int) -> int:
    """The largest VmHWM among the server's descendant processes (its workers)."""
    peak = 0
    pending = [server_pid]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                pending += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        if pid == server_pid:
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return peak


def _http(door: Door, what: str, send: Callable[[], httpx.Response],
          judge: Callable[[httpx.Response], tuple[str, str]]) -> None:
    start = time.monotonic()
    try:
        response = send()
    except httpx.HTTPError as error:
        door.add("other", time.monotonic() - start, None, what, f"{type(error).__name__}")
        return
    seconds = time.monotonic() - start
    outcome, detail = judge(response)
    door.add(outcome, seconds, None, what, detail)


def _json_refusal(response: httpx.Response) -> tuple[str, str]:
    ok = 400 <= response.status_code < 500 and \
        response.headers.get("content-type", "").startswith("application/json") and \
        "Traceback" not in response.text
    return ("clean error" if ok else "other"), f"{response.status_code}: {response.text[:200]}"


def service_doors(tmp: Path, args: argparse.Namespace, rng: random.Random) -> list[Door]:
    doors = []
    env = {"CONVPLAN_CONCURRENCY": "2"}
    with running_server(tmp, env) as server, \
            httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:

        def still_serving(door: Door) -> None:
            health = client.get("/healthz")
            tiny = client.post("/v1/plan", json={"network": TINY, "measure": False})
            if health.status_code != 200 or tiny.status_code != 200:
                door.problems.append(f"afterwards: /healthz {health.status_code}, "
                                     f"a small plan {tiny.status_code}")
                door.outcomes["other"] += 1

        door = Door("HTTP `POST /v1/plan/onnx` (malformed, bombs, subgraphs)")
        for name, data in onnx_cases():
            _http(door, name, lambda data=data: client.post(
                "/v1/plan/onnx", files={"file": ("m.onnx", data)},
                data={"measure": "false"}), _json_refusal)
        still_serving(door)
        door.rss.append(_worker_peak_rss(server.process.pid))
        doors.append(door)

        door = Door("HTTP `POST /v1/plan` (wrong types, deep nesting, huge shapes)")
        for name, description in json_cases(args.json_sample, rng):
            try:
                body = json.dumps({"network": description, "measure": False})
            except RecursionError:
                continue
            _http(door, name, lambda body=body: client.post(
                "/v1/plan", content=body, headers={"content-type": "application/json"}),
                _json_refusal)
        still_serving(door)
        door.rss.append(_worker_peak_rss(server.process.pid))
        doors.append(door)

        door = Door("HTTP `POST /v1/run` (aliasing networks, random plans)")
        for k, (description, assignment, layouts) in enumerate(
                aliasing_cases(args.aliasing, args.seed + 1)):
            x = np.random.default_rng(k).standard_normal(description["inputs"][0]["shape"])
            x = x.astype(np.float32)
            body = {"network": description, "threads": 1,
                    "plan": {"network": description["name"], "assignment": assignment,
                             "layouts": layouts},
                    "input": base64.b64encode(npy(x)).decode()}

            def judge(response: httpx.Response, description=description, x=x
                      ) -> tuple[str, str]:
                if response.status_code != 200:
                    return "other", f"{response.status_code}: {response.text[:200]}"
                doc = response.json()
                raw = base64.b64decode(doc["output"])
                if doc["output_format"] == "npz":
                    with np.load(io.BytesIO(raw), allow_pickle=False) as y:
                        outputs = dict(y)
                else:
                    outputs = {next(iter(doc["output_shapes"])):
                               np.load(io.BytesIO(raw), allow_pickle=False)}
                error = error_of(description, x, outputs)
                return ("correct" if error < 1e-3 else "other"), f"max rel error {error:.3g}"

            _http(door, f"network {k}", lambda body=body: client.post("/v1/run", json=body),
                  judge)
        still_serving(door)
        door.rss.append(_worker_peak_rss(server.process.pid))
        doors.append(door)

        stop = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
            doors[-1].problems.append(f"(SIGTERM: the server exited in "
                                      f"{time.monotonic() - stop:.1f} s)")
        except subprocess.TimeoutExpired:
            doors[-1].problems.append("SIGTERM: the server did not exit within 30 s")
            doors[-1].outcomes["other"] += 1
    return doors


# -- the report -----------------------------------------------------------------------------------
def table(doors: Iterable[Door]) -> list[str]:
    lines = ["| door | inputs | correct | clean error | other | max time (s) | median time (s) "
             "| max RSS (MiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for d in doors:
        total = sum(d.outcomes.values())
        rss = f"{max(d.rss) / 2**20:.0f}" if d.rss else "-"
        lines.append(f"| {d.name} | {total} | {d.outcomes.get('correct', 0)} | "
                     f"{d.outcomes.get('clean error', 0)} | {d.outcomes.get('other', 0)} | "
                     f"{max(d.seconds, default=0):.2f} | "
                     f"{statistics.median(d.seconds) if d.seconds else 0:.2f} | {rss} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aliasing", type=int, default=40,
                        help="aliasing networks per run door")
    parser.add_argument("--json-sample", type=int, default=60,
                        help="wrong-typed descriptions per JSON door")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    warnings.simplefilter("ignore")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        doors = cli_doors(Path(tmp), args, rng)
        (Path(tmp) / "service").mkdir()
        doors += service_doors(Path(tmp) / "service", args, rng)
    lines = [
        "# Robustness: hostile and unusual input, door by door", "",
        f"`python bench/robustness.py --aliasing {args.aliasing} --json-sample "
        f"{args.json_sample} --seed {args.seed}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.monotonic() - started:.0f} s in all.", "",
        "CLI doors: one fresh `convplan` process per input, its own peak RSS (VmHWM; imports "
        "included: a bare `convplan` start is most of it). HTTP doors: a real server with 2 "
        "workers; max RSS is the largest peak RSS of any worker process over the door; "
        "after each door the server must answer /healthz and plan a small network, or the "
        "door counts one more \"other\". Times are per input as the caller sees them.", "",
        *table(doors), ""]
    problems = [f"- {d.name}: {p}" for d in doors for p in d.problems]
    lines += ["Notes and problems:", "", *(problems or ["- none"]), ""]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
