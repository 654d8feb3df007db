"""Which deployed CNNs convplan imports and runs correctly: the torchvision and timm zoo.

    python bench/coverage.py [--only NAME,...] [--zoo DIR] [--repeat 3] [--timeout 900]

Exports the networks of bench/zoo.py's catalogue that are not exported yet (needs torch,
torchvision and timm), then, each in a fresh process under a time limit, loads the ONNX file
with convplan, runs it once traced and --repeat times untraced under the default assignment
(no profiling: the coverage, not the plan, is measured here), compares the outputs with
onnxruntime (the logits before a final softmax, as `convplan run --check` does) and times
onnxruntime on the same input and thread count. Writes bench/results/coverage.md: for every
network, imported or the refusal's message, the largest error relative to the reference's
largest magnitude, the time ratio to onnxruntime, and the traced peak against the predicted
peak. A network "matches" when it imports, runs, its relative error is at most 1e-3, its
traced peak is within the predicted one and its compared output is not degenerate.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# This folder holds bench/kernels.py, which would shadow the `kernels` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results" / "coverage.md"
TOLERANCE = 1e-3
MiB = 2**20


def bench_zoo() -> Any:
    """bench/zoo.py, loaded from its file: this folder is not on the path."""
    spec = importlib.util.spec_from_file_location("convplan_bench_zoo",
                                                  Path(__file__).with_name("zoo.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    if not hasattr(module, "CATALOGUE"):
        spec.loader.exec_module(module)
    return module


# -- in a child process ---------------------------------------------------------------------------
def check_one(path: str, threads: int, repeat: int) -> dict[str, Any]:
    """Import, run, check and time one ONNX file: what the table's row needs."""
    import numpy as np

    import convplan
    from convplan.selector.network import NetworkError

    out: dict[str, Any] = {"status": "imported"}
    start = time.perf_counter()
    try:
        report = convplan.run(path, threads=threads, repeat=repeat, check=True)
    except NetworkError as error:
        return {"status": "refused", "message": str(error).splitlines()[0]}
    except Exception as error:          # a crash is a bug of convplan's: shown as such
        return {"status": "crashed", "message": f"{type(error).__name__}: {error}"[:300]}
    out.update(seconds=time.perf_counter() - start, convplan_s=report.time_s,
               traced=report.measured_peak_bytes, predicted=report.predicted_peak_bytes,
               rel_error=report.max_rel_error, reference=report.reference,
               degenerate=[n for n in report.notes if "proves little" in n])
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
             .astype(np.float32) for i in session.get_inputs()}
    session.run(None, feeds)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    out["ort_s"] = statistics.median(times)
    return out


# -- in the parent --------------------------------------------------------------------------------
def _child(path: Path, threads: int, repeat: int, timeout_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, __file__, "--check-one", str(path),
                               "--threads", str(threads), "--repeat", str(repeat)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "message": f"no result within {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = [x for x in done.stderr.strip().splitlines() if x.strip()]
        return {"status": "crashed",
                "message": (tail[-1] if tail else f"exit {done.returncode}")[:300]}
    return json.loads(lines[-1])


def matches(row: dict[str, Any]) -> bool:
    return row["status"] == "imported" and row["rel_error"] is not None \
        and row["rel_error"] <= TOLERANCE and row["traced"] <= row["predicted"] \
        and not row["degenerate"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    header = ("| network | input | result | max rel error | time / ORT | convplan ms | ORT ms "
              "| traced / predicted MiB |\n|---|---|---|---:|---:|---:|---:|---:|")
    lines = []
    for row in rows:
        if row["status"] != "imported":
            lines.append(f"| {row['name']} | {row['input']} | {row['status']}: "
                         f"{_cell(row['message'])} | | | | | |")
            continue
        verdict = "matches" if matches(row) else "does not match"
        if row["degenerate"]:
            verdict += " (degenerate output)"
        lines.append(
            f"| {row['name']} | {row['input']} | {verdict} | {row['rel_error']:.1e} | "
            f"{row['convplan_s'] / row['ort_s']:.2f} | {row['convplan_s'] * 1e3:.1f} | "
            f"{row['ort_s'] * 1e3:.1f} | {row['traced'] / MiB:.1f} / "
            f"{row['predicted'] / MiB:.1f} |")
    counted = [r for r in rows if r["status"] != "not exported"]
    good = [r for r in counted if matches(r)]
    ratios = [r["convplan_s"] / r["ort_s"] for r in good]
    by_status: dict[str, int] = {}
    for r in counted:
        key = "matches" if matches(r) else r["status"]
        by_status[key] = by_status.get(key, 0) + 1
    geo = math.exp(statistics.mean(math.log(x) for x in ratios)) if ratios else float("nan")
    not_exported = [r["name"] for r in rows if r["status"] == "not exported"]
    return "\n".join([
        "# Coverage: the torchvision and timm CNN zoo",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, {args.threads} "
        f"thread(s). `python bench/coverage.py --repeat {args.repeat}`. Each network exported "
        "by bench/zoo.py (random seeded weights, opset 17, batch 1), then imported, run and "
        "checked in a fresh process: the default assignment (no profiling), outputs compared "
        "with onnxruntime (the logits before a final softmax), time the median of the "
        "untraced runs against onnxruntime's on the same thread count. Matches: relative error "
        f"<= {TOLERANCE:g}, traced peak <= predicted peak, output not degenerate.",
        "",
        f"**{len(good)} of {len(counted)} networks match** "
        f"({', '.join(f'{v} {k}' for k, v in sorted(by_status.items()))}); geometric mean of "
        f"the time ratio over the matching ones: {geo:.2f}.",
        *([f"Not exported here (the exporter failed, not convplan): "
           f"{', '.join(not_exported)}."] if not_exported else []),
        "",
        header,
        *lines,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated zoo names (default: all)")
    parser.add_argument("--zoo", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--check-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_one:
        print(json.dumps(check_one(args.check_one, args.threads, args.repeat)))
        return
    zoo = bench_zoo()
    directory = args.zoo or zoo.ZOO
    entries = [zoo.BY_NAME[n] for n in args.only.split(",")] if args.only else zoo.CATALOGUE
    rows = []
    for entry in entries:
        shown = f"1x3x{entry.size}x{entry.size}"
        got = zoo.export(entry, directory)
        if isinstance(got, str):
            row = {"status": "not exported", "message": got}
        else:
            row = _child(got, args.threads, args.repeat, args.timeout)
        row.update(name=entry.name, input=shown)
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table(rows, args))      # kept up to date: a long run can stop
    print(table(rows, args))


if __name__ == "__main__":
    main()
