"""A hostile or damaged cost store, and hostile imports: each is a clear error naming the file
(or the documented tolerant behaviour: a bad row is ignored with a warning and measured again),
nothing stored is lost, and imported rows never pass for this machine's own measurements."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from convplan.profiles.fingerprint import fingerprint_id
from convplan.profiles.measurement import Measurement
from convplan.profiles.store import CostStore, StoreError, StoreWarning
from tests.support import ROOT as REPOSITORY
from tests.support.stores import spoil_a_row

if TYPE_CHECKING:
    from convplan.selector.planning import Plan

FP = {"cpu": "test cpu", "threads": 1}
FP_ID = fingerprint_id(FP)
CONVPLAN = Path(sys.executable).with_name("convplan")
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NET = {"name": "tiny", "inputs": [{"name": "x", "shape": [1, 4, 8, 8]}],
       "layers": [{"name": "c1", "op": "conv", "inputs": ["x"], "out_channels": 4, "kernel": 3,
                   "padding": 1},
                  {"name": "r1", "op": "relu", "inputs": ["c1"]},
                  {"name": "c2", "op": "conv", "inputs": ["r1"], "out_channels": 8, "kernel": 1}]}


def plan(net_json: Path, db: Path, measure: bool = True) -> Plan:
    """The `Plan` of ``net_json`` from the costs in ``db`` (without the baselines)."""
    from convplan.selector.network import zoo
    from convplan.selector.planning import PlanRequest, cost_function, make_plan, profiler_for

    profiler = profiler_for(PlanRequest(threads=1, budget_s=0.002, db=str(db)))
    assert profiler.store is not None
    try:
        return make_plan(zoo.load_network(str(net_json)), cost_function(profiler, measure),
                         None, machine=profiler.fingerprint, threads=1, with_baselines=False)
    finally:
        profiler.store.close()


def m(t: float, ws: int = 100) -> Measurement:
    return Measurement(t, ws, "measured", 5, 0.01)


def keys(n: int) -> list[tuple[str, str, str]]:
    return [("conv", f"layer{i}", "im2col") for i in range(n)]


def make_store(path: Path, n: int = 400) -> Path:
    with CostStore(path) as s:
        s.put_many(FP, [(*k, m(1e-3 * (i + 1), i)) for i, k in enumerate(keys(n))])
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump(path: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT * FROM costs ORDER BY 1, 2, 3, 4").fetchall() + \
            db.execute("SELECT * FROM fingerprints ORDER BY 1").fetchall()
    finally:
        db.close()


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONVPLAN), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one message on stderr naming what it should, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error:")
    flat = " ".join(result.stderr.split())   # rich may wrap long lines
    for word in words:
        assert word in flat, flat
    return flat


# -- damaged and foreign files at the store path --------------------------------------------
def _damaged(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + b"\xab" * 512 + data[middle + 512:]


def _truncated_pages(data: bytes) -> bytes:
    return data[:(len(data) // 2) // 4096 * 4096]


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE users (name TEXT, email TEXT);"
                     "INSERT INTO users VALUES ('ann', 'ann@example.com');")
    db.commit()
    db.close()


def _lookalike(path: Path) -> None:
    """convplan's table names, but a trigger and other columns: still not convplan's."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE fingerprints (id TEXT, json TEXT);"
                     "CREATE TABLE costs (a, b);"
                     "CREATE TRIGGER t AFTER INSERT ON costs BEGIN DELETE FROM costs; END;")
    db.commit()
    db.close()


