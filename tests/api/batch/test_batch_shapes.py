"""`convplan batch --batch / --input-shape`: every network is planned for those shapes, in the
planning child of each network and on Dask workers alike (the shapes travel with the job), and
a network the shapes do not fit fails alone, naming why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import TINY, cli, one_error


@pytest.mark.parametrize("where", [[], ["--local-cluster", "1"]])
def test_every_network_is_planned_for_the_batch(tmp_path: Path, where: list[str]) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    other = {**TINY, "name": "other", "inputs": [{"name": "y", "shape": [1, 4, 8, 8]}],
             "layers": [{**TINY["layers"][0], "inputs": ["y"]}, *TINY["layers"][1:]]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    out = tmp_path / "plans"
    done = cli("batch", tmp_path / "tiny.json", tmp_path / "other.json", "--memory-cap", "1GiB",
               "--no-profile", "--out", out, "--batch", "2", "--input-shape", "x=2x4x8x8",
               "--json", *where)
    summary = json.loads(done.stdout)
    assert done.returncode == 1 and summary["planned"] == 1, done.stderr
    plan = json.loads((out / "tiny.plan.json").read_text())
    assert plan["inputs"] == {"x": [2, 4, 8, 8]}
    [failed] = [r for r in summary["rows"] if r["status"] != "planned"]
    assert failed["network"] == "other" and "'x' is not an input" in failed["error"]


def test_bad_shape_text_is_refused_before_planning(tmp_path: Path) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    one_error(cli("batch", tmp_path / "tiny.json", "--memory-cap", "1GiB", "--out",
                  tmp_path / "plans", "--input-shape", "x=1x3xab"), "cannot read", "x=1x3xab")
    assert not (tmp_path / "plans").exists()
