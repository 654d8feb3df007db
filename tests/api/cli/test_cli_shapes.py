"""`--batch` and `--input-shape` on the commands that load a network: the network is planned
and run for those shapes (the plan records them), a plan for other shapes is refused, and bad
option text is one clear error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import DATA
from tests.support.cli import TINY, cli, one_error

TORCH = DATA / "torch_resnetish.onnx"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_plan_records_the_batch_and_run_refuses_it_for_another(tmp_path: Path, tiny: Path
                                                               ) -> None:
    plan = tmp_path / "plan.json"
    made = cli("plan", tiny, "--batch", "2", "--no-profile", "--out", plan, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(plan.read_text())["inputs"] == {"x": [2, 4, 8, 8]}
    ran = cli("run", tiny, "--plan", plan, "--batch", "2", "--json", "--check")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["outputs"] == {"c2": [2, 8, 8, 8]} and report["max_rel_error"] < 1e-4
    one_error(cli("run", tiny, "--plan", plan), "made for inputs x=2x4x8x8",
              "loaded for x=1x4x8x8")


def test_input_shape_sets_the_symbolic_batch_of_an_onnx_file() -> None:
    ran = cli("run", TORCH, "--input-shape", "input=3x3x32x32", "--json", "--check")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["outputs"] == {"output": [3, 10]} and report["max_rel_error"] < 1e-3
    profiled = cli("pareto", TORCH, "--batch", "2", "--no-profile", "--json", "--points", "2")
    assert profiled.returncode == 0, profiled.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--input-shape", "x=1x3xab"], ["cannot read", "x=1x3xab", "NAME=1x3x224x224"]),
    (["--input-shape", "x=0x4x8x8"], ["x=0x4x8x8", "dimensions"]),
    (["--input-shape", "data=1x4x8x8"], ["'data' is not an input", "'x'"]),
    (["--batch", "2", "--input-shape", "x=1x4x8x8"], ["batch 1", "batch asked for is 2"]),
    (["--batch", "0"], ["--batch", "greater than or equal to 1"]),
])
def test_bad_shape_options_are_one_clear_error(tiny: Path, args: list[str], words: list[str]
                                               ) -> None:
    for command in (["plan", "--no-profile"], ["run"], ["profile"]):
        one_error(cli(command[0], tiny, *command[1:], *args), *words)


def test_a_huge_batch_is_refused_by_the_limits_at_once(tiny: Path) -> None:
    one_error(cli("run", "resnet50", "--batch", "1000000"), "[1000000, 3, 224, 224]",
              "per tensor")