@pytest.mark.parametrize("case, expected", [
    ("bytes overwritten", "damaged"),
    ("truncated at a page", "damaged"),
    ("truncated mid-page", "truncated"),
    ("another program's database", "another program's SQLite database (tables: users"),
    ("look-alike with a trigger", "another program's SQLite database"),
    ("text file", "not an SQLite database"),
    ("newer schema", "newer convplan (schema version 9"),
])
def test_an_unusable_store_is_refused_and_left_untouched(tmp_path: Path, case: str,
                                                         expected: str) -> None:
    path = tmp_path / "costs.sqlite"
    if case in ("bytes overwritten", "truncated at a page", "truncated mid-page"):
        data = make_store(tmp_path / "good.sqlite").read_bytes()
        assert len(data) > 8 * 4096
        path.write_bytes(_damaged(data) if case == "bytes overwritten" else
                         _truncated_pages(data) if case == "truncated at a page" else
                         data[:len(data) // 2 + 100])
    elif case == "another program's database":
        _foreign(path)
    elif case == "look-alike with a trigger":
        _lookalike(path)
    elif case == "text file":
        path.write_text("name,time\nim2col,0.1\n" * 50)
    else:
        make_store(path, 3)
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version=9")
        db.close()
    before = digest(path)
    for read_only in (None, True):
        with pytest.raises(StoreError) as error:
            CostStore(path, read_only=read_only)
        assert str(path) in str(error.value) and expected in str(error.value)
        assert error.value.path == path
        if case != "newer schema":
            assert "move it away or delete it" in str(error.value)
    assert digest(path) == before            # not repaired, not switched to WAL, not migrated
    wal = Path(f"{path}-wal")      # SQLite itself makes an empty one to read a WAL database
    assert not wal.exists() or wal.stat().st_size == 0
    if case == "another program's database":
        db = sqlite3.connect(path)
        assert db.execute("SELECT * FROM users").fetchall() == [("ann", "ann@example.com")]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        db.close()


def test_a_directory_or_an_empty_file_at_the_store_path(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        CostStore(tmp_path / "dir.sqlite")
    (tmp_path / "empty.sqlite").touch()      # an empty file is a new store
    with CostStore(tmp_path / "empty.sqlite") as s:
        assert s.count() == 0 and s.journal_mode == "wal"
    (tmp_path / "empty2.sqlite").touch()
    with pytest.raises(StoreError, match="empty and read-only"):
        CostStore(tmp_path / "empty2.sqlite", read_only=True)


def test_damage_found_after_opening_is_a_store_error(tmp_path: Path) -> None:
    path = make_store(tmp_path / "costs.sqlite", 2000)
    store = CostStore(path)
    try:
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 4096] = b"\xab" * 4096
        path.write_bytes(bytes(data))
        store._db.execute("PRAGMA cache_size=0")
        with pytest.raises(StoreError, match="damaged") as error:
            for i in range(0, 2000, 100):
                store.get_many(FP_ID, keys(2000)[i:i + 100])
        assert str(path) in str(error.value)
    finally:
        store.close()


# -- read-only stores -----------------------------------------------------------------------
def test_a_read_only_store_reads_lists_exports_and_refuses_writes(tmp_path: Path) -> None:
    path = make_store(tmp_path / "costs.sqlite", 5)
    before = dump(path)
    with CostStore(path, read_only=True) as s:
        assert s.read_only
        assert s.get_many(FP_ID, keys(5)) == {k: m(1e-3 * (i + 1), i)
                                               for i, k in enumerate(keys(5))}
        assert [(i.id, i.rows) for i in s.fingerprints()] == [(FP_ID, 5)]
        assert s.export(tmp_path / "out.json") == 5
        for write in (lambda: s.put_many(FP, [("conv", "new", "im2col", m(1.0))]),
                      lambda: s.import_(tmp_path / "out.json"),
                      lambda: s.drop_imported()):
            with pytest.raises(StoreError, match="read-only, nothing was written") as error:
                write()
            assert str(path) in str(error.value)
    assert dump(path) == before
    with CostStore(tmp_path / "other.sqlite") as other:    # the export is a valid one
        assert other.import_(tmp_path / "out.json") == 5


_AS_OTHER_USER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from convplan.profiles.store import CostStore, StoreError
from convplan.profiles.measurement import Measurement
out = {}
for path in sys.argv[2:]:
    with CostStore(path) as s:
        found = s.get_many(s.fingerprints()[0].id, [("conv", f"layer{i}", "im2col")
                                                    for i in range(5)])
        try:
            s.put_many({"cpu": "x"}, [("conv", "new", "im2col", Measurement(1.0, 1))])
            error = None
        except StoreError as e:
            error = str(e)
        out[path] = {"read_only": s.read_only, "found": len(found), "error": error}
print(json.dumps(out))
"""


def _unprivileged() -> list[str] | None:
    """How to run a command as a user file modes apply to: nothing for a normal user, setpriv
    to 'nobody' for root; None when root has no way to drop privileges here."""
    if not ROOT:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import convplan.profiles.store"],
                               cwd=REPOSITORY, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def test_a_0444_store_is_opened_read_only(tmp_path: Path) -> None:
    """A 0444 store in a read-only directory (no -shm can be made: read as immutable) and in a
    writable one: reads, `profiles list` and `export` work, writes are refused, nothing changes.
    Root ignores file modes, so as root this runs as 'nobody' (setpriv)."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: chmod 0444 does not stop root's writes")
    base = Path(tempfile.mkdtemp(prefix="convplan-ro-"))
    try:
        os.chmod(base, 0o777)       # 'nobody' writes its exports and HOME here
        closed, open_ = base / "closed", base / "open"
        closed.mkdir()
        open_.mkdir()
        stores = [make_store(closed / "costs.sqlite", 5), make_store(open_ / "costs.sqlite", 5)]
        for path in stores:
            os.chmod(path, 0o444)
        os.chmod(closed, 0o555)
        os.chmod(open_, 0o777)
        before = [digest(path) for path in stores]
        env = {**os.environ, "HOME": str(base)}
        root = str(REPOSITORY)
        result = subprocess.run([*prefix, sys.executable, "-c", _AS_OTHER_USER, root,
                                 *map(str, stores)], capture_output=True, text=True,
                                timeout=120, env=env, cwd=base)
        assert result.returncode == 0, result.stderr
        for path, seen in json.loads(result.stdout).items():
            assert seen["read_only"] and seen["found"] == 5, path
            assert seen["error"] and "read-only, nothing was written" in seen["error"]
            assert path in seen["error"]
        listed = subprocess.run([*prefix, str(CONVPLAN), "profiles", "list", "--db",
                                 str(stores[0]), "--json"], capture_output=True, text=True,
                                timeout=120, env=env, cwd=base)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)[0]["rows"] == 5
        exported = base / "out.json"
        export = subprocess.run([*prefix, str(CONVPLAN), "profiles", "export", str(exported),
                                 "--db", str(stores[0])], capture_output=True, text=True,
                                timeout=120, env=env, cwd=base)
        assert export.returncode == 0, export.stderr
        assert len(json.loads(exported.read_text())["rows"]) == 5
        assert [digest(path) for path in stores] == before
    finally:
        for folder in (base / "closed", base / "open"):
            if folder.exists():
                os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# -- bad rows written by hand ---------------------------------------------------------------
