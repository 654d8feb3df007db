"""How long idle OpenBLAS workers should spin: 2-thread run time against the spin setting.

    python bench/blas_threads.py [--models onnx:squeezenet,resnet50] [--timeouts 4,28]
                                 [--rounds 5] [--repeat 10]

Writes bench/results/blas_threads.md. For each model, spin setting
(``CONVPLAN_BLAS_THREAD_TIMEOUT``, OpenBLAS's ``OPENBLAS_THREAD_TIMEOUT``: workers spin 2**N
cycles before they sleep; OpenBLAS's default is 28) and load (the machine as it is, or with a
busy process of our own on one core),
`convplan run MODEL --threads 2 --repeat R --json` in a fresh process; the settings interleaved
round by round, so a change in the machine's load hits them alike. The table gives the median
and the spread (min-max) over the rounds of each run's median time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "blas_threads.md"


def _busy(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def run_once(model: str, timeout: int, repeat: int) -> float:
    env = {**os.environ, "CONVPLAN_BLAS_THREAD_TIMEOUT": str(timeout)}
    done = subprocess.run([sys.executable, "-m", "convplan", "run", model, "--threads", "2",
                           "--repeat", str(repeat), "--json"], capture_output=True, text=True,
                          env=env, check=True, timeout=600)
    return float(json.loads(done.stdout)["time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="onnx:squeezenet,resnet50")
    parser.add_argument("--timeouts", default="4,28")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    timeouts = [int(t) for t in args.timeouts.split(",")]
    times: dict[tuple[str, str, int], list[float]] = {}
    for model in args.models.split(","):
        for load in ("as is", "one busy core"):
            for _ in range(args.rounds):
                for timeout in timeouts:
                    busy = None
                    if load == "one busy core":
                        busy = multiprocessing.Process(target=_busy,
                                                       args=(time.monotonic() + 600,))
                        busy.start()
                    try:
                        t = run_once(model, timeout, args.repeat)
                    finally:
                        if busy is not None:
                            busy.terminate()
                            busy.join()
                    times.setdefault((model, load, timeout), []).append(t)
                    print(model, load, timeout, f"{t * 1e3:.1f} ms", flush=True)
    lines = [
        "# Idle OpenBLAS workers: how long they spin", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. `python bench/blas_threads.py --rounds {args.rounds} "
        f"--repeat {args.repeat}`: `convplan run MODEL --threads 2` (default assignment) in a "
        "fresh process per run, the spin settings interleaved; median (min-max) over the "
        "rounds of each run's median time, ms. Spin: workers spin 2**N cycles before they "
        "sleep (OpenBLAS's default N is 28).", "",
        "| model | load | " + " | ".join(f"spin 2**{t}" for t in timeouts) + " | ratio |",
        "|---|---|" + "---:|" * (len(timeouts) + 1)]
    for model in args.models.split(","):
        for load in ("as is", "one busy core"):
            cells, medians = [], []
            for timeout in timeouts:
                ts = [t * 1e3 for t in times[(model, load, timeout)]]
                medians.append(statistics.median(ts))
                cells.append(f"{medians[-1]:.1f} ({min(ts):.1f}-{max(ts):.1f})")
            lines.append(f"| {model} | {load} | {' | '.join(cells)} | "
                         f"{medians[0] / medians[-1]:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
