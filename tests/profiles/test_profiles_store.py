"""The cost store: round trips, WAL, concurrent writers, interrupted and crashed batches,
export/import between stores, and malformed imports that change nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convplan.profiles.fingerprint import fingerprint_id
from convplan.profiles.measurement import Measurement
from convplan.profiles.store import CostStore, default_db_path

FP = {"cpu": "test cpu", "threads": 1}
FP_ID = fingerprint_id(FP)
OTHER_FP = {"cpu": "another cpu", "threads": 2}


def m(t: float, ws: int = 100) -> Measurement:
    return Measurement(t, ws, "measured", 5, 0.01)


def rows(prefix: str, n: int, t: float = 1e-3) -> list[tuple[str, str, str, Measurement]]:
    return [("conv", f"{prefix}{i}", "im2col", m(t * (i + 1), i)) for i in range(n)]


def dump(store: CostStore) -> list[tuple]:
    """Everything in a store, for before/after comparisons."""
    return store._db.execute("SELECT * FROM costs ORDER BY 1, 2, 3, 4").fetchall() + \
        store._db.execute("SELECT * FROM fingerprints ORDER BY 1").fetchall()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CostStore]:
    with CostStore(tmp_path / "costs.sqlite") as s:
        yield s


def test_round_trip(store: CostStore) -> None:
    assert store.put_many(FP, [("conv", "k1", "im2col", m(0.5, 1234)),
                               ("transform", "1x4x8x8_float32", "NCHW->NHWC", m(1e-6, 1024))]) == 2
    assert store.get(FP_ID, "conv", "k1", "im2col") == m(0.5, 1234)
    assert store.get(FP_ID, "conv", "k1", "kn2row") is None
    assert store.get(fingerprint_id(OTHER_FP), "conv", "k1", "im2col") is None
    found = store.get_many(FP_ID, [("conv", "k1", "im2col"), ("conv", "nope", "im2col"),
                                   ("transform", "1x4x8x8_float32", "NCHW->NHWC")])
    assert found == {("conv", "k1", "im2col"): m(0.5, 1234),
                     ("transform", "1x4x8x8_float32", "NCHW->NHWC"): m(1e-6, 1024)}
    # a later measurement of the same cost replaces the earlier one
    store.put_many(FP, [("conv", "k1", "im2col", m(0.25, 99))])
    assert store.get(FP_ID, "conv", "k1", "im2col") == m(0.25, 99)
    assert store.count(FP_ID) == 2
    [info] = store.fingerprints()
    assert (info.id, info.fingerprint, info.rows) == (FP_ID, FP, 2)


def test_survives_reopening(tmp_path: Path) -> None:
    with CostStore(tmp_path / "a" / "b" / "costs.sqlite") as s:  # parents are created
        s.put_many(FP, rows("k", 3))
    with CostStore(tmp_path / "a" / "b" / "costs.sqlite") as s:
        assert s.count() == 3 and s.get(FP_ID, "conv", "k2", "im2col") == m(3e-3, 2)


def test_wal_mode(store: CostStore) -> None:
    assert store.journal_mode == "wal"
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_only_measured_costs_are_stored(store: CostStore) -> None:
    analytic = Measurement(1e-3, 10, "analytic")
    with pytest.raises(ValueError, match="only measured"):
        store.put_many(FP, [*rows("k", 2), ("conv", "x", "im2col", analytic)])
    assert store.count() == 0


@pytest.mark.parametrize("row, message", [
    (("conv", "", "im2col", m(1.0)), "key must be a non-empty string of at most 4096"),
    (("conv", "k", "im2col", m(1e30)), "time_s must be a number between 0 and 10000, not 1e+30"),
    (("conv", "k", "im2col", Measurement(1.0, 2 ** 60, "measured")), "workspace_bytes must be"),
])
def test_a_row_an_export_could_not_carry_is_not_stored(store: CostStore, row: tuple,
                                                        message: str) -> None:
    with pytest.raises(ValueError, match="not storing") as error:
        store.put_many(FP, [*rows("k", 2), row])
    assert message in str(error.value)
    assert store.count() == 0


def test_interrupted_batch_leaves_earlier_batches_and_nothing_of_itself(store: CostStore
                                                                        ) -> None:
    store.put_many(FP, rows("first", 8))
    store.put_many(FP, rows("second", 8))

    def failing():
        yield from rows("third", 5)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put_many(FP, failing())
    assert store.count(FP_ID) == 16
    assert store.get(FP_ID, "conv", "third0", "im2col") is None
    # and the store is still usable afterwards
    store.put_many(FP, rows("fourth", 2))
    assert store.count(FP_ID) == 18


# -- other processes (spawned: module-level functions) ---------------------------------------
def _writer(path: str, worker: int, n: int, batch: int, start) -> None:
    fp = {"cpu": "test cpu", "threads": 1}
    start.wait(timeout=60)  # all open the new file at once (the WAL switch races)
    with CostStore(path) as s:
        for start in range(0, n, batch):
            s.put_many(fp, [("conv", f"w{worker}_{i}", "im2col", m(1e-3 + i, i))
                            for i in range(start, min(n, start + batch))])


def _crash_mid_batch(path: str) -> None:
    fp = {"cpu": "test cpu", "threads": 1}
    with CostStore(path) as s:
        s.put_many(fp, rows("committed", 10))

        def dying():
            yield from rows("doomed", 6)
            os._exit(3)  # the process dies inside the transaction: no rollback, no cleanup

        s.put_many(fp, dying())


SPAWN = multiprocessing.get_context("spawn")


def _spawn(target, *args) -> multiprocessing.Process:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    return process


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "costs.sqlite")
    start = SPAWN.Barrier(4)
    workers = [_spawn(_writer, path, w, 200, 10, start) for w in range(4)]
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with CostStore(path) as s:
        assert s.count(FP_ID) == 800
        for w in range(4):
            assert s.get(FP_ID, "conv", f"w{w}_199", "im2col") == m(1e-3 + 199, 199)
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_process_killed_mid_batch_keeps_committed_batches(tmp_path: Path) -> None:
    path = str(tmp_path / "costs.sqlite")
    process = _spawn(_crash_mid_batch, path)
    process.join(timeout=120)
    assert process.exitcode == 3
    with CostStore(path) as s:
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s.count(FP_ID) == 10
        assert s.get(FP_ID, "conv", "doomed0", "im2col") is None


# -- export / import -------------------------------------------------------------------------
def imported(t: float, ws: int = 100, origin: str = "") -> Measurement:
    return Measurement(t, ws, "imported", 5, 0.01, origin)


def same_numbers(a: Measurement | None, b: Measurement) -> bool:
    assert a is not None
    return (a.time_s, a.workspace_bytes, a.repeats, a.spread) == \
        (b.time_s, b.workspace_bytes, b.repeats, b.spread)


def test_export_import_round_trip(tmp_path: Path) -> None:
    with CostStore(tmp_path / "a.sqlite") as a, CostStore(tmp_path / "b.sqlite") as b:
        a.put_many(FP, rows("k", 20))
        a.put_many(OTHER_FP, rows("other", 3))
        assert a.export(tmp_path / "costs.json") == 23
        assert b.import_(tmp_path / "costs.json") == 23
        stats = b.last_import
        assert stats is not None and (stats.read, stats.written, stats.kept_local) == (23, 23, 0)
        assert stats.origin.startswith("imported:costs.json@")
        # the same numbers and timestamps, but every row is marked as imported
        origins = {r[-1] for r in dump(b) if len(r) == 10}
        assert origins == {stats.origin}
        assert [r[:-1] for r in dump(a) if len(r) == 10] == [r[:-1] for r in dump(b)
                                                             if len(r) == 10]
        assert {i.id: (i.rows, i.imported) for i in b.fingerprints()} == {
            FP_ID: (20, 20), fingerprint_id(OTHER_FP): (3, 3)}
        got = b.get(FP_ID, "conv", "k3", "im2col")
        assert got is not None and got.source == "imported" and got.origin == stats.origin
        assert same_numbers(got, m(4e-3, 3))
        # one fingerprint only
        assert a.export(tmp_path / "one.json", fingerprint_id(OTHER_FP)) == 3
        document = json.loads((tmp_path / "one.json").read_text())
        assert list(document["fingerprints"]) == [fingerprint_id(OTHER_FP)]
        assert {r["origin"] for r in document["rows"]} == {"local"}


def test_import_merges_but_never_replaces_local_measurements(tmp_path: Path) -> None:
    with CostStore(tmp_path / "a.sqlite") as a, CostStore(tmp_path / "b.sqlite") as b:
        a.put_many(FP, [("conv", "old", "im2col", m(1.0)), ("conv", "shared", "im2col", m(1.0))])
        a.export(tmp_path / "a.json")
        b.put_many(FP, [("conv", "shared", "im2col", m(2.0)), ("conv", "mine", "im2col", m(3.0))])
        b.import_(tmp_path / "a.json")  # b measured "shared" itself: it keeps its own
        assert b.get(FP_ID, "conv", "shared", "im2col") == m(2.0)
        assert b.last_import is not None and b.last_import.kept_local == 1
        assert same_numbers(b.get(FP_ID, "conv", "old", "im2col"), m(1.0))
        assert b.count() == 3
        b.export(tmp_path / "b.json")
        a.import_(tmp_path / "b.json")  # b's "shared" is newer, but a's own measurement wins
        assert a.get(FP_ID, "conv", "shared", "im2col") == m(1.0)
        assert same_numbers(a.get(FP_ID, "conv", "mine", "im2col"), m(3.0))
        # a local measurement replaces an imported row
        a.put_many(FP, [("conv", "mine", "im2col", m(0.5))])
        assert a.get(FP_ID, "conv", "mine", "im2col") == m(0.5)
        assert [i.imported for i in a.fingerprints()] == [0]


def test_of_two_imports_the_newer_wins(tmp_path: Path) -> None:
    def export(name: str, t: float, at: float) -> Path:
        doc = {"format": "convplan-costs", "version": 1, "fingerprints": {FP_ID: FP},
               "rows": [{"fingerprint_id": FP_ID, "kind": "conv", "key": "k", "candidate": "c",
                         "time_s": t, "workspace_bytes": 1, "repeats": 1, "spread": 0.0,
                         "measured_at": at}]}
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return path

    now = time.time()
    with CostStore(tmp_path / "s.sqlite") as s:
        s.import_(export("new.json", 2.0, now - 10))
        s.import_(export("old.json", 1.0, now - 1000))
        got = s.get(FP_ID, "conv", "k", "c")
        assert got is not None and got.time_s == 2.0 and "new.json" in got.origin
        s.import_(export("newer.json", 3.0, now))
        assert s.get_many(FP_ID, [("conv", "k", "c")])[("conv", "k", "c")].time_s == 3.0


def test_use_imported_false_and_drop_imported(tmp_path: Path) -> None:
    with CostStore(tmp_path / "a.sqlite") as a:
        a.put_many(FP, rows("k", 4))
        a.export(tmp_path / "a.json")
    with CostStore(tmp_path / "b.sqlite") as b:
        b.put_many(FP, rows("mine", 2))
        b.import_(tmp_path / "a.json")
        keys = [("conv", f"k{i}", "im2col") for i in range(4)] + [("conv", "mine0", "im2col")]
        assert len(b.get_many(FP_ID, keys)) == 5
    with CostStore(tmp_path / "b.sqlite", use_imported=False) as b:
        assert list(b.get_many(FP_ID, keys)) == [("conv", "mine0", "im2col")]
        assert b.get(FP_ID, "conv", "k0", "im2col") is None
        assert b.drop_imported() == 4
        assert b.count() == 2 and [i.imported for i in b.fingerprints()] == [0]


def test_a_version_1_store_is_migrated_and_its_rows_are_local(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE fingerprints (id TEXT PRIMARY KEY, json TEXT NOT NULL);
        CREATE TABLE costs (fingerprint_id TEXT NOT NULL REFERENCES fingerprints(id),
            kind TEXT NOT NULL, key TEXT NOT NULL, candidate TEXT NOT NULL,
            time_s REAL NOT NULL, workspace_bytes INTEGER NOT NULL, repeats INTEGER NOT NULL,
            spread REAL NOT NULL, measured_at REAL NOT NULL,
            PRIMARY KEY (fingerprint_id, kind, key, candidate)) WITHOUT ROWID;
        PRAGMA user_version=1;""")
    db.execute("INSERT INTO fingerprints VALUES (?, ?)", (FP_ID, json.dumps(FP)))
    db.execute("INSERT INTO costs VALUES (?, 'conv', 'k', 'im2col', 0.5, 7, 5, 0.01, ?)",
               (FP_ID, time.time()))
    db.commit()
    db.close()
    with CostStore(path, read_only=True) as s:      # read-only: read as it is
        assert s.get(FP_ID, "conv", "k", "im2col") == m(0.5, 7)
        assert s.fingerprints()[0].imported == 0
    with CostStore(path) as s:
        assert s.get(FP_ID, "conv", "k", "im2col") == m(0.5, 7)
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert s._db.execute("SELECT origin FROM costs").fetchall() == [("local",)]


