"""The load while measuring in the cost store (schema 3, migrated from older stores), pruning,
re-measuring flagged costs, and the measuring lock that keeps two processes from measuring at
once."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from convplan.kernels import ConvSpec, registry
from convplan.profiles.fingerprint import fingerprint_id, machine_fingerprint
from convplan.profiles.lock import lock_path, measuring_lock
from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import Profiler, request_key
from convplan.profiles.requests import ConvRequest
from convplan.profiles.store import SCHEMA_VERSION, CostStore

FP = {"cpu": "test cpu", "threads": 1}
FP_ID = fingerprint_id(FP)
TINY = ConvSpec(n=1, c=4, h=8, w=8, m=4, kh=3, kw=3, padding=1)
BUDGET = 0.005

#: The cost store of convplan 0.x before the load was recorded (schema 2), as it created it.
V2_SCHEMA = """
    CREATE TABLE fingerprints (id TEXT PRIMARY KEY, json TEXT NOT NULL);
    CREATE TABLE costs (fingerprint_id TEXT NOT NULL REFERENCES fingerprints(id),
        kind TEXT NOT NULL, key TEXT NOT NULL, candidate TEXT NOT NULL,
        time_s REAL NOT NULL, workspace_bytes INTEGER NOT NULL, repeats INTEGER NOT NULL,
        spread REAL NOT NULL, measured_at REAL NOT NULL,
        origin TEXT NOT NULL DEFAULT 'local',
        PRIMARY KEY (fingerprint_id, kind, key, candidate)) WITHOUT ROWID;
    PRAGMA user_version=2;"""


def v2_store(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    db.execute("INSERT INTO fingerprints VALUES (?, ?)", (FP_ID, json.dumps(FP)))
    db.execute("INSERT INTO costs VALUES (?, 'conv', 'k', 'im2col', 0.5, 7, 5, 0.01, ?, "
               "'local')", (FP_ID, time.time()))
    db.execute("INSERT INTO costs VALUES (?, 'conv', 'k', 'kn2row', 0.25, 9, 3, 0.02, ?, "
               "'imported:lab.json@0123456789ab')", (FP_ID, time.time()))
    db.commit()
    db.close()
    return path


def columns(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [r[1] for r in db.execute("PRAGMA table_info(costs)")]
    finally:
        db.close()


# -- schema 3 --------------------------------------------------------------------------------
def test_a_version_2_store_is_read_as_it_is_then_migrated(tmp_path: Path) -> None:
    path = v2_store(tmp_path / "v2.sqlite")
    old = Measurement(0.5, 7, "measured", 5, 0.01)
    with CostStore(path, read_only=True) as s:      # read-only: read, never changed
        assert s.get(FP_ID, "conv", "k", "im2col") == old
        assert s.get(FP_ID, "conv", "k", "kn2row").source == "imported"
        assert s.fingerprints()[0].imported == 1
        s.export(tmp_path / "old.json")
    assert "load" not in columns(path)
    exported = json.loads((tmp_path / "old.json").read_text())["rows"]
    assert all("load" not in row and "cpu_share" not in row for row in exported)
    with CostStore(path) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert s.get(FP_ID, "conv", "k", "im2col") == old    # load unknown: None
        assert not old.flagged
        loaded = Measurement(0.4, 7, "measured", 5, 0.01, load=1.5, cpu_share=0.4)
        s.put_many(FP, [("conv", "k", "im2col", loaded)])
        assert s.get(FP_ID, "conv", "k", "im2col") == loaded
    assert columns(path)[-2:] == ["load", "cpu_share"]
    with CostStore(path) as s:                      # opening again changes nothing
        assert s.count() == 2 and s.get(FP_ID, "conv", "k", "im2col") == loaded


def test_the_load_travels_with_an_export(tmp_path: Path) -> None:
    m = Measurement(1e-3, 64, "measured", 7, 0.03, load=0.75, cpu_share=0.5)
    with CostStore(tmp_path / "a.sqlite") as a, CostStore(tmp_path / "b.sqlite") as b:
        a.put_many(FP, [("conv", "k", "im2col", m)])
        a.export(tmp_path / "costs.json")
        [row] = json.loads((tmp_path / "costs.json").read_text())["rows"]
        assert (row["load"], row["cpu_share"]) == (0.75, 0.5)
        b.import_(tmp_path / "costs.json")
        got = b.get(FP_ID, "conv", "k", "im2col")
        assert got is not None and (got.load, got.cpu_share, got.under_load) == (0.75, 0.5, True)
        row["cpu_share"] = 1.5                      # not a share: the import is refused
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**json.loads((tmp_path / "costs.json").read_text()),
                                   "rows": [row]}))
        with pytest.raises(ValueError, match="cpu_share"):
            b.import_(bad)


def test_prune_deletes_loaded_noisy_stale_and_invalid_rows(tmp_path: Path) -> None:
    good = Measurement(1e-3, 0, "measured", 5, 0.01, load=0.5, cpu_share=0.99)
    loaded = Measurement(1e-3, 0, "measured", 5, 0.01, load=2.0, cpu_share=0.3)
    noisy = Measurement(1e-3, 0, "measured", 5, 0.9, load=0.5, cpu_share=0.95)
    unknown = Measurement(1e-3, 0, "measured", 5, 0.01)
    with CostStore(tmp_path / "costs.sqlite") as s:
        s.put_many(FP, [("conv", "good", "a", good), ("conv", "loaded", "a", loaded),
                        ("conv", "noisy", "a", noisy), ("conv", "old", "a", good),
                        ("conv", "unknown", "a", unknown), ("conv", "bad", "a", good)])
        s.put_many({"cpu": "other"}, [("conv", "loaded", "a", loaded)])
        s._db.execute("UPDATE costs SET measured_at = measured_at - 40 * 86400 WHERE key='old'")
        s._db.execute("UPDATE costs SET time_s = -1 WHERE key = 'bad'")
        kept = s.prune(flagged=False)               # only what is invalid
        assert (kept.invalid, kept.deleted) == (1, 1)
        stats = s.prune(older_than_s=30 * 86400, fp_id=FP_ID)
        assert (stats.under_load, stats.noisy, stats.stale, stats.invalid) == (1, 1, 1, 0)
        left = {r[0] for r in s._db.execute("SELECT key FROM costs WHERE fingerprint_id = ?",
                                            (FP_ID,))}
        assert left == {"good", "unknown"}
        assert s.count() == 3                       # the other fingerprint's row: not asked
        assert s.prune().under_load == 1 and s.count() == 2
        assert {i.id for i in s.fingerprints()} == {FP_ID}     # emptied fingerprints go too


# -- the profiler ----------------------------------------------------------------------------
def test_remeasure_measures_flagged_costs_again_and_keeps_the_rest(tmp_path: Path) -> None:
    requests = [ConvRequest(TINY, a.name) for a in registry.applicable(TINY)]
    with CostStore(tmp_path / "costs.sqlite") as store:
        profiler = Profiler(store, threads=1, budget_s=BUDGET)
        first = profiler.costs(requests)
        assert all(m.cpu_share is not None and m.load is not None for m in first.values())
        doctored = [request_key(r) for r in requests[:3]]
        store._db.executemany("UPDATE costs SET cpu_share = 0.1 WHERE kind = ? AND key = ? "
                              "AND candidate = ?", doctored)
        stored = store.get_many(profiler.fingerprint_id, [request_key(r) for r in requests])
        flagged = {k for k, m in stored.items() if m.flagged}
        assert set(doctored) <= flagged
        again = profiler.costs(requests, remeasure=lambda m: m.flagged)
        stats = profiler.last_stats
        assert stats.remeasured == stats.measured == len(flagged)
        assert stats.cached == len(requests) - len(flagged)
        for key in doctored:                        # measured again: the new row replaced it
            assert again[key].cpu_share != 0.1 and again[key] == store.get(
                profiler.fingerprint_id, *key)
        for key in set(stored) - flagged:
            assert again[key] == stored[key]
        profiler.costs(requests, remeasure=lambda m: True)
        assert profiler.last_stats.remeasured == len(requests)
        # no time left: nothing is measured again, and the stored costs stand (not estimates)
        hurried = Profiler(store, threads=1, budget_s=BUDGET, total_budget_s=1e-9)
        time.sleep(0.01)
        kept = hurried.costs(requests, remeasure=lambda m: True)
        assert {m.source for m in kept.values()} == {"measured"}


# -- the measuring lock ----------------------------------------------------------------------
def _measure_holding(db: str, started: multiprocessing.synchronize.Event,
                     go: multiprocessing.synchronize.Event) -> None:
    """Measure TINY's costs, pausing (with the measuring lock held) after the first one until
    ``go``."""
    def progress(done: int, total: int, request: object) -> None:
        if done == 1:
            started.set()
            go.wait(60)

    with CostStore(db) as store:
        Profiler(store, threads=1, budget_s=BUDGET).costs(
            [ConvRequest(TINY, a.name) for a in registry.applicable(TINY)], progress=progress)


def test_a_second_profiler_waits_for_the_first_and_reads_what_it_measured(tmp_path: Path
                                                                          ) -> None:
    db = str(tmp_path / "costs.sqlite")
    CostStore(db).close()
    ctx = multiprocessing.get_context("spawn")
    started, go = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_measure_holding, args=(db, started, go))
    first.start()
    try:
        assert started.wait(120), "the first profiler never started measuring"
        requests = [ConvRequest(TINY, a.name) for a in registry.applicable(TINY)]
        # With a deadline, waiting for the lock ends there: nothing is measured.
        with CostStore(db) as store:
            hurried = Profiler(store, threads=1, budget_s=BUDGET, total_budget_s=0.3)
            hurried.costs(requests)
            assert hurried.last_stats.measured == 0
            assert hurried.last_stats.unmeasured == len(requests) - store.count()
        # Without one, it waits; what the first one measured meanwhile is read, not measured.
        second: dict[str, object] = {}

        def run() -> None:
            with CostStore(db) as store:
                profiler = Profiler(store, threads=1, budget_s=BUDGET)
                profiler.costs(requests)
                second["stats"] = profiler.last_stats

        waiter = threading.Thread(target=run)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and "stats" not in second      # waiting for the lock
        go.set()
        first.join(120)
        assert first.exitcode == 0
        waiter.join(120)
        stats = second["stats"]
        assert stats.measured == 0 and stats.cached == len(requests)
    finally:
        go.set()
        first.join(10)
        if first.is_alive():
            first.terminate()


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    db = tmp_path / "costs.sqlite"
    with measuring_lock(db) as held:
        assert held and lock_path(db).exists()
        with measuring_lock(db, deadline=time.monotonic() + 0.1) as again:
            assert not again            # another holder (another open file) waits, then not
    with measuring_lock(db, deadline=time.monotonic() + 0.1) as again:
        assert again                    # released


def test_the_lock_file_is_beside_the_store(tmp_path: Path) -> None:
    assert lock_path(tmp_path / "x" / "costs.sqlite") == \
        tmp_path / "x" / "costs.sqlite.measuring.lock"
    assert machine_fingerprint(1)["threads"] == 1


def test_cluster_chunks_keep_each_layers_candidates_together() -> None:
    from convplan.profiles.profiler import layers
    from convplan.profiles.remote import layer_chunks

    small = ConvSpec(n=1, c=4, h=8, w=8, m=4, kh=1, kw=1)
    requests = [ConvRequest(spec, a.name) for spec in (TINY, small, TINY.__class__(
        n=1, c=4, h=6, w=6, m=4, kh=3, kw=3)) for a in registry.applicable(spec)]
    for size in (1, 3, 8, 100):
        chunks = layer_chunks(requests, size)
        assert [r for c in chunks for r in c] == requests      # all, in order, once
        for group in layers(requests):
            assert sum(any(r in c for r in group) for c in chunks) == 1     # one chunk each
        assert all(len(c) <= size or len(layers(c)) == 1 for c in chunks)
    assert len(layer_chunks(requests, 100)) == 1
