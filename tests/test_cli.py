"""The `convplan` command line, run as a user runs it (the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from kernels import registry


def convplan(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("convplan")
    command = [exe] if exe else [sys.executable, "-m", "api.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_algorithms_json_lists_the_registry() -> None:
    result = convplan("algorithms", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == registry.names()
    for row in rows:
        assert set(row) >= {"name", "input_layout", "output_layout", "supports", "workspace"}


def test_algorithms_table_names_every_algorithm() -> None:
    result = convplan("algorithms")
    assert result.returncode == 0, result.stderr
    for name in registry.names():
        assert name in result.stdout


def test_compare_runs_every_applicable_algorithm() -> None:
    result = convplan("compare", "c=8,h=12,w=12,m=8,k=3,pad=1", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = {row["algorithm"] for row in report["rows"]}
    assert {"im2col", "kn2row-aa", "winograd-2x2-3x3"} <= names
    for row in report["rows"]:
        assert row["max_abs_error"] < 1e-3
        assert row["measured_workspace_bytes"] <= row["workspace_bytes"]


@pytest.mark.parametrize("layer", ["c=3", "vgg16:nope", "c=4,h=2,w=2,m=1,k=5"])
def test_compare_bad_layer_is_a_clear_error(layer: str) -> None:
    result = convplan("compare", layer)
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr
