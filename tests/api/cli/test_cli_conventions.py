"""The command line's conventions: --version, -h on every command, shell completion, choices
for enumerations, fail-fast checks before expensive work, one literal error path, and a
start-up that imports nothing heavy (checked structurally: which modules get loaded)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import convplan
from convplan.api.cli import app, common
from tests.support import ROOT
from tests.support.cli import CONVPLAN, CORES, MARKUP, TINY, cli, one_error

TINY_CONV_BYTES = (4 * 4 * 3 * 3 + 4 + 8 * 4 + 8) * 4   # two convolutions
HEAVY = ("numpy", "onnx", "onnxruntime", "pulp", "fastapi", "uvicorn", "pydantic",
         "scipy", "convplan.kernels", "convplan.selector", "convplan.profiles",
         "convplan.api.service", "convplan.api.batch")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    return tmp_path


def _command_paths() -> list[list[str]]:
    """Every command and group of the real app, as the words that name it."""
    group = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command, words: list[str]) -> None:
        paths.append(words)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])

    walk(group, [])
    return paths


# -- --version, -h, completion --------------------------------------------------------------------
def test_version_prints_the_package_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"convplan {convplan.__version__}\n"


def test_every_command_takes_h_as_well_as_help() -> None:
    paths = _command_paths()
    assert {"plan", "run", "profile", "batch", "serve"} <= {p[0] for p in paths if p}
    assert ["profiles", "list"] in paths
    for words in paths:
        short = CliRunner().invoke(app, [*words, "-h"])
        long = CliRunner().invoke(app, [*words, "--help"])
        assert short.exit_code == 0, (words, short.output)
        assert short.output == long.output and "Usage:" in short.output, words
        assert "-h, --help" in short.output, words


def test_shell_completion_is_on_and_completes_choices(tmp_path: Path) -> None:
    text = CliRunner().invoke(app, ["--help"]).output
    assert "--install-completion" in text and "--show-completion" in text
    env = {**os.environ, "_CONVPLAN_COMPLETE": "complete_bash",
           "COMP_WORDS": "convplan plan x --solver h", "COMP_CWORD": "4"}
    result = subprocess.run([str(CONVPLAN)], capture_output=True, text=True, env=env,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["highs"]


# -- choices -----------------------------------------------------------------------------------
def test_the_static_choices_are_the_registries() -> None:
    """`--help` must not import the kernels or PuLP to list them, so they are written out in
    common.py: they must be exactly what the registries hold."""
    import uvicorn.config

    from convplan.kernels import registry
    from convplan.selector.planning import SOLVERS

    assert tuple(registry.names()) == common.ALGORITHMS
    assert tuple(SOLVERS) == common.SOLVERS
    assert tuple(uvicorn.config.LOG_LEVELS) == common.LOG_LEVELS


@pytest.mark.parametrize("command, option, names", [
    ("plan", "--solver", common.SOLVERS), ("pareto", "--solver", common.SOLVERS),
    ("batch", "--solver", common.SOLVERS), ("run", "--algorithm", common.ALGORITHMS),
    ("serve", "--log-level", common.LOG_LEVELS)])
def test_help_lists_the_choices(command: str, option: str, names: tuple[str, ...]) -> None:
    text = CliRunner().invoke(app, [command, "--help"]).output
    assert f"{option} [{'|'.join(names)}]" in " ".join(text.split())


@pytest.mark.parametrize("args, words", [
    (["plan", "tiny.json", "--solver", "gurobi"], ["unknown solver 'gurobi'; use one of cbc"]),
    (["plan", "tiny.json", "--solver", MARKUP], [f"unknown solver '{MARKUP}'"]),
    (["run", "tiny.json", "--algorithm", "fft"], ["unknown algorithm 'fft'", "im2col"]),
    (["serve", "--log-level", "loud"], ["unknown log level 'loud'", "debug"]),
])
def test_a_bad_choice_is_one_error_line(tiny: Path, args: list[str], words: list[str]) -> None:
    one_error(cli(*args, "--db", "c.sqlite", cwd=tiny) if args[0] == "plan"
              else cli(*args, cwd=tiny), *words)
    assert not (tiny / "c.sqlite").exists()


# -- --threads ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["plan", "pareto", "run", "profile", "compare", "batch"])
@pytest.mark.parametrize("threads", ["0", str(CORES + 1)])
def test_threads_is_one_to_the_cores(monkeypatch: pytest.MonkeyPatch, tiny: Path, command: str,
                                     threads: str) -> None:
    monkeypatch.chdir(tiny)
    model = "c=4,h=8,w=8,m=4,k=3" if command == "compare" else "tiny.json"
    extra = ["--memory-cap", "1MiB", "--out", "out"] if command == "batch" else []
    result = CliRunner().invoke(app, [command, model, *extra, "--threads", threads])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --threads must be between 1 and {CORES}")
    assert not (tiny / "out").exists()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity")
def test_threads_above_the_usable_cores_is_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                     tiny: Path) -> None:
    monkeypatch.chdir(tiny)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())       # no usable core
    result = CliRunner().invoke(app, ["plan", "tiny.json", "--threads", "1", "--time-limit",
                                      "0"])
    warning, error = result.stderr.splitlines()
    assert warning.startswith("warning: --threads 1 is more than the 0 core(s)")
    assert error.startswith("error: --time-limit must be a finite number above 0")


# -- fail fast ----------------------------------------------------------------------------------
def test_a_cap_below_the_weights_is_refused_before_profiling(tiny: Path) -> None:
    result = cli("plan", "tiny.json", "--memory-cap", str(TINY_CONV_BYTES - 1), "--db",
                 "c.sqlite", cwd=tiny)
    one_error(result,
              f"{TINY_CONV_BYTES - 1} bytes is below the weights of 'tiny' alone",
              f"({TINY_CONV_BYTES} bytes")
    assert not (tiny / "c.sqlite").exists()             # nothing measured, no store opened
    # at the weights, the planner decides (and states the smallest achievable peak)
    result = cli("plan", "tiny.json", "--memory-cap", str(TINY_CONV_BYTES), "--no-profile",
                 "--db", "c.sqlite", cwd=tiny)
    one_error(result, "smallest achievable peak is")


def test_every_weight_the_run_holds_bounds_the_cap(tmp_path: Path) -> None:
    """AlexNet's classifier holds 95% of its weights (222 MiB); the promise counts them, so a
    cap above what the convolutions hold but below the classifier is refused, naming the
    smallest achievable peak, and a cap above all the weights plans."""
    result = cli("plan", "alexnet", "--memory-cap", "64MiB", "--no-profile", "--db",
                 "c.sqlite", "--json", cwd=tmp_path)
    one_error(result, "67108864 bytes is below the weights of 'alexnet' alone",
              "smallest achievable peak is")
    assert not (tmp_path / "c.sqlite").exists()         # refused before any cost is read
    least = int(re.search(r"smallest achievable peak is (\d+) bytes", result.stderr)[1])
    assert 222 * 2**20 < least <= 240 * 2**20
    result = cli("plan", "alexnet", "--memory-cap", str(least), "--no-profile", "--db",
                 "c.sqlite", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr        # the stated minimum is met
    plan = json.loads(result.stdout)
    assert plan["predicted"]["peak_bytes"] <= least


@pytest.mark.parametrize("out, reason", [("missing/plan.json", "No such file or directory"),
                                         (".", "Is a directory"),
                                         (f"{MARKUP}/plan.json", "No such file")])
def test_an_unwritable_out_is_refused_before_profiling(tiny: Path, out: str, reason: str
                                                       ) -> None:
    one_error(cli("plan", "tiny.json", "--out", out, "--db", "c.sqlite", cwd=tiny),
              f"cannot write --out {out}: {reason}")
    assert not (tiny / "c.sqlite").exists()


def test_the_out_probe_leaves_nothing_behind(tiny: Path) -> None:
    """--out is checked by opening it; a plan that then fails leaves no empty file, and an
    existing file is left as it was."""
    one_error(cli("plan", "tiny.json", "--out", "p.json", "--memory-cap", "1000",
                  "--no-profile", "--db", "c.sqlite", cwd=tiny), "smallest achievable")
    assert not (tiny / "p.json").exists()
    (tiny / "old.json").write_text("kept")
    one_error(cli("plan", "tiny.json", "--out", "old.json", "--memory-cap", "1000",
                  "--no-profile", "--db", "c.sqlite", cwd=tiny), "smallest achievable")
    assert (tiny / "old.json").read_text() == "kept"


@pytest.mark.parametrize("args", [["run", "tiny.json", "--output", "missing/y.npy"],
                                  ["pareto", "tiny.json", "--plot", "missing/p.png"]])
def test_run_output_and_pareto_plot_are_checked_first(tiny: Path, args: list[str]) -> None:
    one_error(cli(*args, "--threads", "1", *(["--db", "c.sqlite"] if args[0] == "pareto"
                                            else []), cwd=tiny),
              f"cannot write {args[2]} {args[3]}")
    assert not (tiny / "c.sqlite").exists()


def test_a_plan_for_another_network_is_refused_naming_both(tiny: Path) -> None:
    (tiny / "plan.json").write_text(json.dumps(
        {"network": "vgg16", "assignment": {"c1": "im2col", "c2": "conv1x1"}}))
    one_error(cli("run", "tiny.json", "--plan", "plan.json", cwd=tiny),
              "plan.json was made for network 'vgg16', not 'tiny'")


# -- one error path -------------------------------------------------------------------------------
def test_only_common_writes_to_stderr() -> None:
    """Every message goes through common.fail / common.warn (literal, one line): no other
    module builds a console or writes to stderr itself."""
    folder = ROOT / "api" / "cli"
    for path in folder.glob("*.py"):
        if path.name == "common.py":
            continue
        source = path.read_text()
        for pattern in (r"Console\(", r"sys\.stderr", r"err=True", r"from rich import print",
                        r"rich\.print"):
            assert not re.search(pattern, source), (path.name, pattern)


def test_fail_prints_markup_literally(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as raised:
        common.fail(f"bad {MARKUP} and [bold]x[/bold] :smile:\nsecond line")
    assert raised.value.exit_code == 2
    assert capsys.readouterr().err == f"error: bad {MARKUP} and [bold]x[/bold] :smile: " \
                                      "second line\n"


# -- start-up -----------------------------------------------------------------------------------
_MODULES = """
import json, sys
sys.argv = ["convplan", *sys.argv[1:]]
try:
    {load}
finally:
    sys.__stderr__.write("\\nMODULES " + json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("args", [[], ["--help"], ["plan", "--help"], ["--version"]])
def test_start_up_imports_nothing_heavy(args: list[str]) -> None:
    """Importing the app (and `--help`, `plan --help`, `--version`) loads typer, rich and the
    standard library only: NumPy, ONNX, PuLP, FastAPI, NetworkX, pydantic and convplan's
    own computing packages wait for a command that needs them."""
    load = "import convplan.api.cli.app" if not args else \
        "from convplan.cli import app; app()"
    result = subprocess.run([sys.executable, "-c", _MODULES.format(load=load), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stderr.rsplit("MODULES ", 1)[1])
    assert "convplan.api.cli.planning" in modules
    loaded = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == []


def test_read_plan_keeps_its_old_name() -> None:
    """`from convplan.api.cli import _read_plan` (what tests/test_batch.py uses) still works,
    lazily."""
    from convplan.api.cli import _read_plan
    from convplan.api.cli.running import read_plan

    assert _read_plan is read_plan
    with pytest.raises(ImportError):
        from convplan.api.cli import no_such_name  # noqa: F401
