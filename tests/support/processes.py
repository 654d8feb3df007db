"""A real `convplan` process and its own peak resident memory.

The peak comes from the child's /proc/self/status (VmHWM) as it exits: wait4's ru_maxrss is
no good here, since Linux carries the parent's high-water mark across fork and exec, so a
child of a 600 MB pytest process reports 600 MB whatever it did."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_LAUNCH = """
import atexit, sys
report = sys.argv.pop(1)
def _peak():
    with open('/proc/self/status') as status, open(report, 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM:')))
atexit.register(_peak)
sys.argv[0] = 'convplan'
from convplan.api.cli import app
app()
"""


def convplan_with_peak(args: Sequence[str], *, cwd: Path,
                       env: Mapping[str, str] | None = None, timeout_s: float = 60
                       ) -> tuple[subprocess.CompletedProcess, int]:
    """(the finished process, its stdout and stderr as text; its peak RSS in bytes) of
    ``convplan ARGS``; TimeoutExpired after ``timeout_s``."""
    report = cwd / f"peak-rss-{os.getpid()}.txt"
    report.unlink(missing_ok=True)
    result = subprocess.run([sys.executable, "-c", _LAUNCH, str(report), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout_s,
                            env={**os.environ, **(env or {})})
    peak = int(report.read_text()) * 1024 if report.exists() else 0
    return result, peak


def run_convplan(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
                 timeout_s: float = 60) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in bytes) of ``convplan ARGS``; TimeoutExpired after
    ``timeout_s``."""
    result, peak = convplan_with_peak(args, cwd=cwd, env=env, timeout_s=timeout_s)
    return result.returncode, result.stderr, peak
