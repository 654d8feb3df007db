"""Whole-network time and peak memory: convplan vs onnxruntime, same ONNX file, same threads.

    python bench/network.py [--repeat 7] [--models resnet50,inception_v1,vgg19,squeezenet]

Writes bench/results/network.md. Each (engine, model, threads) runs in a fresh child process so
peak RSS is comparable: "RSS growth" is the child's peak resident set minus its resident set
after imports, before the model is loaded (weights included, for both engines). convplan's
traced peak is its own promise: activations, workspaces and prepared weights.
convplan runs three ways: the default algorithm per layer, im2col everywhere, and the fastest
plan (no cap) from costs measured on this machine (profiled first, outside the timing). Times are
medians of --repeat runs after one warm-up; ratios are within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# This folder holds bench/kernels.py, which would shadow the `kernels` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MODELS = ["resnet50", "inception_v1", "vgg19", "squeezenet"]
RESULTS = Path(__file__).parent / "results" / "network.md"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(engine: str, model: str, threads: int, repeat: int) -> dict:
    """Runs in a fresh process: import, note RSS, load, warm up, time."""
    from convplan.selector.network import zoo

    baseline = _rss_bytes()
    inputs, _ = zoo.light_model_io(model)
    out: dict = {"engine": engine, "model": model, "threads": threads}
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(zoo.light_model_path(model)), options,
                                       providers=["CPUExecutionProvider"])
        session.run(None, inputs)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            session.run(None, inputs)
            times.append(time.perf_counter() - t0)
        out["time_s"] = statistics.median(times)
    else:
        from convplan.selector.baselines import uniform_assignment
        from convplan.selector.planning import PlanRequest, plan_network
        from convplan.selector.runner import run_network

        network = zoo.builtin(f"onnx:{model}")
        assignment, layouts = None, None
        if engine == "convplan-im2col":
            assignment = uniform_assignment(network, "im2col")
        elif engine == "convplan-plan":     # the fastest plan from costs measured here
            plan = plan_network(network, PlanRequest(threads=threads, budget_s=0.2))
            assignment, layouts = plan.assignment, plan.layouts
            out["planned_ms"] = plan.predicted.time_s * 1e3
        report = run_network(network, inputs, assignment=assignment, layouts=layouts,
                             threads=threads, repeat=repeat)
        out["time_s"] = report.time_s
        out["traced_peak_bytes"] = report.measured_peak_bytes
        out["predicted_peak_bytes"] = report.predicted_peak_bytes
        conv = sum(layer.time_s for layer in report.layers if layer.op == "conv")
        out["conv_share"] = conv / max(sum(layer.time_s for layer in report.layers), 1e-12)
    out["rss_growth_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    return out


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "MODEL", "THREADS"))
    args = parser.parse_args()
    if args.child:
        engine, model, threads = args.child
        print(json.dumps(child(engine, model, int(threads), args.repeat)))
        return

    rows = []
    for model in args.models.split(","):
        for threads in (1, 2):
            results = {}
            for engine in ("onnxruntime", "convplan", "convplan-im2col", "convplan-plan"):
                done = subprocess.run(
                    [sys.executable, __file__, "--repeat", str(args.repeat), "--child", engine,
                     model, str(threads)], capture_output=True, text=True, check=True)
                results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
                print(model, threads, engine, f"{results[engine]['time_s'] * 1e3:.1f} ms",
                      file=sys.stderr)
            rows.append((model, threads, results))

    lines = [
        "# Whole networks: convplan vs onnxruntime",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}. Same ONNX file (the onnx wheel's light models: real "
        "architectures, constant weights), batch 1, float32. Medians of "
        f"{args.repeat} runs after a warm-up; each engine in a fresh process. "
        "convplan: default algorithm per layer; im2col: every convolution with im2col; "
        "plan: the fastest plan (no cap) from costs measured here, profiled before timing. "
        "RSS growth: peak resident set minus the set after imports (weights included), "
        "default assignment. Traced: convplan's own measured peak (activations, "
        "workspaces, prepared weights; the promise it predicts), default assignment.",
        "",
        "| model | threads | onnxruntime ms | convplan ms | ratio | im2col ms | ratio | "
        "plan ms | ratio | conv share | ORT RSS growth MiB | convplan RSS growth MiB | "
        "convplan traced MiB | predicted MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, threads, r in rows:
        ort_t = r["onnxruntime"]["time_s"]
        cp, im, pl = r["convplan"], r["convplan-im2col"], r["convplan-plan"]
        lines.append(
            f"| {model} | {threads} | {ort_t * 1e3:.1f} | {cp['time_s'] * 1e3:.1f} | "
            f"{cp['time_s'] / ort_t:.2f} | {im['time_s'] * 1e3:.1f} | {im['time_s'] / ort_t:.2f} | "
            f"{pl['time_s'] * 1e3:.1f} | {pl['time_s'] / ort_t:.2f} | {cp['conv_share']:.0%} | "
            f"{_mib(r['onnxruntime']['rss_growth_bytes'])} | "
            f"{_mib(cp['rss_growth_bytes'])} | {_mib(cp['traced_peak_bytes'])} | "
            f"{_mib(cp['predicted_peak_bytes'])} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