def _valid_export(tmp_path: Path) -> dict:
    with CostStore(tmp_path / "src.sqlite") as s:
        s.put_many(FP, rows("k", 3))
        s.export(tmp_path / "valid.json")
    return json.loads((tmp_path / "valid.json").read_text())


def _broken(doc: dict, fault: str) -> str:
    if fault == "not json":
        return "{not json"
    if fault == "not an export":
        return json.dumps([1, 2, 3])
    if fault == "wrong version":
        doc["version"] = 99
    elif fault == "tampered fingerprint":
        next(iter(doc["fingerprints"].values()))["threads"] = 64
    elif fault == "unknown fingerprint":
        doc["rows"][-1]["fingerprint_id"] = "0123456789abcdef"
    elif fault == "missing field":
        del doc["rows"][-1]["time_s"]
    elif fault == "negative time":
        doc["rows"][-1]["time_s"] = -1
    elif fault == "fractional workspace":
        doc["rows"][-1]["workspace_bytes"] = 1.5
    elif fault == "empty key":
        doc["rows"][-1]["key"] = ""
    elif fault == "rows not a list":
        doc["rows"] = {"a": 1}
    elif fault == "row not an object":
        doc["rows"][1] = [1, 2]
    elif fault == "text time":
        doc["rows"][-1]["time_s"] = "0.5"
    elif fault == "bool repeats":
        doc["rows"][-1]["repeats"] = True
    elif fault == "bad origin":
        doc["rows"][-1]["origin"] = "somewhere"
    elif fault == "fingerprint not an object":
        doc["fingerprints"]["0123456789abcdef"] = [1]
    elif fault == "no version":
        del doc["version"]
    return json.dumps(doc)


