"""The process holds each weight once: `convplan run` drops each convolution's original once
it is prepared, so the resident memory a run adds stays near the promise (real RSS, a fresh
process, not tracemalloc)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import TINY
from tests.support.processes import convplan_with_peak

MiB = 2**20

def _run(cwd: Path, *args: str) -> tuple[dict, int]:
    """(the --json report, peak RSS in bytes) of ``convplan ARGS --json`` in a new process."""
    result, peak = convplan_with_peak([*args, "--json"], cwd=cwd, timeout_s=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), peak


#: What the process may add beyond the predicted peak, per model: OpenBLAS's buffers (8 MiB),
#: tracemalloc's own traces, malloc's slack and, for ResNet-50, the onnx package its built-in
#: description is read with (the one-layer baseline imports neither). Measured: +23 MiB and
#: +1.5 MiB. Holding the convolutions' originals beside their prepared copies, as before,
#: added their 90 and 56 MiB: 235 MiB against 108 predicted, 611 against 553.
SLACK_MIB = {"resnet50": 40, "vgg16": 32}


@pytest.mark.parametrize("model", sorted(SLACK_MIB))
def test_a_run_holds_each_weight_once(tmp_path: Path, model: str) -> None:
    """The peak RSS growth of ``convplan run MODEL`` over running a one-layer network stays
    within `SLACK_MIB` of the predicted peak, less than a second copy of the convolutions'
    weights."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    _, baseline = _run(tmp_path, "run", "tiny.json", "--threads", "1")
    report, peak = _run(tmp_path, "run", model, "--threads", "1")
    assert report["weights_released"]
    slack = SLACK_MIB[model] * MiB
    assert report["prepared_bytes"] > slack             # a second copy would not fit
    growth = peak - baseline
    assert growth <= report["predicted_peak_bytes"] + slack, (
        growth / MiB, report["predicted_peak_bytes"] / MiB)
    assert growth >= report["weight_bytes"]             # the measurement sees the weights
