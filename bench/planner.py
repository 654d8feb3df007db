"""The planner on real networks: solve times, and planned vs baseline plans under shrinking caps.

    python bench/planner.py [--threads 1] [--budget 0.2] [--repeat 5] [--db PATH]

Writes bench/results/planner.md. Costs are measured on this machine first (cached in the cost
store, so a second run only solves and runs). Part 1: solve time (CBC and HiGHS) of the fastest
plan for every built-in and light model. Part 2: for ResNet-50, GoogLeNet and VGG-16, caps of 100%,
50%, 25% and 10% of the im2col-everywhere peak; the plan and the four baselines are each *run*:
measured time (median of --repeat) and measured peak next to the prediction.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

# This folder holds bench/kernels.py, which would shadow the `kernels` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from convplan.profiles.profiler import Profiler  # noqa: E402
from convplan.profiles.store import CostStore  # noqa: E402
from convplan.selector.network import zoo  # noqa: E402
from convplan.selector.planning import (  # noqa: E402
    Caps,
    PlanningError,
    baselines,
    build_problem,
    make_plan,
    solve,
)
from convplan.selector.runner import run_network  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "planner.md"
FRACTIONS = (1.0, 0.5, 0.25, 0.10)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _measure(network, assignment, layouts, args) -> tuple[float, int, int]:
    """Run a plan (or baseline): median time, measured peak, predicted peak."""
    report = run_network(network, assignment=assignment, layouts=layouts,
                         strict=True, threads=args.threads, repeat=args.repeat)
    return report.time_s, report.measured_peak_bytes, report.predicted_peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per candidate")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", default=None)
    parser.add_argument("--networks", default=",".join(zoo.names()))
    parser.add_argument("--deep", default="resnet50,googlenet,vgg16")
    args = parser.parse_args()
    profiler = Profiler(CostStore(args.db) if args.db else CostStore(), args.threads, args.budget)
    costs = profiler.costs

    lines = ["# Planner: solve times and plans under shrinking caps", "",
             f"Machine: {platform.processor() or platform.machine()}, {args.threads} thread(s); "
             "costs measured on it (cost store). Times in ms, memory in MiB.", "",
             "## Solve time of the fastest plan (no cap)", "",
             "| network | layers | candidates | CBC s | optimal | HiGHS s | optimal | "
             "predicted ms |", "|---|---:|---:|---:|---|---:|---|---:|"]
    for name in args.networks.split(","):
        network = zoo.builtin(name)
        problem = build_problem(network, costs)
        print(name, "costs ready", file=sys.stderr)
        row = [name, str(len(network.nodes)),
               str(sum(len(c) for c in problem.problem.candidates.values()))]
        predicted = 0.0
        for solver in ("cbc", "highs"):
            s = solve(problem.problem, None, solver=solver)
            row += [f"{s.solve_seconds:.2f}", "yes" if s.optimal else "no"]
            predicted = s.time_s
        row.append(f"{predicted * 1e3:.1f}")
        lines.append("| " + " | ".join(row) + " |")

    header = ["| network | cap | cap MiB | plan ms | plan peak MiB (pred) | fastest ms / MiB | "
              "im2col ms / MiB | greedy ms / MiB | lowest-memory ms / MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["", "## Plans under caps, run and measured", "",
              "Caps are fractions of the im2col-everywhere predicted peak. Each row is executed: "
              "measured time (median) and traced peak; `pred` is the memory model's peak. "
              "A plan that cannot meet a cap says so with the smallest achievable peak; a "
              "baseline over the cap is marked *over*. The peak counts every layer's prepared "
              "weights, so no cap below the weights can be met.", "", *header]
    rows_a: list[str] = []
    rows_b: list[str] = []
    for name in args.deep.split(","):
        network = zoo.builtin(name)
        problem = build_problem(network, costs)
        marks = baselines(problem, Caps())
        im2col_peak = marks["im2col"]["peak_bytes"]
        lowest = marks["lowest_memory"]["peak_bytes"]
        for fraction in FRACTIONS:
            rows_a.append(_row(network, problem, costs, profiler, args, fraction,
                               int(im2col_peak * fraction)))
            rows_b.append(_row(network, problem, costs, profiler, args, fraction,
                               int(lowest + (im2col_peak - lowest) * fraction)))
    lines += rows_a
    lines += ["", "## The same, with caps on the memory above the smallest achievable peak", "",
              "cap = lowest + fraction x (im2col peak - lowest): 100% is im2col's peak, 0% the "
              "least memory any plan can run in (weights, input, and the unavoidable "
              "activations).", "", *header, *rows_b]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _row(network, problem, costs, profiler, args, fraction: float, cap: int) -> str:
    """One cap: the plan and the four baselines, each run and measured."""
    marks = baselines(problem, Caps(cap))
    cells = []
    try:
        plan = make_plan(network, costs, cap, machine=profiler.fingerprint,
                         threads=args.threads, with_baselines=False)
        t, peak, pred = _measure(network, plan.assignment, plan.layouts, args)
        cells += [f"{t * 1e3:.1f}", f"{_mib(peak)} ({_mib(pred)})"]
    except PlanningError as error:
        cells += ["-", str(error).split(": ", 1)[-1]]
    for key in ("fastest", "im2col", "greedy", "lowest_memory"):
        t, peak, _ = _measure(network, marks[key]["assignment"], marks[key]["layouts"], args)
        cells.append(f"{t * 1e3:.1f} / {_mib(peak)}{'' if peak <= cap else ' *over*'}")
    row = f"| {network.name} | {fraction:.0%} | {_mib(cap)} | " + " | ".join(cells) + " |"
    print(row, file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
