"""How long `convplan` takes to start: `--help`, `plan --help` and `--version`, each in fresh
processes, as a Markdown table (median, min, max wall time).

Why: every CLI call pays the start-up before it does anything, and `--help` is where people
start; the target is under 0.5 s. The commands import NumPy, ONNX, PuLP ... only when they run
(tests/api/cli/test_cli_conventions.py checks that structurally); this measures what is left.

    python bench/cli_startup.py [--runs 10] [--out bench/results/cli_startup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["plan", "--help"], ["--version"])
TARGET_S = 0.5


def _convplan() -> list[str]:
    """The installed script next to this interpreter, else ``python -m convplan``."""
    script = Path(sys.executable).with_name("convplan")
    if script.exists():
        return [str(script)]
    found = shutil.which("convplan")
    return [found] if found else [sys.executable, "-m", "convplan"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``command`` in ``runs`` fresh processes (one unmeasured run
    first, so the file cache is warm for all of them alike). CPU time is the steadier number
    on a shared machine: waiting for a core adds to the wall time only."""
    env = {**os.environ, "COLUMNS": "100"}
    subprocess.run(command, capture_output=True, check=True, env=env)
    walls, cpus = [], []
    for _ in range(runs):
        cpu, start = _children_cpu(), time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env=env)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return walls, cpus


def table(runs: int) -> str:
    lines = [f"# convplan start-up: {runs} fresh processes each", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} core(s), "
             f"Python {platform.python_version()}; measured by bench/cli_startup.py. "
             "Target: under 0.5 s.", "",
             "| command | median s | min s | max s | CPU s (median) | under 0.5 s |",
             "|---|---:|---:|---:|---:|---|"]
    rows = [(f"`convplan {' '.join(args)}`", [*_convplan(), *args]) for args in COMMANDS]
    rows.append(("`python -c pass` (the interpreter alone)", [sys.executable, "-c", "pass"]))
    for name, command in rows:
        walls, cpus = measure(command, runs)
        median = statistics.median(walls)
        lines.append(f"| {name} | {median:.3f} | {min(walls):.3f} | {max(walls):.3f} | "
                     f"{statistics.median(cpus):.3f} | {'yes' if median < TARGET_S else 'no'} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Load average when measured: {load:.2f} (other work on the machine adds "
              "to the wall times, less to the CPU times)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "cli_startup.md")
    options = parser.parse_args()
    text = table(options.runs)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
