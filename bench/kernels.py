"""Kernel benchmark on the paper's layers: every applicable algorithm at 1 and 2 threads.

Writes bench/results/kernels.md. All ratios are measured in the same run (the machines are
shared and noisy; compare ratios, not absolute times across runs).

    python bench/kernels.py [--layers vgg16:conv3_1,...] [--budget 1.5] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from convplan.kernels import blas, registry
from convplan.kernels.layout import convert
from convplan.kernels.measure import peak_allocation
from convplan.profiles.timing import median_time
from convplan.selector.network import paper_layer

LAYERS = ["alexnet:conv1", "alexnet:conv2", "alexnet:conv3", "vgg16:conv1_2", "vgg16:conv3_1",
          "vgg16:conv5_1", "googlenet:inception_3a/1x1", "googlenet:inception_3a/3x3",
          "googlenet:inception_3a/5x5"]
THREADS = (1, 2)


def sgemm_rate(threads: int, size: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    c = np.empty_like(a)
    with blas.threads(threads):
        seconds = median_time(lambda: blas.gemm(a, a, c), budget_s=2.0)
    return 2 * size**3 / seconds / 1e9


def torch_time(spec, x, w, threads: int, budget: float) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    t, l, b, r = spec.padding
    if (t, l) != (b, r):
        return None

    def call():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=spec.stride, padding=(t, l),
                                       dilation=spec.dilation, groups=spec.groups)

    return median_time(call, budget_s=budget)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                             "kernels.md"))
    args = parser.parse_args()
    layers = args.layers.split(",")
    rates = {t: sgemm_rate(t) for t in THREADS}
    rng = np.random.default_rng(0)
    results = {}
    for name in layers:
        spec = paper_layer(name)
        x = rng.standard_normal(spec.input_shape()).astype(np.float32)
        w = rng.standard_normal(spec.weight_shape).astype(np.float32)
        rows = {}
        for algorithm in registry.applicable(spec):
            prepared = algorithm.prepare(w, None, spec)
            x_in = convert(x, "NCHW", algorithm.input_layout)
            out = np.empty(spec.output_shape(algorithm.output_layout), np.float32)

            def run(a=algorithm, p=prepared, xi=x_in, o=out, sp=spec):
                a.run(xi, p, sp, out=o)

            times = {}
            for t in THREADS:
                with blas.threads(t):
                    times[t] = median_time(run, budget_s=args.budget)
            rows[algorithm.name] = {"time": times, "predicted": algorithm.workspace_bytes(spec),
                                    "measured": peak_allocation(run, repeats=1)}
            print(f"{name:28s} {algorithm.name:18s} " +
                  " ".join(f"{t}t {times[t] * 1e3:8.2f} ms" for t in THREADS), flush=True)
        torch_times = {t: torch_time(spec, x, w, t, args.budget) for t in THREADS}
        results[name] = (spec, rows, torch_times)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(report(results, rates))
    print(f"wrote {args.out}")


def report(results, rates) -> str:
    lines = ["# Kernel benchmark: the paper's layers", "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, BLAS {blas.info()['config']} "
             f"(kernels: {blas.info()['corename']}). Batch 1, float32, median of repeated runs.",
             "",
             f"SGEMM 2048^3 through kernels.blas in this run: {rates[1]:.0f} GFLOP/s at 1 thread, "
             f"{rates[2]:.0f} GFLOP/s at 2 threads. '% SGEMM' compares each algorithm's effective "
             "rate (the layer's direct-convolution FLOPs / time) with it; Winograd does fewer "
             "FLOPs, so it can exceed 100%.", ""]
    low_memory, torch_wins, torch_layers = [], 0, 0
    for name, (spec, rows, torch_times) in results.items():
        lines += [f"## {name}: {spec.describe()}", "",
                  f"{spec.flops / 1e9:.3f} GFLOP. PyTorch conv2d: " + (
                      ", ".join(f"{torch_times[t] * 1e3:.2f} ms at {t}t" for t in THREADS)
                      if torch_times[1] else "not installed"), "",
                  "| algorithm | ms 1t | ms 2t | GFLOP/s 1t | % SGEMM 1t | GFLOP/s 2t | "
                  "% SGEMM 2t | workspace predicted | workspace measured | vs torch 1t |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for algorithm, row in sorted(rows.items(), key=lambda kv: kv[1]["time"][1]):
            t1, t2 = row["time"][1], row["time"][2]
            g1, g2 = spec.flops / t1 / 1e9, spec.flops / t2 / 1e9
            vs = f"{t1 / torch_times[1]:.2f}x" if torch_times[1] else "-"
            lines.append(f"| {algorithm} | {t1 * 1e3:.2f} | {t2 * 1e3:.2f} | {g1:.0f} | "
                         f"{100 * g1 / rates[1]:.0f}% | {g2:.0f} | {100 * g2 / rates[2]:.0f}% | "
                         f"{human(row['predicted'])} | {human(row['measured'])} | {vs} |")
        lines.append("")
        best = min(row["time"][1] for row in rows.values())
        if torch_times[1]:
            torch_layers += 1
            torch_wins += best <= torch_times[1]
        stride1 = spec.stride == (1, 1) and spec.kh in (3, 5) and "im2col" in rows
        if stride1:
            for t in THREADS:
                base = rows["im2col"]["time"][t]
                low_memory.append((name, t, rows["kn2row-as"]["time"][t] / base,
                                   rows["kn2row-aa"]["time"][t] / base))
    lines += ["## Targets", "",
              "kn2row-as and kn2row-aa time / im2col time on the stride-1 3x3 and 5x5 layers "
              "(target: <= 1.10):", "",
              "| layer | threads | kn2row-as / im2col | kn2row-aa / im2col |",
              "|---|---:|---:|---:|"]
    for name, t, as_ratio, aa_ratio in low_memory:
        lines.append(f"| {name} | {t} | {as_ratio:.2f} | {aa_ratio:.2f} |")
    met = sum(a <= 1.10 and b <= 1.10 for _, _, a, b in low_memory)
    lines += ["", f"Both within 1.10x of im2col in {met} of {len(low_memory)} (layer, threads) "
              "cases.", ""]
    if torch_layers:
        lines.append(f"The best algorithm is at or below PyTorch's conv2d time at 1 thread on "
                     f"{torch_wins} of {torch_layers} layers (target: at least 6 of 9).")
    else:
        lines.append("PyTorch not installed: no comparison (pip install torch==2.13.0).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
