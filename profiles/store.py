"""The cost store: measured costs per machine fingerprint, in one SQLite file.

Why SQLite: profiling runs may be interrupted and several may run at once (a batch of networks, a
service beside a CLI). In WAL mode readers never block and writers queue behind a busy timeout
instead of failing; every batch of measurements is one transaction, so a killed run keeps every
batch it committed and nothing of the one it was writing. Only measured numbers are stored:
analytic estimates are cheap to recompute and must never pass for measurements.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fingerprint import canonical_json, fingerprint_id
from .measurement import Measurement

#: (kind, key, candidate): what a cost is of, within one machine fingerprint.
CostKey = tuple[str, str, str]
#: One row to store: the cost key and its measurement.
CostRow = tuple[str, str, str, Measurement]

SCHEMA_VERSION = 1
EXPORT_FORMAT = "convplan-costs"
EXPORT_VERSION = 1
BUSY_TIMEOUT_S = 60.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fingerprints (
        id TEXT PRIMARY KEY,
        json TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS costs (
        fingerprint_id TEXT NOT NULL REFERENCES fingerprints(id),
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        candidate TEXT NOT NULL,
        time_s REAL NOT NULL,
        workspace_bytes INTEGER NOT NULL,
        repeats INTEGER NOT NULL,
        spread REAL NOT NULL,
        measured_at REAL NOT NULL,
        PRIMARY KEY (fingerprint_id, kind, key, candidate)) WITHOUT ROWID""",
)
_COLUMNS = ("fingerprint_id", "kind", "key", "candidate", "time_s", "workspace_bytes",
            "repeats", "spread", "measured_at")
# Merging keeps the newer measurement of a cost (an import never overwrites a fresher local one).
_UPSERT = (
    f"INSERT INTO costs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (fingerprint_id, kind, key, candidate) DO UPDATE SET "
    "time_s = excluded.time_s, workspace_bytes = excluded.workspace_bytes, "
    "repeats = excluded.repeats, spread = excluded.spread, measured_at = excluded.measured_at "
    "WHERE excluded.measured_at >= costs.measured_at"
)


def default_db_path() -> Path:
    """``$CONVPLAN_DB``, else ``$XDG_CACHE_HOME/convplan/costs.sqlite``, else
    ``~/.cache/convplan/costs.sqlite``: measurements are a cache of this machine's speed."""
    explicit = os.environ.get("CONVPLAN_DB")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "convplan" / "costs.sqlite"


@dataclass(frozen=True)
class FingerprintInfo:
    """One machine fingerprint in the store and how many costs it holds."""

    id: str
    fingerprint: dict[str, Any]
    rows: int


