"""The README's Python example runs as written (in a fresh process, with its own cost store)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

README = ROOT / "README.md"


def python_example(marker: str = "python-example") -> str:
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match is not None, f"README lost its Python example ({marker})"
    return match.group(1)


def test_the_python_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "CONVPLAN_DB": str(tmp_path / "costs.sqlite")}
    done = subprocess.run([sys.executable, "-c", python_example()], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted, measured = map(int, re.findall(r"(\d+) B", done.stdout))
    [cap_mib] = re.findall(r'memory_cap="(\d+)MiB"', python_example())   # the example's own cap
    assert 0 < measured <= predicted <= int(cap_mib) * 2**20
    assert "against onnxruntime" in done.stdout


def test_the_session_example_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", python_example("session-example")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    footprint, arena, weights = map(int, re.findall(r"(\d+) B", done.stdout))
    assert "outputs {'prob_1': (1, 1000)}" in done.stdout
    assert 0 < arena + weights < footprint
