"""Running the installed `convplan` script as a user does, and reading its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONVPLAN = Path(sys.executable).with_name("convplan")
CORES = os.cpu_count() or 1
MARKUP = "[/x]"             # a closing tag that matches nothing: rich would raise on it
TINY = {"name": "tiny", "inputs": [{"name": "x", "shape": [1, 4, 8, 8]}],
        "layers": [{"name": "c1", "op": "conv", "inputs": ["x"], "out_channels": 4, "kernel": 3,
                    "padding": 1},
                   {"name": "r1", "op": "relu", "inputs": ["c1"]},
                   {"name": "c2", "op": "conv", "inputs": ["r1"], "out_channels": 8,
                    "kernel": 1}]}


def cli(*args: str | Path, cwd: Path | None = None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONVPLAN), *map(str, args)], capture_output=True, text=True,
                          timeout=180, cwd=cwd, **options)


def one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr: ``error: ...`` with ``words`` in it."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
