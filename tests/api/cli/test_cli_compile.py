"""`convplan compile` and `convplan run FILE.cvplan`, run as a user runs them: the compiled
file gives the outputs `run --plan` gives, reports its mapped weights, and every misuse or
damaged file is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from convplan.selector.network import load_network
from tests.selector.test_session import mixed_assignment
from tests.support.cli import TINY, cli, one_error


def test_compile_then_run_gives_the_plans_outputs(tmp_path: Path) -> None:
    network = load_network("googlenet")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"network": "googlenet", "assignment": mixed_assignment(network),
                                "threads": 1,
                                "inputs": {k: list(v) for k, v in network.inputs.items()}}))
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random(network.inputs["data_0"], dtype=np.float32))
    out = tmp_path / "googlenet.cvplan"
    compiled = cli("compile", "googlenet", "--plan", plan, "-o", out, "--json")
    assert compiled.returncode == 0, compiled.stderr
    summary = json.loads(compiled.stdout)
    assert summary["bytes"] == out.stat().st_size > summary["data_bytes"] > 20 * 2**20
    assert summary["assignment"] == mixed_assignment(network)

    ran = cli("run", out, "--input", x, "--output", tmp_path / "y.npy", "--json")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["network"] == "googlenet" and report["threads"] == 1
    # every weight mapped from the file (whose data also holds the padding between arrays)
    assert report["mapped_weight_bytes"] == report["weight_bytes"] <= summary["data_bytes"]
    assert report["measured_peak_bytes"] <= report["predicted_peak_bytes"]
    # the process's resident growth holds the mapped pages (file-backed), within the promise
    growth = report["rss_peak_growth_bytes"]
    assert growth is None or report["mapped_weight_bytes"] <= growth <= report["footprint_bytes"]
    assert report["notes"] == []
    assert {row["algorithm"] for row in report["layers"] if row["op"] == "conv"} == \
        set(mixed_assignment(network).values())

    direct = cli("run", "googlenet", "--plan", plan, "--input", x, "--output",
                 tmp_path / "z.npy")
    assert direct.returncode == 0, direct.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "z.npy"))


def test_compile_with_one_algorithm_and_run_as_text(tmp_path: Path) -> None:
    description = tmp_path / "tiny.json"
    description.write_text(json.dumps(TINY))
    out = tmp_path / "tiny.cvplan"
    compiled = cli("compile", description, "--algorithm", "kn2row-aa", "--out", out)
    assert compiled.returncode == 0, compiled.stderr
    assert f"compiled tiny into {out}" in compiled.stdout.replace("\n", "")
    ran = cli("run", out, "--threads", "1", "--repeat", "2")
    assert ran.returncode == 0, ran.stderr
    assert "kn2row-aa" in ran.stdout and "mapped from the file" in ran.stdout


def test_misuse_and_damage_are_one_error_line(tmp_path: Path) -> None:
    description = tmp_path / "tiny.json"
    description.write_text(json.dumps(TINY))
    out = tmp_path / "tiny.cvplan"
    assert cli("compile", description, "-o", out).returncode == 0
    for option in (["--plan", str(description)], ["--algorithm", "im2col"], ["--batch", "2"],
                   ["--check"]):
        one_error(cli("run", out, *option), "is a compiled plan", option[0])
    one_error(cli("plan", out, "--no-profile"), "is a compiled plan: it runs as it is")
    damaged = tmp_path / "damaged.cvplan"
    data = out.read_bytes()
    damaged.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    one_error(cli("run", damaged), "weights are damaged (CRC mismatch)")
    damaged.write_bytes(data[:len(data) // 2])
    one_error(cli("run", damaged), "truncated")
    one_error(cli("compile", description, "--algorithm", "im2col", "--plan", description,
                  "-o", out), "not both")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"network": "other", "assignment": {}}))
    one_error(cli("compile", description, "--plan", plan, "-o", tmp_path / "x.cvplan"),
              "made for network 'other'")
    assert not (tmp_path / "x.cvplan").exists()
    one_error(cli("compile", description, "-o", tmp_path), "cannot write --out")