BAD_ROWS = [
    ("negative workspace", "workspace_bytes", -1, "workspace_bytes must be an integer"),
    ("fractional workspace", "workspace_bytes", 2.5, "workspace_bytes must be an integer"),
    ("negative time", "time_s", -0.5, "time_s must be a number"),
    ("infinite time", "time_s", float("inf"), "time_s must be a number"),
    ("absurd time", "time_s", 1e30, "time_s must be a number"),
    ("text time", "time_s", "NaN", "time_s must be a number"),
    ("blob time", "time_s", b"\x00\x01", "time_s must be a number"),
    ("negative repeats", "repeats", -3, "repeats must be an integer"),
    ("bad origin", "origin", "somewhere", "origin must be"),
]


@pytest.mark.parametrize("case, column, value, message", BAD_ROWS)
def test_a_bad_row_is_ignored_with_a_warning_and_measured_again(tmp_path: Path, case: str,
                                                                column: str, value: object,
                                                                message: str) -> None:
    path = make_store(tmp_path / "costs.sqlite", 5)
    db = sqlite3.connect(path)
    db.execute(f"UPDATE costs SET {column} = ? WHERE key = 'layer3'", (value,))
    db.commit()
    db.close()
    with CostStore(path) as s:
        with pytest.warns(StoreWarning) as caught:
            found = s.get_many(FP_ID, keys(5))
        [warning] = caught
        text = str(warning.message)
        assert str(path) in text and "conv/layer3/im2col" in text and message in text
        assert sorted(found) == sorted(keys(5)[:3] + keys(5)[4:])   # the others still count
        with pytest.warns(StoreWarning, match="layer3"):
            assert s.get(FP_ID, "conv", "layer3", "im2col") is None
        with pytest.warns(StoreWarning, match="layer3"):
            assert s.export(tmp_path / "out.json") == 4
        # measuring it again replaces the bad row
        s.put_many(FP, [("conv", "layer3", "im2col", m(0.25))])
        assert s.get_many(FP_ID, keys(5))[("conv", "layer3", "im2col")] == m(0.25)
        assert s.count() == 5


