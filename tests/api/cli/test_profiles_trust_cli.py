"""`convplan profile --remeasure / --remeasure-all` and `convplan profiles prune`, run as the
installed `convplan` script. Some stored rows are made to look as if measured under load, noisy
or long ago; what the machine's own measurements are (a shared machine may flag some of them
too) is read from the store, never assumed."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from convplan.profiles.store import CostStore
from tests.support.cli import TINY, cli

BUDGET = "0.005"


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "net.json"
    path.write_text(json.dumps(TINY))
    return path


def profile(net: Path, db: Path, *extra: str) -> tuple[dict, str]:
    result = cli("profile", net, "--db", db, "--threads", "1", "--budget-seconds", BUDGET,
                 "--json", *extra)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # the warning, exactly when something was measured under load
    assert ("under load" in result.stderr) == (report["under_load"] > 0), result.stderr
    return report, result.stderr


def rows(db: Path) -> dict[tuple[str, str, str], tuple[float, float | None, float]]:
    """(kind, key, candidate) -> (measured_at, cpu_share, spread) of every stored cost."""
    with closing(sqlite3.connect(db)) as c:
        return {tuple(r[:3]): tuple(r[3:]) for r in c.execute(
            "SELECT kind, key, candidate, measured_at, cpu_share, spread FROM costs")}


def flagged(db: Path, fp_id: str) -> set[tuple[str, str, str]]:
    with CostStore(db) as store:
        found = store.get_many(fp_id, list(rows(db)))
    return {k for k, m in found.items() if m.flagged}


def doctor(db: Path, keys: list[tuple[str, str, str]], sql: str) -> None:
    with closing(sqlite3.connect(db)) as c, c:
        c.executemany(f"UPDATE costs SET {sql} WHERE kind = ? AND key = ? AND candidate = ?",
                      keys)


def test_remeasure_measures_the_flagged_costs_again_and_all_with_all(net: Path, tmp_path: Path
                                                                     ) -> None:
    db = tmp_path / "costs.sqlite"
    first, _ = profile(net, db)
    assert first["measured"] == first["requested"] > 4 and first["remeasured"] == 0
    keys = sorted(rows(db))
    loaded, noisy = keys[:3], keys[3:4]
    doctor(db, loaded, "cpu_share = 0.1")
    doctor(db, noisy, "spread = 5.0")
    expected = flagged(db, first["fingerprint_id"])
    assert set(loaded) | set(noisy) <= expected
    before = rows(db)
    report, _ = profile(net, db, "--remeasure")
    assert report["remeasured"] == report["measured"] == len(expected)
    assert report["cached"] == first["requested"] - len(expected)
    after = rows(db)
    for key in keys:
        if key in expected:     # a new row replaced the flagged one
            assert after[key][0] > before[key][0]
            assert after[key][1] != 0.1 and after[key][2] != 5.0
        else:
            assert after[key] == before[key]
    # again: exactly what is flagged now (the new measurements, if they were flagged too)
    still = flagged(db, first["fingerprint_id"])
    report, _ = profile(net, db, "--remeasure")
    assert report["remeasured"] == len(still)
    every, _ = profile(net, db, "--remeasure-all")
    assert every["remeasured"] == every["measured"] == first["requested"]
    last = rows(db)
    assert all(last[k][0] > after[k][0] for k in keys)
    plain, _ = profile(net, db)       # without the option, stored costs are used as they are
    assert plain["measured"] == 0 and plain["cached"] == first["requested"]


def test_prune_drops_flagged_and_stale_costs_and_profile_measures_them(net: Path,
                                                                        tmp_path: Path) -> None:
    db = tmp_path / "costs.sqlite"
    first, _ = profile(net, db)
    keys = sorted(rows(db))
    doctor(db, keys[:2], "cpu_share = 0.1")
    doctor(db, keys[2:3], "measured_at = measured_at - 40 * 86400")
    stale = {keys[2]}
    expected = flagged(db, first["fingerprint_id"]) | stale

    kept = cli("profiles", "prune", "--db", db, "--older-than-days", "30", "--keep-flagged",
               "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["deleted"] == json.loads(kept.stdout)["stale"] == 1
    assert set(rows(db)) == set(keys) - stale

    pruned = cli("profiles", "prune", "--db", db, "--json")
    assert pruned.returncode == 0, pruned.stderr
    stats = json.loads(pruned.stdout)
    assert stats["under_load"] >= 2 and stats["stale"] == 0 and stats["invalid"] == 0
    assert stats["deleted"] == len(expected - stale)
    assert set(rows(db)) == set(keys) - expected and stats["left"] == len(keys) - len(expected)
    report, _ = profile(net, db)            # measures exactly what was pruned
    assert report["measured"] == len(expected) and set(rows(db)) == set(keys)

    text = cli("profiles", "prune", "--db", db)
    assert text.returncode == 0 and text.stdout.startswith("deleted ") and "left" in text.stdout
