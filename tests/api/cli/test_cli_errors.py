"""The `convplan` console script, run as a user runs it: option checks shared by every command,
cost-store warnings and errors during plan/pareto, and bad input of every command as one
literal `error:` line with exit 2."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.support.cli import CORES, MARKUP, TINY, cli, one_error
from tests.support.stores import spoil_a_row


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny.json and a store holding its measured costs (1 thread)."""
    folder = tmp_path_factory.mktemp("followups")
    (folder / "tiny.json").write_text(json.dumps(TINY))
    result = cli("profile", "tiny.json", "--db", "costs.sqlite", "--threads", "1",
                 "--budget-seconds", "0.002", "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["measured"] > 0
    return folder


def store_copy(work: Path, name: str) -> Path:
    """A copy of the measured store at ``name`` (under ``work``; folders made as needed)."""
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "costs.sqlite", path)
    return path


# -- 1. --threads, the durations and the choices, before any work -----------------------------
BAD_OPTIONS = [
    (["profile", "tiny.json", "--threads", "0"], "--threads must be between 1 and"),
    (["profile", "tiny.json", "--threads", str(CORES + 1)], f"got {CORES + 1}"),
    (["profile", "tiny.json", "--budget-seconds", "nan"], "--budget-seconds must be a finite"),
    (["profile", "tiny.json", "--budget-seconds", "inf"], "above 0, got inf"),
    (["profile", "tiny.json", "--budget-seconds", "0"], "above 0, got 0"),
    (["profile", "tiny.json", "--budget-seconds", "-1"], "above 0, got -1"),
    (["batch", "tiny.json", "--threads", "0"], "--threads must be between 1 and"),
    (["batch", "tiny.json", "--threads", str(CORES + 1)], f"got {CORES + 1}"),
    (["batch", "tiny.json", "--budget-seconds", "nan"], "--budget-seconds must be a finite"),
    (["batch", "tiny.json", "--time-limit", "inf"], "--time-limit must be a finite"),
    (["batch", "tiny.json", "--timeout-seconds", "0"], "--timeout-seconds must be a finite"),
    (["batch", "tiny.json", "--timeout-seconds", "-1"], "--timeout-seconds must be a finite"),
    # the same declarations (api/cli/common.py) check plan, pareto and run alike
    (["plan", "tiny.json", "--threads", "0"], "--threads must be between 1 and"),
    (["plan", "tiny.json", "--budget-seconds", "0"], "--budget-seconds must be a finite"),
    (["pareto", "tiny.json", "--time-limit", "-1"], "--time-limit must be a finite"),
    (["pareto", "tiny.json", "--solver", "gurobi"], "unknown solver 'gurobi'"),
    (["run", "tiny.json", "--threads", str(CORES + 1)], f"got {CORES + 1}"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS)
def test_every_command_checks_threads_and_seconds(tmp_path: Path, args: list[str],
                                                     message: str) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    extra = ["--memory-cap", "1MiB", "--out", "out", "--no-profile"] if args[0] == "batch" \
        else []
    db = [] if args[0] == "run" else ["--db", "c.sqlite"]
    one_error(cli(*args, *extra, *db, cwd=tmp_path), message)
    assert not (tmp_path / "c.sqlite").exists()        # refused before the store is opened
    assert not (tmp_path / "out").exists()              # ... and before any output


def test_batch_on_a_scheduler_leaves_threads_to_its_machines(tmp_path: Path) -> None:
    """Its workers may have more cores than this machine: only --threads 0 is refused."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    result = cli("batch", "tiny.json", "--memory-cap", "1MiB", "--out", "out", "--no-profile",
                 "--threads", str(CORES + 1), "--scheduler", "tcp://127.0.0.1:1",
                 "--connect-timeout", "1", cwd=tmp_path)
    line = one_error(result)
    assert "--threads" not in line and "127.0.0.1:1" in line


@pytest.mark.skipif(CORES < 2 or not hasattr(os, "sched_setaffinity"),
                    reason="needs two cores and CPU affinity")
def test_profile_warns_above_the_cores_it_may_run_on(tmp_path: Path) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    result = cli("profile", "tiny.json", "--threads", "2", "--budget-seconds", "0",
                 "--db", "c.sqlite", cwd=tmp_path,
                 preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert result.returncode == 2
    warning, error = result.stderr.splitlines()
    assert warning.startswith("warning: --threads 2 is more than the 1 core(s)")
    assert error.startswith("error: --budget-seconds")


# -- 2. cost-store warnings and errors in plan and pareto -------------------------------------
@pytest.mark.parametrize("command", ["plan", "pareto"])
def test_a_bad_row_is_one_warning_line(work: Path, command: str) -> None:
    db = store_copy(work, f"bad-{command}/{MARKUP}.sqlite")     # the path holds markup, too
    key, candidate = spoil_a_row(db)
    result = cli(command, "tiny.json", "--db", db, "--no-profile", "--threads", "1", "--json",
                 cwd=work)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)                           # stdout is still the JSON alone
    assert "StoreWarning" not in result.stderr and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"warning: cost store {db}: ignored 1 invalid row(s)")
    assert f"conv/{key}/{candidate}" in line and "'garbage'" in line


def _damaged(path: Path) -> None:
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + b"\xab" * 512 + data[middle + 512:])


def _foreign(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path)
    raw.executescript("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann');")
    raw.commit()
    raw.close()


@pytest.mark.parametrize("command", ["plan", "pareto"])
@pytest.mark.parametrize("damage", ["512 bytes overwritten", "another program's database"])
def test_an_unusable_store_is_one_error_line(work: Path, command: str, damage: str) -> None:
    db = work / f"{damage.split()[0]}-{command}" / f"{MARKUP}.sqlite"
    if damage == "512 bytes overwritten":
        _damaged(store_copy(work, str(db.relative_to(work))))
    else:
        _foreign(db)
    before = db.read_bytes()
    one_error(cli(command, "tiny.json", "--db", db, "--threads", "1", "--budget-seconds",
                  "0.002", cwd=work), f"{db} is not a usable convplan cost store")
    assert db.read_bytes() == before                    # left as it was


# -- 3. bad input of every command: one literal line, exit 2 ----------------------------------
BAD_INPUT = {
    "run: no such file": (["run", f"{MARKUP}.json"], [f"'{MARKUP}.json'"]),
    "run: bad number": (["run", "tiny.json", "--threads", "many"], ["'--threads'"]),
    "run: markup algorithm": (["run", "tiny.json", "--algorithm", MARKUP],
                              [f"unknown algorithm '{MARKUP}'"]),
    "run: no such plan": (["run", "tiny.json", "--plan", f"{MARKUP}.json"],
                          [f"cannot read plan {MARKUP}.json"]),
    "plan: no such file": (["plan", f"{MARKUP}.onnx", "--no-profile"], [f"'{MARKUP}.onnx'"]),
    "plan: bad number": (["plan", "tiny.json", "--time-limit", "nan"], ["--time-limit"]),
    "plan: markup size": (["plan", "tiny.json", "--memory-cap", MARKUP],
                          [f"cannot read '{MARKUP}' as a size"]),
    "plan: emoji code": (["plan", "tiny.json", "--solver", ":smile:"], ["':smile:'"]),
    "plan: unknown option": (["plan", "tiny.json", f"--{MARKUP}"], [f"--{MARKUP}"]),
    "pareto: no such file": (["pareto", f"{MARKUP}.json"], [f"'{MARKUP}.json'"]),
    "pareto: bad number": (["pareto", "tiny.json", "--points", "1"], ["'--points'"]),
    "profile: no such file": (["profile", f"{MARKUP}.json"], [f"'{MARKUP}.json'"]),
    "profile: bad number": (["profile", "tiny.json", "--budget-seconds", "x"],
                            ["'--budget-seconds'"]),
    "compare: markup layer": (["compare", MARKUP], [f"cannot read layer '{MARKUP}'"]),
    "compare: bad number": (["compare", "c=8,h=8,w=8,m=8,k=3", "--threads", "0"],
                            ["--threads must be"]),
    "batch: no such file": (["batch", f"{MARKUP}.json", "--memory-cap", "1MiB", "--out", "o"],
                            [f"'{MARKUP}.json'"]),
    "batch: markup size": (["batch", "tiny.json", "--memory-cap", MARKUP, "--out", "o"],
                           [f"'{MARKUP}'"]),
    "profiles import: no such file": (["profiles", "import", f"{MARKUP}.json"],
                                      [f"cannot read {MARKUP}.json"]),
    "profiles import: not an export": (["profiles", "import", "markup.json"],
                                       ["not a valid convplan cost export"]),
    "profiles export: no such folder": (["profiles", "export", f"{MARKUP}/out.json"],
                                        [f"cannot write {MARKUP}/out.json"]),
    "profiles list: not a store": (["profiles", "list", "--db", f"{MARKUP}.sqlite"],
                                   [f"{MARKUP}.sqlite is not a usable convplan cost store"]),
    "unknown command": ([MARKUP], [f"'{MARKUP}'"]),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_literal_error_line(tmp_path: Path, case: str) -> None:
    args, words = BAD_INPUT[case]
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    (tmp_path / "markup.json").write_text(json.dumps({"format": MARKUP}))
    (tmp_path / "[").mkdir()                            # so "[/x].sqlite" is a file ...
    (tmp_path / f"{MARKUP}.sqlite").write_bytes(b"[/x] not a database " * 50)
    db = [] if args[0] in ("compare", "run") or "--db" in args else ["--db", "c.sqlite"]
    one_error(cli(*args, *db, cwd=tmp_path), *words)


def test_markup_in_names_is_printed_literally(work: Path, tmp_path: Path) -> None:
    """Names and paths in ordinary output are text, not markup (a table title once raised)."""
    net = json.loads(json.dumps(TINY))
    net["name"] = f"{MARKUP} :smile:"
    net["layers"][0]["name"] = f"c{MARKUP}"
    net["layers"][1]["inputs"] = [f"c{MARKUP}"]
    (tmp_path / "net.json").write_text(json.dumps(net))
    result = cli("plan", "net.json", "--no-profile", "--threads", "1", "--db", "c.sqlite",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{MARKUP} :smile:: plan" in result.stdout and f"c{MARKUP}" in result.stdout
    db = store_copy(work, f"listed/{MARKUP}.sqlite")
    result = cli("profiles", "list", "--db", db)
    assert result.returncode == 0, result.stderr
    assert f"cost store {db}" in " ".join(result.stdout.split())