def test_a_bad_row_does_not_stop_a_plan_and_is_measured_again(tmp_path: Path) -> None:
    net = tmp_path / "net.json"
    net.write_text(json.dumps(NET))
    db = tmp_path / "costs.sqlite"
    first = plan(net, db)
    assert first.costs == "measured"
    key, candidate = spoil_a_row(db)
    with pytest.warns(StoreWarning, match=f"conv/{key}/{candidate}"):
        again = plan(net, db)
    assert again.costs == "measured"
    with CostStore(db) as s:
        [time_s] = s._db.execute("SELECT time_s FROM costs WHERE key = ? AND candidate = ?",
                                 (key, candidate)).fetchone()
        assert isinstance(time_s, float) and time_s > 0      # measured again, stored
    with pytest.warns(StoreWarning):            # without measuring: estimated, and it says so
        raw = sqlite3.connect(db)
        raw.execute("UPDATE costs SET workspace_bytes = -7 WHERE key = ? AND candidate = ?",
                    (key, candidate))
        raw.commit()
        raw.close()
        estimated = plan(net, db, measure=False)
    assert estimated.costs == "mixed"


# -- hostile imports ------------------------------------------------------------------------
def _export(tmp_path: Path) -> dict:
    make_store(tmp_path / "src.sqlite", 3)
    with CostStore(tmp_path / "src.sqlite") as s:
        s.export(tmp_path / "valid.json")
    return json.loads((tmp_path / "valid.json").read_text())


def _hostile(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case.replace(' ', '_')}.json"
    if case == "deep nesting":
        path.write_text('{"format": "convplan-costs", "version": 1, "rows": '
                        + "[" * 100_000 + "]" * 100_000 + "}")
        return path
    if case == "huge file":
        with open(path, "wb") as out:          # sparse: no disk or time spent on it
            out.truncate(40 * 2 ** 20)
        return path
    doc = _export(tmp_path)
    row = doc["rows"][-1]
    if case == "time 1e30":
        row["time_s"] = 1e30
    elif case == "workspace 2**63":
        row["workspace_bytes"] = 2 ** 63
    elif case == "measured_at 1e300":
        row["measured_at"] = 1e300
    elif case == "measured_at 1970":
        row["measured_at"] = 0
    elif case == "long key":
        row["key"] = "k" * 100_000
    text = json.dumps(doc)
    if case == "NaN":
        text = text.replace('"spread": 0.01', '"spread": NaN', 1)
    elif case == "Infinity":
        text = text.replace('"spread": 0.01', '"spread": -Infinity', 1)
    elif case == "1e400":
        text = text.replace('"spread": 0.01', '"spread": 1e400', 1)
    elif case == "5000 digits":
        text = text.replace('"repeats": 5', '"repeats": ' + "9" * 5000, 1)
    elif case == "NaN in a fingerprint":
        text = text.replace('"threads": 1', '"threads": NaN', 1)
    assert text != json.dumps(_export(tmp_path)) or case in (
        "time 1e30", "workspace 2**63", "measured_at 1e300", "measured_at 1970", "long key")
    path.write_text(text)
    return path


HOSTILE = [("time 1e30", "time_s must be a number between 0 and"),
           ("workspace 2**63", "workspace_bytes must be an integer between 0 and"),
           ("NaN", "NaN is not a number"), ("Infinity", "-Infinity is not a number"),
           ("1e400", "spread"), ("5000 digits", "invalid JSON"),
           ("deep nesting", "nested too deeply"), ("huge file", "too large"),
           ("measured_at 1e300", "measured_at 1e+300 is not between"),
           ("measured_at 1970", "is not between"), ("long key", "at most 4096 characters"),
           ("NaN in a fingerprint", "NaN is not a number")]


@pytest.mark.parametrize("case, message", HOSTILE)
def test_a_hostile_import_is_a_clear_error_and_changes_nothing(tmp_path: Path, case: str,
                                                               message: str) -> None:
    path = make_store(tmp_path / "costs.sqlite", 5)
    before = dump(path)
    bad = _hostile(tmp_path, case)
    with CostStore(path) as s:
        started = time.perf_counter()
        with pytest.raises(ValueError) as error:
            s.import_(bad)
        assert time.perf_counter() - started < 5
    assert str(bad) in str(error.value) and message in str(error.value)
    assert len(str(error.value)) < 1000
    assert "pydantic" not in str(error.value).lower() and "Input should" not in str(error.value)
    assert dump(path) == before


def test_an_import_of_a_special_file_is_bounded(tmp_path: Path) -> None:
    path = make_store(tmp_path / "costs.sqlite", 2)
    with CostStore(path) as s, pytest.raises(ValueError, match="too large"):
        s.import_("/dev/zero", max_bytes=2 ** 20)


