"""The `convplan` command line, run as a user runs it (the installed console script)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convplan.kernels import registry


def convplan(*args: str, db: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("convplan")
    command = [exe] if exe else [sys.executable, "-m", "convplan"]
    env = {**os.environ, "CONVPLAN_DB": str(db)} if db is not None else None
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300,
                          env=env)


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


def test_networks_lists_the_paper_networks_and_light_models() -> None:
    result = convplan("networks", "--json")
    assert result.returncode == 0, result.stderr
    names = [row["name"] for row in json.loads(result.stdout)]
    assert names[:4] == ["alexnet", "vgg16", "googlenet", "resnet50"]
    assert "onnx:squeezenet" in names and "onnx:densenet121" in names


def test_run_json_reports_time_memory_error_and_layers(tmp_path) -> None:
    x = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = convplan("run", "onnx:squeezenet", "--algorithm", "im2col", "--input",
                      str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                      "--threads", "1", "--check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["time_s"] < 60
    assert report["measured_peak_bytes"] <= report["predicted_peak_bytes"]
    # the light model's constant weights tie its huge logits: the softmax's input is compared
    assert report["max_rel_error"] < 1e-5
    assert any("the input of the softmax" in note for note in report["notes"])
    assert any("is constant in the reference" in note for note in report["notes"])
    assert report["threads"] == 1
    convs = [layer for layer in report["layers"] if layer["op"] == "conv"]
    assert len(convs) == 26 and {layer["algorithm"] for layer in convs} == {"im2col"}
    for layer in report["layers"]:
        assert set(layer) >= {"name", "op", "algorithm", "time_s", "workspace_bytes"}
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (1, 1000, 1, 1)


def test_run_falls_back_and_says_so(tmp_path) -> None:
    result = convplan("run", "onnx:squeezenet", "--algorithm", "winograd-2x2-3x3", "--json",
                      "--threads", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert any("winograd-2x2-3x3 cannot run it" in note for note in report["notes"])
    used = {layer["algorithm"] for layer in report["layers"] if layer["op"] == "conv"}
    assert "winograd-2x2-3x3" in used and len(used) > 1


def test_run_with_a_plan_and_a_json_description(tmp_path) -> None:
    description = {"name": "tiny", "inputs": [{"name": "x", "shape": [1, 3, 16, 16]}],
                   "layers": [{"name": "c1", "op": "conv", "inputs": ["x"], "out_channels": 8,
                               "kernel": 3, "padding": 1},
                              {"name": "r1", "op": "relu", "inputs": ["c1"]},
                              {"name": "c2", "op": "conv", "inputs": ["r1"], "out_channels": 4,
                               "kernel": 1}]}
    (tmp_path / "net.json").write_text(json.dumps(description))
    (tmp_path / "plan.json").write_text(json.dumps(
        {"assignment": {"c1": "kn2row-aa-nhwc", "c2": "conv1x1"}}))
    result = convplan("run", str(tmp_path / "net.json"), "--plan", str(tmp_path / "plan.json"),
                      "--check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(x["name"], x["algorithm"]) for x in report["layers"] if x["op"] == "conv"] == [
        ("c1", "kn2row-aa-nhwc"), ("c2", "conv1x1")]
    assert any(x["op"] == "transform" for x in report["layers"])
    assert report["max_abs_error"] < 1e-4
    # a plan is strict: an algorithm that cannot run its layer is an error
    (tmp_path / "bad.json").write_text(json.dumps({"assignment": {"c1": "im2col",
                                                                 "c2": "winograd-2x2-3x3"}}))
    result = convplan("run", str(tmp_path / "net.json"), "--plan", str(tmp_path / "bad.json"))
    assert result.returncode == 2 and "cannot run it" in result.stderr


@pytest.mark.parametrize("content", [b"{not json", b'{"inputs": [{"name": "x", "shape": [1]}], '
                                     b'"layers": [{"name": "a", "op": "nope", "inputs": ["x"]}]}',
                                     b"\x08\x01garbage"])
def test_run_bad_models_are_clear_errors(tmp_path, content: bytes) -> None:
    suffix = ".onnx" if content.startswith(b"\x08") else ".json"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(content)
    result = convplan("run", str(path))
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["no-such-model"], ["onnx:squeezenet", "--algorithm", "fft"],
                                  ["onnx:squeezenet", "--plan", "/nonexistent/plan.json"],
                                  ["onnx:squeezenet", "--algorithm", "im2col", "--plan", "p"]])
def test_run_bad_arguments_are_clear_errors(args: list[str]) -> None:
    result = convplan("run", *args)
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_run_wrong_input_shape_is_a_clear_error(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    result = convplan("run", "onnx:squeezenet", "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 2 and "expects [1, 3, 224, 224]" in result.stderr


def test_plan_then_run_the_plan(tmp_path) -> None:
    """Measured costs (a small budget), a binding cap, the plan file, then `run --plan`."""
    db = tmp_path / "costs.sqlite"
    low = json.loads(convplan("plan", "onnx:squeezenet", "--threads", "1", "--budget-seconds",
                              "0.01", "--memory-cap", "1GiB", "--json", db=db).stdout)
    assert low["costs"] == "measured" and low["solver"]["optimal"]
    cap = (low["baselines"]["lowest_memory"]["peak_bytes"] + low["predicted"]["peak_bytes"]) // 2
    plan_file = tmp_path / "plan.json"
    result = convplan("plan", "onnx:squeezenet", "--threads", "1", "--memory-cap", str(cap),
                      "--out", str(plan_file), db=db)
    assert result.returncode == 0, result.stderr
    assert "this plan" in result.stdout and "lowest memory" in result.stdout
    plan = json.loads(plan_file.read_text())
    assert plan["predicted"]["peak_bytes"] <= cap == plan["memory_cap_bytes"]
    result = convplan("run", "onnx:squeezenet", "--plan", str(plan_file), "--check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["threads"] == 1                     # the plan's thread count
    assert report["measured_peak_bytes"] <= report["predicted_peak_bytes"] <= cap
    assert report["predicted_peak_bytes"] == plan["predicted"]["peak_bytes"]
    assert report["max_rel_error"] < 1e-5
    chosen = {x["name"]: x["algorithm"] for x in report["layers"] if x["op"] == "conv"}
    assert chosen == plan["assignment"]


def test_plan_errors_are_clear(tmp_path) -> None:
    db = tmp_path / "costs.sqlite"
    result = convplan("plan", "onnx:squeezenet", "--memory-cap", "24 parsecs", db=db)
    assert result.returncode == 2 and "cannot read '24 parsecs' as a size" in result.stderr
    # below the weights alone: refused before any cost is looked up, naming both sizes
    result = convplan("plan", "onnx:squeezenet", "--memory-cap", "1MiB", "--no-profile", db=db)
    assert result.returncode == 2 and "smallest achievable peak is" in result.stderr
    assert "1048576 bytes is below the weights of 'onnx:squeezenet' alone" \
        in result.stderr
    # above the weights but below what any plan needs: the planner says what it needs
    result = convplan("plan", "onnx:squeezenet", "--memory-cap", "5MiB", "--no-profile", db=db)
    assert result.returncode == 2, result.stderr
    assert re.search(r"smallest achievable peak is \d+ bytes", result.stderr), result.stderr
    result = convplan("plan", "onnx:squeezenet", "--solver", "gurobi", "--no-profile", db=db)
    assert result.returncode == 2
    assert "unknown solver 'gurobi'; use one of cbc, highs" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists() or "analytic" not in db.read_bytes().decode(errors="ignore")


def test_an_arena_cap_bounds_the_plan_s_arena_and_a_smaller_one_states_the_least(tmp_path
                                                                                ) -> None:
    db = tmp_path / "costs.sqlite"
    free = json.loads(convplan("plan", "onnx:squeezenet", "--no-profile", "--json",
                               db=db).stdout)
    im2col = free["baselines"]["im2col"]["arena_bytes"]
    result = convplan("plan", "onnx:squeezenet", "--no-profile", "--arena-cap",
                      str(im2col // 10), db=db)
    match = re.search(r"smallest achievable arena is (\d+) bytes", result.stderr)
    assert result.returncode == 2 and match, result.stderr
    least = int(match.group(1))
    plan = json.loads(convplan("plan", "onnx:squeezenet", "--no-profile", "--arena-cap",
                               str(least), "--json", db=db).stdout)
    assert plan["arena_cap_bytes"] == least >= plan["predicted"]["arena_bytes"]
    assert plan["predicted"]["arena_bytes"] >= plan["predicted"]["max_live_bytes"]
    result = convplan("plan", "onnx:squeezenet", "--arena-cap", "0", db=db)
    assert result.returncode == 2 and "arena cap must be positive" in result.stderr


@pytest.mark.parametrize("solver", ["cbc", "highs"])
def test_no_profile_plans_say_their_costs_are_estimates(tmp_path, solver: str) -> None:
    result = convplan("plan", "googlenet", "--no-profile", "--json", "--solver", solver,
                      db=tmp_path / "c.sqlite")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)        # nothing but the plan on stdout (no solver banner)
    assert plan["costs"] == "analytic" and plan["solver"]["name"] == solver
    assert all(c["source"] == "analytic" for layer in plan["layers"]
               for c in layer["candidates"])


def test_pareto_json_and_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "pareto.png"
    result = convplan("pareto", "googlenet", "--no-profile", "--points", "5", "--json",
                      "--plot", str(png), db=tmp_path / "c.sqlite")
    assert result.returncode == 0, result.stderr
    frontier = json.loads(result.stdout)
    assert list(frontier) == ["network", "threads", "costs", "points", "baselines"]
    assert frontier["costs"] == "analytic"          # as /v1/pareto says it
    peaks = [p["peak_bytes"] for p in frontier["points"]]
    times = [p["time_s"] for p in frontier["points"]]
    assert peaks == sorted(peaks) and times == sorted(times, reverse=True)
    assert set(frontier["baselines"]) == {"fastest", "im2col", "greedy", "lowest_memory"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
