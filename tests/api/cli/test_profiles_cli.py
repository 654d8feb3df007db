"""`convplan profile` and `convplan profiles ...`, registered on a fresh app (the real `convplan`
app registers the same commands)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from convplan.api.cli.profiles import register

NET = {"name": "tiny", "inputs": [{"name": "x", "shape": [1, 4, 8, 8]}],
       "layers": [{"name": "c1", "op": "conv", "inputs": ["x"], "out_channels": 4, "kernel": 3,
                   "padding": 1},
                  {"name": "r1", "op": "relu", "inputs": ["c1"]},
                  {"name": "c2", "op": "conv", "inputs": ["r1"], "out_channels": 4, "kernel": 3,
                   "padding": 1},
                  {"name": "p", "op": "maxpool", "inputs": ["c2"], "kernel": 2, "stride": 2},
                  {"name": "f", "op": "flatten", "inputs": ["p"]}]}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def other() -> None:  # a second command, as in the real app
        """Stand-in for the rest of convplan."""

    register(app)
    return app


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "net.json"
    path.write_text(json.dumps(NET))
    return path


def invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, list(args))


def test_profile_measures_once_then_reads_the_store(app, net: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "costs.sqlite")
    args = ("profile", str(net), "--db", db, "--threads", "1", "--budget-seconds", "0.005",
            "--json")
    result = invoke(app, *args)
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    # c1 and c2 are one spec; 4-D tensors: x/c1/r1/c2 share a shape, p has another
    assert first["conv_specs"] == 1 and first["transform_requests"] == 4
    total = first["conv_requests"] + first["op_requests"] + 4
    assert first["op_requests"] > 0           # the other layers, in each layout they run in
    assert first["requested"] == total == first["measured"]
    assert first["cached"] == 0 and first["threads"] == 1
    second = json.loads(invoke(app, *args).stdout)
    assert (second["measured"], second["cached"]) == (0, first["requested"])
    assert second["fingerprint_id"] == first["fingerprint_id"]
    # the table form says the same
    text = invoke(app, *args[:-1]).stdout
    assert "measured now 0" in text and f"cached {first['requested']}" in text


def test_list_export_import(app, net: Path, tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    report = json.loads(invoke(app, "profile", str(net), "--db", a, "--threads", "1",
                               "--budget-seconds", "0.005", "--json").stdout)
    [listed] = json.loads(invoke(app, "profiles", "list", "--db", a, "--json").stdout)
    assert listed["id"] == report["fingerprint_id"] and listed["rows"] == report["requested"]
    assert listed["imported"] == 0
    assert listed["fingerprint"]["threads"] == 1
    assert report["fingerprint_id"] in invoke(app, "profiles", "list", "--db", a).stdout
    exported = tmp_path / "costs.json"
    result = invoke(app, "profiles", "export", str(exported), "--db", a)
    assert result.exit_code == 0 and f"exported {report['requested']}" in result.stdout
    result = invoke(app, "profiles", "import", str(exported), "--db", b)
    assert result.exit_code == 0 and f"imported {report['requested']}" in result.stdout
    assert f"{report['requested']} written as imported" in result.stdout
    assert json.loads(invoke(app, "profiles", "list", "--db", b, "--json").stdout) == [
        {**listed, "imported": report["requested"]}]
    # the imported costs are used: nothing left to measure on this machine
    again = json.loads(invoke(app, "profile", str(net), "--db", b, "--threads", "1",
                              "--json").stdout)
    assert again["measured"] == 0
    # importing again changes nothing; re-importing into the source keeps its own rows
    result = invoke(app, "profiles", "import", str(exported), "--db", a)
    assert result.exit_code == 0 and f"{report['requested']} kept because this store " \
        "measured them itself" in result.stdout
    # unless asked, then what was only imported is measured here and replaces the import
    again = json.loads(invoke(app, "profile", str(net), "--db", b, "--threads", "1",
                              "--budget-seconds", "0.005", "--remeasure-imported",
                              "--json").stdout)
    assert again["measured"] == report["requested"] and again["cached"] == 0
    [relisted] = json.loads(invoke(app, "profiles", "list", "--db", b, "--json").stdout)
    assert relisted["imported"] == 0 and relisted["rows"] == report["requested"]


def test_drop_imported(app, net: Path, tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    report = json.loads(invoke(app, "profile", str(net), "--db", a, "--threads", "1",
                               "--budget-seconds", "0.005", "--json").stdout)
    invoke(app, "profiles", "export", str(tmp_path / "a.json"), "--db", a)
    assert invoke(app, "profiles", "import", str(tmp_path / "a.json"), "--db", b).exit_code == 0
    result = invoke(app, "profiles", "drop-imported", "--db", b)
    assert result.exit_code == 0 and f"deleted {report['requested']} imported" in result.stdout
    assert json.loads(invoke(app, "profiles", "list", "--db", b, "--json").stdout) == []
    result = invoke(app, "profiles", "drop-imported", "--db", a)   # local rows stay
    assert result.exit_code == 0 and "deleted 0 imported" in result.stdout
    assert json.loads(invoke(app, "profiles", "list", "--db", a, "--json").stdout)[0]["rows"] \
        == report["requested"]


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error:")
    return result.stderr


def test_import_of_a_bad_file_is_a_clear_error(app, tmp_path: Path) -> None:
    db = str(tmp_path / "costs.sqlite")
    (tmp_path / "bad.json").write_text('{"format": "convplan-costs", "version": 1, "rows": 3}')
    assert "not a valid convplan cost export" in _error(
        invoke(app, "profiles", "import", str(tmp_path / "bad.json"), "--db", db))
    assert "cannot read" in _error(
        invoke(app, "profiles", "import", str(tmp_path / "missing.json"), "--db", db))
    assert json.loads(invoke(app, "profiles", "list", "--db", db, "--json").stdout) == []


@pytest.mark.parametrize("args, message", [
    (["profile", "no-such-model"], "neither a built-in network"),
    (["profile", "tiny", "--budget-seconds", "0"], "--budget-seconds must be a finite number"),
    (["profile", "tiny", "--budget-seconds", "nan"], "above 0, got nan"),
    (["profile", "tiny", "--budget-seconds", "inf"], "above 0, got inf"),
    (["profile", "tiny", "--budget-seconds", "-1"], "above 0, got -1"),
    (["profile", "tiny", "--threads", "0"], "--threads must be between 1 and"),
    (["profile", "tiny", "--threads", "100000"], "got 100000"),
    (["profile", "tiny", "--connect-timeout", "inf"], "--connect-timeout must be a finite"),
])
def test_profile_bad_arguments(app, tmp_path: Path, args: list[str], message: str) -> None:
    assert message in _error(invoke(app, *args, "--db", str(tmp_path / "c.sqlite")))


def test_a_store_that_is_not_a_database(app, tmp_path: Path, net: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 100)
    assert "not a usable convplan cost store" in _error(
        invoke(app, "profiles", "list", "--db", str(junk)))
    assert "not a usable" in _error(invoke(app, "profile", str(net), "--db", str(junk)))


def test_the_default_store_is_convplan_db(app, net: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --db (the option every store command shares), $CONVPLAN_DB is the store."""
    db = tmp_path / "from-env.sqlite"
    monkeypatch.setenv("CONVPLAN_DB", str(db))
    result = invoke(app, "profile", str(net), "--threads", "1", "--budget-seconds", "0.005",
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["db"] == str(db) and db.exists()
    [listed] = json.loads(invoke(app, "profiles", "list", "--json").stdout)
    assert listed["rows"] == json.loads(result.stdout)["requested"]


def test_the_commands_are_the_real_apps(app) -> None:
    """`register` adds the same functions the `convplan` app runs (no second copy)."""
    from convplan.api.cli import app as real
    from convplan.api.cli import profiles

    commands = {c.name: c.callback for c in real.registered_commands}
    assert commands["profile"] is profiles.profile
    [group] = [g for g in real.registered_groups if g.name == "profiles"]
    assert group.typer_instance is profiles.profiles_app
    assert {c.callback for c in profiles.profiles_app.registered_commands} == {
        profiles.export_costs, profiles.import_costs, profiles.drop_imported,
        profiles.list_costs}