@pytest.mark.parametrize("fault, message", [
    ("not json", "invalid JSON"), ("not an export", "format"), ("wrong version", "version 99"),
    ("tampered fingerprint", "does not match"), ("unknown fingerprint", "unknown fingerprint"),
    ("missing field", "rows[2] lacks time_s"), ("negative time", "rows[2]: time_s"),
    ("fractional workspace", "workspace_bytes"), ("empty key", "rows[2].key"),
    ("rows not a list", '"rows" a list'), ("row not an object", "rows[1] is not an object"),
    ("text time", "rows[2]: time_s must be a number between 0 and 10000, not '0.5'"),
    ("bool repeats", "rows[2]: repeats must be an integer between 0 and"),
    ("bad origin", "rows[2]: origin must be 'local' or 'imported:...'"),
    ("fingerprint not an object", "fingerprint '0123456789abcdef' is not an object"),
    ("no version", "version None, expected 1")])
def test_malformed_import_is_a_clear_error_and_changes_nothing(tmp_path: Path, fault: str,
                                                               message: str) -> None:
    doc = _valid_export(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(_broken(doc, fault))
    with CostStore(tmp_path / "target.sqlite") as target:
        target.put_many(OTHER_FP, rows("existing", 4))
        before = dump(target)
        with pytest.raises(ValueError, match="not a valid convplan cost export") as error:
            target.import_(bad)
        assert message in str(error.value) and str(bad) in str(error.value)
        assert "pydantic" not in str(error.value).lower()   # convplan's words, not pydantic's
        assert "Input should" not in str(error.value)
        assert dump(target) == before  # the valid rows before the bad one were not written


#: An export as convplan wrote it before the export was a pydantic model (Python's json,
#: indent=1, ASCII only): files already written must keep importing.
EXISTING_EXPORT = r"""{
 "format": "convplan-costs",
 "version": 1,
 "fingerprints": {
  "82dbb834994a717e": {
   "blas": {
    "name": "openblas",
    "version": "0.3.27"
   },
   "cpu": "Test CPU\u00ae 9000",
   "threads": 1
  },
  "f65c1e1892ae30f4": {
   "cpu": "other cpu",
   "threads": 2
  }
 },
 "rows": [
  {
   "fingerprint_id": "82dbb834994a717e",
   "kind": "conv",
   "key": "1x3x8x8_k3",
   "candidate": "im2col",
   "time_s": 1e-06,
   "workspace_bytes": 4096,
   "repeats": 5,
   "spread": 0.01,
   "measured_at": 1733100000.25,
   "origin": "local"
  },
  {
   "fingerprint_id": "82dbb834994a717e",
   "kind": "transform",
   "key": "1x4x8x8_float32",
   "candidate": "NCHW->NHWC",
   "time_s": 0.000125,
   "workspace_bytes": 0,
   "repeats": 9,
   "spread": 0.0,
   "measured_at": 1733100100.5,
   "origin": "local"
  },
  {
   "fingerprint_id": "f65c1e1892ae30f4",
   "kind": "conv",
   "key": "1x3x8x8_k3",
   "candidate": "kn2row",
   "time_s": 0.5,
   "workspace_bytes": 123,
   "repeats": 3,
   "spread": 0.25,
   "measured_at": 1733100100.5,
   "origin": "imported:lab.json@0123456789ab"
  }
 ]
}
"""
EXISTING_FPS = {"82dbb834994a717e": {"blas": {"name": "openblas", "version": "0.3.27"},
                                     "cpu": "Test CPU\u00ae 9000", "threads": 1},
                "f65c1e1892ae30f4": {"cpu": "other cpu", "threads": 2}}
EXISTING_ROWS = [
    ("82dbb834994a717e", "conv", "1x3x8x8_k3", "im2col", 1e-06, 4096, 5, 0.01, 1733100000.25),
    ("82dbb834994a717e", "transform", "1x4x8x8_float32", "NCHW->NHWC", 0.000125, 0, 9, 0.0,
     1733100100.5),
    ("f65c1e1892ae30f4", "conv", "1x3x8x8_k3", "kn2row", 0.5, 123, 3, 0.25, 1733100100.5)]


def test_an_export_in_the_existing_format_imports_and_exports_the_same(tmp_path: Path) -> None:
    assert {fingerprint_id(fp) for fp in EXISTING_FPS.values()} == set(EXISTING_FPS)
    existing = tmp_path / "existing.json"
    existing.write_text(EXISTING_EXPORT)
    with CostStore(tmp_path / "costs.sqlite") as s:
        assert s.import_(existing) == 3
        stats = s.last_import
        assert stats is not None and (stats.written, stats.kept_local, stats.kept_newer) == \
            (3, 0, 0)
        stored = dump(s)
        assert [r[:-1] for r in stored if len(r) == 10] == EXISTING_ROWS
        assert {r[-1] for r in stored if len(r) == 10} == {stats.origin}   # all imported
        assert {i.id: (i.fingerprint, i.rows, i.imported) for i in s.fingerprints()} == {
            i: (fp, n, n) for (i, fp), n in zip(EXISTING_FPS.items(), (2, 1), strict=True)}
        got = s.get("82dbb834994a717e", "conv", "1x3x8x8_k3", "im2col")
        assert got == Measurement(1e-06, 4096, "imported", 5, 0.01, stats.origin)
        s.export(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    before = json.loads(EXISTING_EXPORT)
    # the same document: keys in the same order, the same values; only the origins are new
    assert list(again) == list(before) == ["format", "version", "fingerprints", "rows"]
    assert again["fingerprints"] == before["fingerprints"]
    assert [list(r) for r in again["rows"]] == [list(r) for r in before["rows"]]
    assert [{**r, "origin": "?"} for r in again["rows"]] == \
        [{**r, "origin": "?"} for r in before["rows"]]
    assert {r["origin"] for r in again["rows"]} == {stats.origin}


def test_import_of_a_missing_or_binary_file(store: CostStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        store.import_(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not"):
        store.import_(tmp_path / "bin.json")
    assert store.count() == 0


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable convplan cost store"):
        CostStore(tmp_path / "junk.sqlite")


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVPLAN_DB", str(tmp_path / "explicit.sqlite"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "explicit.sqlite"
    monkeypatch.delenv("CONVPLAN_DB")
    assert default_db_path() == tmp_path / "xdg" / "convplan" / "costs.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".cache" / "convplan" / "costs.sqlite"
    with CostStore() as s:  # the default path, parents created
        assert s.path == default_db_path() and s.path.exists()


@pytest.mark.parametrize("fields", [(-1.0, 0), (float("nan"), 0), (1.0, -5), (1.0, 2.5)])
def test_measurement_rejects_nonsense(fields: tuple) -> None:
    with pytest.raises(ValueError):
        Measurement(*fields)
