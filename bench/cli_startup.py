"""How long `convplan` takes to start: `--help`, `plan --help` and `--version`, each in fresh
processes, as a Markdown table (median, min, max wall time).

Why: every CLI call pays the start-up before it does anything, and `--help` is where people
start; the target is under 0.5 s. The commands import NumPy, ONNX, PuLP ... only when they run
(tests/test_cli_conventions.py checks that structurally); this measures what is left.

    python bench/cli_startup.py [--runs 10] [--out bench/results/cli_startup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
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


def measure(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``convplan ARGS`` in ``runs`` fresh processes (one unmeasured run
    first, so the file cache is warm for all of them alike)."""
    command = [*_convplan(), *args]
    env = {**os.environ, "COLUMNS": "100"}
    subprocess.run(command, capture_output=True, check=True, env=env)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def table(runs: int) -> str:
    lines = [f"# convplan start-up: {runs} fresh processes each", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} core(s), "
             f"Python {platform.python_version()}; `{' '.join(['convplan'])} ...` run by "
             "bench/cli_startup.py. Target: under 0.5 s.", "",
             "| command | median s | min s | max s | under 0.5 s |",
             "|---|---:|---:|---:|---|"]
    for args in COMMANDS:
        times = measure(list(args), runs)
        median = statistics.median(times)
        lines.append(f"| `convplan {' '.join(args)}` | {median:.3f} | {min(times):.3f} | "
                     f"{max(times):.3f} | {'yes' if median < TARGET_S else 'no'} |")
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