class CostStore:
    """Measured costs keyed by (fingerprint id, kind, key, candidate). One connection per
    instance; open one store per process or thread (SQLite connections are not shared)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create {self.path.parent}: {error.strerror}") from None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (one per batch).
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as error:
            raise ValueError(f"cannot open cost store {self.path}: {error}") from None
        try:
            self._setup_retrying(busy_timeout_s)
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ValueError(f"{self.path} is not a usable convplan cost store: {error}") from None

    def _setup_retrying(self, timeout_s: float) -> None:
        """`_setup`, retried while another process holds the lock: switching a new file to WAL
        can fail at once with "database is locked" (SQLite skips the busy handler there when
        several processes open the same new file together)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while True:
            try:
                self._setup()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":  # only the first opener switches (an exclusive lock)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal mode is {mode})")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a crashed process
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, this convplan reads "
                                            f"version {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: everything inside commits together or not at all. Writers take the
        write lock up front (BEGIN IMMEDIATE) so they queue on the busy timeout, never deadlock."""
        self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CostStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # -- reading -----------------------------------------------------------------------------
    def get(self, fp_id: str, kind: str, key: str, candidate: str) -> Measurement | None:
        """The stored measurement of one cost, or None."""
        row = self._db.execute(
            "SELECT time_s, workspace_bytes, repeats, spread FROM costs "
            "WHERE fingerprint_id = ? AND kind = ? AND key = ? AND candidate = ?",
            (fp_id, kind, key, candidate)).fetchone()
        return None if row is None else _measurement(row)

    def get_many(self, fp_id: str, keys: Iterable[CostKey]) -> dict[CostKey, Measurement]:
        """The stored measurements among ``keys`` (missing ones are absent), read from one
        consistent snapshot."""
        found: dict[CostKey, Measurement] = {}
        with self._transaction(write=False) as db:
            for kind, key, candidate in keys:
                row = db.execute(
                    "SELECT time_s, workspace_bytes, repeats, spread FROM costs "
                    "WHERE fingerprint_id = ? AND kind = ? AND key = ? AND candidate = ?",
                    (fp_id, kind, key, candidate)).fetchone()
                if row is not None:
                    found[(kind, key, candidate)] = _measurement(row)
        return found

    def count(self, fp_id: str | None = None) -> int:
        """How many costs are stored (for one fingerprint, or in all)."""
        if fp_id is None:
            return int(self._db.execute("SELECT COUNT(*) FROM costs").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM costs WHERE fingerprint_id = ?",
                                    (fp_id,)).fetchone()[0])

    def fingerprints(self) -> list[FingerprintInfo]:
        """Every machine fingerprint in the store with its number of costs."""
        rows = self._db.execute(
            "SELECT f.id, f.json, COUNT(c.kind) FROM fingerprints f "
            "LEFT JOIN costs c ON c.fingerprint_id = f.id GROUP BY f.id ORDER BY f.id").fetchall()
        return [FingerprintInfo(i, json.loads(text), int(n)) for i, text, n in rows]

    # -- writing -----------------------------------------------------------------------------
    def put_many(self, fp: dict[str, Any], rows: Iterable[CostRow]) -> int:
        """Store one batch of measurements of machine ``fp`` in ONE transaction (all or
        nothing: an exception while the rows are consumed leaves no trace of this batch).
        Returns the number of rows written."""
        fp_id = fingerprint_id(fp)
        now = time.time()
        written = 0
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO fingerprints (id, json) VALUES (?, ?)",
                       (fp_id, canonical_json(fp)))
            for kind, key, candidate, m in rows:
                if m.source != "measured":
                    raise ValueError(f"only measured costs are stored, not {m.source} ones "
                                     f"({kind} {key} {candidate})")
                db.execute(
                    "INSERT OR REPLACE INTO costs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (fp_id, kind, key, candidate, float(m.time_s), int(m.workspace_bytes),
                     int(m.repeats), float(m.spread), now))
                written += 1
        return written

    # -- moving between machines -------------------------------------------------------------
    def export(self, path: str | os.PathLike[str], fp_id: str | None = None) -> int:
        """Write every cost (or one fingerprint's) with its fingerprints as JSON; the file is
        replaced atomically, never left half-written. Returns the number of rows."""
        where, args = ("WHERE fingerprint_id = ?", (fp_id,)) if fp_id else ("", ())
        with self._transaction(write=False) as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM costs {where} "
                              "ORDER BY fingerprint_id, kind, key, candidate", args).fetchall()
            fps = {i: json.loads(text) for i, text in
                   db.execute("SELECT id, json FROM fingerprints").fetchall()}
        used = {r[0] for r in rows} | ({fp_id} if fp_id in fps else set())
        document = {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "fingerprints": {i: fps[i] for i in sorted(used)},
            "rows": [dict(zip(_COLUMNS, r, strict=True)) for r in rows],
        }
        target = Path(path)
        handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.",
                                       suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(document, out, indent=1)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(rows)

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Merge an exported file: all of it in one transaction, or (ValueError saying what is
        wrong) nothing. Of two measurements of one cost the newer wins. Returns rows read."""
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a convplan cost export: not text") from None
        fps, rows = _parse_export(text, str(path))
        with self._transaction() as db:
            for fp_id, fp in fps.items():
                db.execute("INSERT OR IGNORE INTO fingerprints (id, json) VALUES (?, ?)",
                           (fp_id, canonical_json(fp)))
            db.executemany(_UPSERT, rows)
        return len(rows)


def _measurement(row: tuple[Any, ...]) -> Measurement:
    time_s, workspace, repeats, spread = row
    return Measurement(float(time_s), int(workspace), "measured", int(repeats), float(spread))


def _parse_export(text: str, where: str) -> tuple[dict[str, dict[str, Any]], list[tuple]]:
    """Validate an export completely before anything is written; ValueError names the fault."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{where} is not a valid convplan cost export: {what}")

    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad(f"invalid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise bad(f'expected an object with "format": "{EXPORT_FORMAT}"')
    if document.get("version") != EXPORT_VERSION:
        raise bad(f"version {document.get('version')!r}, expected {EXPORT_VERSION}")
    fps = document.get("fingerprints")
    rows = document.get("rows")
    if not isinstance(fps, dict) or not isinstance(rows, list):
        raise bad('"fingerprints" must be an object and "rows" a list')
    for fp_id, fp in fps.items():
        if not isinstance(fp, dict):
            raise bad(f"fingerprint {fp_id!r} is not an object")
        if fingerprint_id(fp) != fp_id:
            raise bad(f"fingerprint {fp_id!r} does not match its contents "
                      f"(hash {fingerprint_id(fp)})")
    parsed = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise bad(f"rows[{i}] is not an object")
        missing = [c for c in _COLUMNS if c not in row]
        if missing:
            raise bad(f"rows[{i}] lacks {', '.join(missing)}")
        if row["fingerprint_id"] not in fps:
            raise bad(f"rows[{i}] refers to unknown fingerprint {row['fingerprint_id']!r}")
        for name in ("kind", "key", "candidate"):
            if not isinstance(row[name], str) or not row[name]:
                raise bad(f"rows[{i}].{name} must be a non-empty string")
        try:
            m = Measurement(row["time_s"], row["workspace_bytes"], "measured", row["repeats"],
                            row["spread"])
        except ValueError as error:
            raise bad(f"rows[{i}]: {error}") from None
        at = row["measured_at"]
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise bad(f"rows[{i}].measured_at must be a number (seconds since the epoch)")
        parsed.append((row["fingerprint_id"], row["kind"], row["key"], row["candidate"],
                       float(m.time_s), m.workspace_bytes, m.repeats, float(m.spread),
                       float(at)))
    return fps, parsed
