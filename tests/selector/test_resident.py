"""The promise at the process level: the resident memory a `convplan run` adds (its peak, over
the process just before the model is loaded) stays within the footprint it reports, on every
built-in and light model, with and without caps, while tracemalloc's traced peak stays within
the memory model's. Real processes, real RSS (VmHWM), not tracemalloc."""

from __future__ import annotations

import json
import mmap
import os
import re
from pathlib import Path

import numpy as np
import pytest

from convplan.selector import resident
from convplan.selector.network import zoo
from convplan.selector.resident import (
    BLAS_THREAD_BUFFER_BYTES,
    RUNTIME_ALLOWANCE_BYTES,
    ResidentPeak,
    footprint_of,
)
from tests.support.cli import cli

MiB = 2**20
pytestmark = pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                                reason="needs Linux's /proc/self/clear_refs to restart the "
                                       "high-water mark")


def _run(cwd: Path, *args: str) -> dict:
    done = cli("run", *args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _held_to_the_promise(report: dict) -> None:
    growth = report["rss_peak_growth_bytes"]
    assert growth is not None and report["rss_baseline_bytes"] > 0
    assert report["measured_peak_bytes"] <= report["predicted_peak_bytes"]
    assert report["footprint_bytes"] == footprint_of(report["predicted_peak_bytes"],
                                                     report["threads"])
    # the measurement sees every weight (held once: a second copy of the prepared ones would
    # not fit under the footprint wherever they outweigh the allowance)
    assert report["weight_bytes"] <= growth <= report["footprint_bytes"], (
        growth / MiB, report["footprint_bytes"] / MiB)
    assert report["weights_released"]


@pytest.mark.parametrize("model", zoo.names())
def test_a_run_stays_within_its_footprint_in_resident_memory(tmp_path: Path, model: str
                                                             ) -> None:
    _held_to_the_promise(_run(tmp_path, model, "--threads", "1"))


def test_a_second_copy_of_the_weights_would_break_the_footprint(tmp_path: Path) -> None:
    """The allowance is too small to hide a second copy of the prepared weights: holding the
    originals beside them, as runs once did, would be caught (ResNet-50 under im2row, whose
    prepared weights are all copies)."""
    report = _run(tmp_path, "resnet50", "--algorithm", "im2row", "--threads", "1")
    _held_to_the_promise(report)
    assert report["prepared_bytes"] > report["footprint_bytes"] - report["rss_peak_growth_bytes"]


def test_plans_under_caps_stay_within_their_footprint(tmp_path: Path) -> None:
    """GoogLeNet under a memory cap a hair above its lowest plan's peak, SqueezeNet under the
    smallest arena cap it can meet (half im2col's arena is refused, stating that minimum): the
    memory-lean algorithms those caps force keep the resident promise too."""
    db = str(tmp_path / "costs.sqlite")
    for model, cap_option in (("googlenet", "--memory-cap"), ("onnx:squeezenet", "--arena-cap")):
        free = cli("plan", model, "--no-profile", "--db", db, "--threads", "1", "--json",
                   cwd=tmp_path)
        assert free.returncode == 0, free.stderr
        baselines = json.loads(free.stdout)["baselines"]
        cap = int(baselines["lowest_memory"]["peak_bytes"] * 1.01) \
            if cap_option == "--memory-cap" else baselines["im2col"]["arena_bytes"] // 2
        plan = tmp_path / f"{model.replace(':', '_')}.json"
        made = cli("plan", model, "--no-profile", "--db", db, "--threads", "1", cap_option,
                   str(cap), "--out", plan, cwd=tmp_path)
        if cap_option == "--arena-cap":
            assert made.returncode == 2
            minimum = re.search(r"smallest achievable arena is (\d+) bytes", made.stderr)
            assert minimum is not None, made.stderr
            cap = int(minimum.group(1))
            made = cli("plan", model, "--no-profile", "--db", db, "--threads", "1",
                       cap_option, str(cap), "--out", plan, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        document = json.loads(plan.read_text())
        report = _run(tmp_path, model, "--plan", str(plan))
        _held_to_the_promise(report)
        bounded = document["predicted"]["peak_bytes"] if cap_option == "--memory-cap" \
            else report["arena_bytes"]
        assert bounded <= cap


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_a_two_thread_run_stays_within_its_footprint(tmp_path: Path) -> None:
    report = _run(tmp_path, "resnet50", "--threads", "2")
    assert report["threads"] == 2
    assert report["footprint_bytes"] == report["predicted_peak_bytes"] + \
        RUNTIME_ALLOWANCE_BYTES + BLAS_THREAD_BUFFER_BYTES
    _held_to_the_promise(report)


def test_a_check_is_not_counted_in_the_run_s_growth(tmp_path: Path) -> None:
    """`--check` loads onnxruntime after the run: the growth is the run's alone."""
    plain = _run(tmp_path, "onnx:squeezenet", "--threads", "1")
    checked = _run(tmp_path, "onnx:squeezenet", "--threads", "1", "--check")
    assert checked["max_rel_error"] is not None
    _held_to_the_promise(checked)
    assert abs(checked["rss_peak_growth_bytes"] - plain["rss_peak_growth_bytes"]) < 8 * MiB


# -- the measurement itself ---------------------------------------------------------------------
def test_the_resident_peak_sees_memory_touched_and_freed_inside_it() -> None:
    with ResidentPeak() as peak:
        block = np.ones(48 * MiB // 8)          # touched: resident
        del block                               # gone before the end: the peak remembers
    assert peak.baseline_bytes is not None and peak.growth_bytes is not None
    assert 46 * MiB <= peak.growth_bytes <= 64 * MiB


def test_the_resident_peak_ignores_what_comes_after_stop() -> None:
    with ResidentPeak() as peak:
        small = np.ones(1 * MiB // 8)
        peak.stop()
        later = np.ones(64 * MiB // 8)
        del later, small
    assert peak.growth_bytes is not None and peak.growth_bytes < 32 * MiB


def test_without_a_restart_a_higher_past_gives_no_number(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Where the high-water mark cannot restart, a process that stood higher before cannot
    tell this work's peak: None, never a guess."""
    spike = mmap.mmap(-1, 64 * MiB)             # mapped and unmapped here, whatever malloc does
    spike.write(b"x" * (64 * MiB))              # touched: resident
    spike.close()                               # the mark now stands above the resident size
    monkeypatch.setattr(resident, "_CLEAR_REFS", tmp_path / "no-clear-refs")
    with ResidentPeak() as peak:
        np.ones(1024).sum()
    assert peak.baseline_bytes is not None and peak.growth_bytes is None