@pytest.mark.parametrize("case", ["time 1e30", "deep nesting", "huge file"])
def test_cli_import_of_a_hostile_file_exits_2(tmp_path: Path, case: str) -> None:
    db = make_store(tmp_path / "costs.sqlite", 5)
    before = dump(db)
    bad = _hostile(tmp_path, case)
    refused(cli("profiles", "import", bad, "--db", db), str(bad))
    assert dump(db) == before


@pytest.mark.parametrize("case", ["bytes overwritten", "another program's database"])
def test_cli_on_an_unusable_store_exits_2(tmp_path: Path, case: str) -> None:
    db = tmp_path / "costs.sqlite"
    if case == "bytes overwritten":
        db.write_bytes(_damaged(make_store(tmp_path / "good.sqlite").read_bytes()))
    else:
        _foreign(db)
    before = digest(db)
    export = tmp_path / "valid.json"
    export.write_text(json.dumps(_export(tmp_path)))
    refused(cli("profiles", "import", export, "--db", db), str(db), "move it away")
    assert digest(db) == before


# -- forged imports of this machine's fingerprint -------------------------------------------
def _forged(genuine: dict, path: Path, measured_at: float) -> Path:
    """This machine's fingerprint, every convolution's slowest algorithm made the fastest."""
    doc = json.loads(json.dumps(genuine))
    convs = [r for r in doc["rows"] if r["kind"] == "conv"]
    slowest: dict[str, dict] = {}
    for r in convs:
        if r["key"] not in slowest or r["time_s"] > slowest[r["key"]]["time_s"]:
            slowest[r["key"]] = r
    for r in convs:
        r["time_s"] = 1e-9 if r is slowest[r["key"]] else 10.0
        r["measured_at"] = measured_at
        r["origin"] = "local"                   # a claim the store does not believe
    path.write_text(json.dumps(doc))
    return path


def test_a_forged_import_never_beats_this_machines_measurements(tmp_path: Path) -> None:
    from convplan.profiles.profiler import Profiler
    from convplan.selector.network import zoo
    from convplan.selector.planning import requests_for

    net = tmp_path / "net.json"
    net.write_text(json.dumps(NET))
    db = tmp_path / "costs.sqlite"
    genuine_plan = plan(net, db)
    assert genuine_plan.costs == "measured"
    with CostStore(db) as s:
        s.export(tmp_path / "genuine.json")
    genuine = json.loads((tmp_path / "genuine.json").read_text())
    before = dump(db)

    # measured_at 1e300 (to win every "newer wins" merge): refused outright, at the CLI too
    far = _forged(genuine, tmp_path / "far.json", 1e300)
    refused(cli("profiles", "import", far, "--db", db), str(far), "measured_at")
    assert dump(db) == before

    # a plausible timestamp: stored as imported, and never over a local row
    forged = _forged(genuine, tmp_path / "forged.json", time.time())
    with CostStore(db) as s:
        s.import_(forged)
        assert s.last_import is not None
        assert s.last_import.kept_local == len(genuine["rows"]) and s.last_import.written == 0
    assert dump(db) == before
    again = plan(net, db)
    assert again.costs == "measured" and again.assignment == genuine_plan.assignment

    # a fresh store that only has the forgery: the plan never says "measured"
    fresh = tmp_path / "fresh.sqlite"
    with CostStore(fresh) as s:
        s.import_(forged)
        s.import_(tmp_path / "genuine.json")    # older than the forgery: it does not win
    fooled = plan(net, fresh, measure=False)
    assert fooled.costs != "measured"
    sources = {c.source for layer in fooled.layers for c in layer.candidates}
    assert sources == {"imported"}
    # the way back: drop what was imported, import the genuine export
    with CostStore(fresh) as s:
        assert s.drop_imported() == len(genuine["rows"])
        s.import_(tmp_path / "genuine.json")
    restored = plan(net, fresh, measure=False)
    assert restored.assignment == genuine_plan.assignment
    # or measure here (`convplan profile --remeasure-imported`): local measurements replace
    # the imported rows
    with CostStore(fresh) as s:
        s.import_(forged)
    with CostStore(fresh, use_imported=False) as s:
        profiler = Profiler(s, 1, 0.002)
        profiler.costs(requests_for(zoo.load_network(str(net))))
        assert profiler.last_stats is not None
        assert profiler.last_stats.measured == len(genuine["rows"])
    remeasured = plan(net, fresh)
    assert remeasured.costs == "measured"
    with CostStore(fresh) as s:
        assert [i.imported for i in s.fingerprints()] == [0]
