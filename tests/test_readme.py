"""The README's Python example runs as written (in a fresh process, with its own cost store)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

README = ROOT / "README.md"


def python_example() -> str:
    match = re.search(r"<!-- python-example -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match is not None, "README lost its Python example"
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
