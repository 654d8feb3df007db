"""The cost store: measured costs per machine fingerprint, in one SQLite file.

Why SQLite: profiling runs may be interrupted and several may run at once (a batch of networks, a
service beside a CLI). In WAL mode readers never block and writers queue behind a busy timeout
instead of failing; every batch of measurements is one transaction, so a killed run keeps every
batch it committed and nothing of the one it was writing. Only measured numbers are stored:
analytic estimates are cheap to recompute and must never pass for measurements.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convplan.settings import StoreSettings

from .export import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    IMPORTED,
    LOCAL,
    MAX_FINGERPRINT_CHARS,
    CostExport,
    StoredCost,
    read_json,
)
from .export import short_repr as _short
from .fingerprint import canonical_json, fingerprint_id
from .measurement import Measurement

#: (kind, key, candidate): what a cost is of, within one machine fingerprint.
CostKey = tuple[str, str, str]
#: One row to store: the cost key and its measurement.
CostRow = tuple[str, str, str, Measurement]

SCHEMA_VERSION = 2          # 2: the ``origin`` column ('local' or 'imported:...')
BUSY_TIMEOUT_S = 60.0
MAX_IMPORT_BYTES = 32 * 2 ** 20     # an export of ~100 000 costs

_SQLITE_MAGIC = b"SQLite format 3\x00"
_FIX = ("move it away or delete it (convplan will measure again), or give another --db / "
        "$CONVPLAN_DB")

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
        origin TEXT NOT NULL DEFAULT 'local',
        PRIMARY KEY (fingerprint_id, kind, key, candidate)) WITHOUT ROWID""",
)
_COLUMNS = ("fingerprint_id", "kind", "key", "candidate", "time_s", "workspace_bytes",
            "repeats", "spread", "measured_at")
_ROW = (*_COLUMNS, "origin")   # a whole row: the fields of a `StoredCost`, in order
_TABLES = {"fingerprints": {"id", "json"}, "costs": set(_COLUMNS) | {"origin"}}
# An import never overwrites a local measurement; of two imported ones the newer wins.
_IMPORT_UPSERT = (
    f"INSERT INTO costs ({', '.join(_COLUMNS)}, origin) "
    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))}) "
    "ON CONFLICT (fingerprint_id, kind, key, candidate) DO UPDATE SET "
    "time_s = excluded.time_s, workspace_bytes = excluded.workspace_bytes, "
    "repeats = excluded.repeats, spread = excluded.spread, measured_at = excluded.measured_at, "
    "origin = excluded.origin "
    f"WHERE costs.origin != '{LOCAL}' AND excluded.measured_at >= costs.measured_at"
)


class StoreError(ValueError):
    """The cost store cannot be used as asked: it is damaged, not convplan's, read-only, or
    one of its rows is nonsense. The message names the file, what is wrong and what to do."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(message)
        self.path = Path(path)


class StoreWarning(UserWarning):
    """Something in the cost store was ignored (a bad row, a bad fingerprint); it says which."""


def default_db_path() -> Path:
    """``$CONVPLAN_DB``, else the user cache (platformdirs: ``$XDG_CACHE_HOME/convplan`` or
    ``~/.cache/convplan`` on Linux) ``/costs.sqlite``: measurements are a cache of this
    machine's speed. Read on every call, so a changed environment is honoured."""
    return StoreSettings.from_env().db.expanduser()


@dataclass(frozen=True)
class FingerprintInfo:
    """One machine fingerprint in the store and how many costs it holds (``imported`` of them
    came from `import_`, the rest were measured here)."""

    id: str
    fingerprint: dict[str, Any]
    rows: int
    imported: int = 0


@dataclass(frozen=True)
class ImportStats:
    """What the last `CostStore.import_` did: rows read, rows written (new, or replacing an
    older imported row), and rows skipped because this store measured that cost itself or
    holds a newer import of it."""

    read: int
    written: int
    kept_local: int
    kept_newer: int
    origin: str


class CostStore:
    """Measured costs keyed by (fingerprint id, kind, key, candidate). One connection per
    instance; open one store per process or thread (SQLite connections are not shared).

    Trust. Opening checks the file before using it: an SQLite database (not another kind of
    file, not truncated), intact (``PRAGMA quick_check``), and convplan's (another program's
    database is refused and never modified). Each of these is a `StoreError` naming the file
    and saying to move it away. Every row read is checked too, as a `StoredCost` (finite,
    non-negative, sane times and sizes of the right types): a bad row is ignored with a
    `StoreWarning` naming it, so it counts as not measured and the next measurement of it
    replaces it.

    Origin. Every row is 'local' (measured on this machine by `put_many`) or
    'imported:<file>@<digest>' (from `import_`, whatever fingerprint the file claims). Reads
    return imported rows with source "imported", never "measured"; an import never overwrites a
    local row, and a local measurement replaces an imported one. ``use_imported=False`` makes
    reads ignore imported rows, so that a profiler measures those costs again.

    Read-only. ``read_only=None`` opens the store read-only when it exists and this process
    cannot write it or its directory; ``True`` forces it. A read-only store lists, exports and
    answers reads; every write (`put_many`, `import_`, `drop_imported`) is a `StoreError`
    saying so, and nothing is written: measuring into a store you cannot keep would repeat
    the work on every run, so planning that needs new measurements fails and says to give a
    writable ``--db`` or to plan with ``--no-profile``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 busy_timeout_s: float = BUSY_TIMEOUT_S, read_only: bool | None = None,
                 use_imported: bool = True) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.use_imported = use_imported
        self.last_import: ImportStats | None = None
        exists = self.path.exists()
        if exists and not self.path.is_file():
            raise StoreError(self.path, f"{self.path} is not a usable convplan cost store: not "
                                        f"a regular file; {_FIX}")
        if read_only is None:
            parent = self.path.parent
            read_only = exists and not (os.access(self.path, os.W_OK)
                                        and os.access(parent, os.W_OK | os.X_OK))
        self.read_only = read_only
        if exists:
            self._check_header()
        elif read_only:
            raise StoreError(self.path, f"cannot open cost store {self.path} read-only: it "
                                        "does not exist")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(self.path, f"cannot create {self.path.parent}: "
                                            f"{error.strerror}") from None
        self._db = self._connect(immutable=False)
        self._origin_sql = "origin"
        try:
            try:
                self._setup_retrying(busy_timeout_s)
            except sqlite3.OperationalError as error:
                if not (read_only and ("unable to open" in str(error)
                                       or "readonly" in str(error))):
                    raise
                # A WAL store in a directory we cannot write has no -shm file to share (SQLite
                # says "unable to open" or "attempt to write a readonly database"): read it as
                # immutable (nobody can change it while we cannot write there either).
                self._db.close()
                self._db = self._connect(immutable=True)
                self._setup_retrying(busy_timeout_s)
        except StoreError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise self._unusable(f"damaged or not a database ({error})") from None

    # -- opening and checking ----------------------------------------------------------------
    def _unusable(self, what: str) -> StoreError:
        return StoreError(self.path, f"{self.path} is not a usable convplan cost store: {what}; "
                                     f"{_FIX}")

    def _check_header(self) -> None:
        """Refuse what is not an SQLite file, before SQLite sees it."""
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(100)
                size = os.fstat(handle.fileno()).st_size
        except OSError as error:
            raise StoreError(self.path, f"cannot read cost store {self.path}: "
                                        f"{error.strerror}") from None
        if size == 0:
            return      # a new, empty database
        if not header.startswith(_SQLITE_MAGIC):
            raise self._unusable(f"not an SQLite database (it starts with {header[:16]!r})")
        if len(header) < 100:
            raise self._unusable(f"truncated ({size} bytes, less than an SQLite header)")
        page = int.from_bytes(header[16:18], "big")
        page = 65536 if page == 1 else page
        if page < 512 or page & (page - 1) or size % page:
            raise self._unusable(f"truncated or damaged ({size} bytes is not a whole number "
                                 f"of {page}-byte pages)")

    def _connect(self, immutable: bool) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (one per batch).
            if not self.read_only:
                return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
            return sqlite3.connect(uri + ("&immutable=1" if immutable else ""), uri=True,
                                   timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreError(self.path, f"cannot open cost store {self.path}: {error}") \
                from None

    def _setup_retrying(self, timeout_s: float) -> None:
        """`_setup`, retried while another process holds the lock: switching a new file to WAL
        can fail at once with "database is locked" (SQLite skips the busy handler there when
        several processes open the same new file together)."""
        self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
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

    def _schema(self) -> tuple[int, bool]:
        """(schema version, whether the store is still empty); StoreError if the database is
        not convplan's. Reads only."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        objects = self._db.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        tables = {name for kind, name in objects if kind == "table"}
        others = sorted(f"{kind} {name}" for kind, name in objects
                        if kind not in ("table", "index"))
        if not objects and version == 0:
            return 0, True
        if version > SCHEMA_VERSION:
            raise StoreError(self.path, f"cost store {self.path} was written by a newer convplan "
                                        f"(schema version {version}; this one reads up to "
                                        f"{SCHEMA_VERSION}): upgrade convplan, or give another "
                                        "--db / $CONVPLAN_DB")
        if tables != set(_TABLES) or others or version not in (0, 1, SCHEMA_VERSION):
            found = ", ".join(sorted(tables) + others) or "none"
            raise self._unusable(f"another program's SQLite database (tables: {found}; "
                                 f"user_version {version}); convplan leaves it untouched")
        for table, wanted in _TABLES.items():
            columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            optional = {"origin"} if table == "costs" and version < SCHEMA_VERSION else set()
            if not wanted - optional <= columns <= wanted:
                raise self._unusable(f"table {table} has columns {', '.join(sorted(columns))}, "
                                     "not convplan's")
        if "origin" not in {r[1] for r in self._db.execute("PRAGMA table_info(costs)")}:
            return 1, False
        return max(version, 1), False

    def _setup(self) -> None:
        self._schema()      # a foreign database is refused before anything touches it
        problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            said = "; ".join(line for p in problems for line in str(p).splitlines()
                             if line and not line.startswith("***"))
            raise self._unusable(f"damaged (SQLite's integrity check says: {_short(said, 300)})")
        if self.read_only:
            version, empty = self._schema()
            if empty:
                raise StoreError(self.path, f"cost store {self.path} is empty and read-only: "
                                            "there is nothing to read and nothing can be stored")
            self._origin_sql = "origin" if version >= 2 else f"'{LOCAL}'"
            return
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":  # only the first opener switches (an exclusive lock)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal mode is {mode})")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a crashed process
        with self._transaction():
            version, empty = self._schema()     # again: another process may have set it up
            if empty:
                for statement in _SCHEMA:
                    self._db.execute(statement)
            elif version < SCHEMA_VERSION:      # measured before origins were recorded: local
                self._db.execute("ALTER TABLE costs ADD COLUMN origin TEXT NOT NULL "
                                 f"DEFAULT '{LOCAL}'")
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
                with suppress(sqlite3.Error):   # the original error matters more
                    self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """SQLite's errors while ``doing`` something, as a `StoreError` naming the file."""
        try:
            yield
        except sqlite3.Error as error:
            text = str(error)
            if "readonly" in text or "read-only" in text:
                raise self._read_only_error(doing) from None
            if isinstance(error, sqlite3.DatabaseError) and any(
                    word in text for word in ("malformed", "not a database", "corrupt")):
                raise self._unusable(f"damaged ({doing}: {text})") from None
            raise StoreError(self.path, f"cost store {self.path}: {doing} failed: {text}") \
                from None

    def _read_only_error(self, doing: str) -> StoreError:
        return StoreError(self.path, f"cannot write cost store {self.path} ({doing}): it is "
                                     "read-only, nothing was written; make it writable, give "
                                     "another --db / $CONVPLAN_DB, or plan with --no-profile")

    def _writable(self, doing: str) -> None:
        if self.read_only:
            raise self._read_only_error(doing)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CostStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        with self._errors("reading the journal mode"):
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # -- reading -----------------------------------------------------------------------------
    def _select(self) -> str:
        return ("SELECT time_s, workspace_bytes, repeats, spread, measured_at, "
                f"{self._origin_sql} FROM costs WHERE fingerprint_id = ? AND kind = ? "
                "AND key = ? AND candidate = ?")

    def _read(self, fp_id: str, key: CostKey, row: tuple[Any, ...] | None,
              bad: list[str]) -> Measurement | None:
        """A checked row as a Measurement; None (and a note in ``bad``) when it is nonsense,
        None too for an imported row when imported rows are not used."""
        if row is None:
            return None
        try:
            cost = StoredCost.from_row(dict(zip(_ROW, (fp_id, *key, *row), strict=True)))
        except ValueError as problem:
            bad.append(f"{'/'.join(key)} of fingerprint {fp_id}: {problem}")
            return None
        if cost.origin != LOCAL and not self.use_imported:
            return None
        return cost.measurement()

    def _warn(self, bad: list[str], what: str = "row") -> None:
        if bad:
            shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
            warnings.warn(StoreWarning(
                f"cost store {self.path}: ignored {len(bad)} invalid {what}(s) ({shown}); "
                "they count as not measured and are replaced when measured again"),
                stacklevel=3)

    def get(self, fp_id: str, kind: str, key: str, candidate: str) -> Measurement | None:
        """The stored measurement of one cost, or None (also for an invalid row: warned)."""
        bad: list[str] = []
        with self._errors("reading a cost"):
            row = self._db.execute(self._select(), (fp_id, kind, key, candidate)).fetchone()
        found = self._read(fp_id, (kind, key, candidate), row, bad)
        self._warn(bad)
        return found

    def get_many(self, fp_id: str, keys: Iterable[CostKey]) -> dict[CostKey, Measurement]:
        """The stored measurements among ``keys`` (missing ones are absent), read from one
        consistent snapshot. ``Measurement.source`` says "measured" for this store's own
        measurements and "imported" for imported ones. Invalid rows are absent, and a
        `StoreWarning` names them."""
        found: dict[CostKey, Measurement] = {}
        bad: list[str] = []
        select = self._select()
        with self._errors("reading costs"), self._transaction(write=False) as db:
            for kind, key, candidate in keys:
                row = db.execute(select, (fp_id, kind, key, candidate)).fetchone()
                m = self._read(fp_id, (kind, key, candidate), row, bad)
                if m is not None:
                    found[(kind, key, candidate)] = m
        self._warn(bad)
        return found

    def count(self, fp_id: str | None = None) -> int:
        """How many costs are stored (for one fingerprint, or in all)."""
        with self._errors("counting costs"):
            if fp_id is None:
                return int(self._db.execute("SELECT COUNT(*) FROM costs").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM costs WHERE fingerprint_id = ?",
                                        (fp_id,)).fetchone()[0])

    def fingerprints(self) -> list[FingerprintInfo]:
        """Every machine fingerprint in the store with its number of costs (and how many of
        them were imported). A fingerprint whose stored JSON is not an object is listed as
        ``{}`` with a `StoreWarning`."""
        origin = "c.origin" if self._origin_sql == "origin" else self._origin_sql
        with self._errors("listing fingerprints"):
            rows = self._db.execute(
                f"SELECT f.id, f.json, COUNT(c.kind), "
                f"COALESCE(SUM({origin} != '{LOCAL}'), 0) "
                "FROM fingerprints f LEFT JOIN costs c ON c.fingerprint_id = f.id "
                "GROUP BY f.id ORDER BY f.id").fetchall()
        infos, bad = [], []
        for fp_id, text, n, imported in rows:
            fp = _fingerprint(text)
            if fp is None:
                bad.append(f"fingerprint {fp_id!r}: not a JSON object")
                fp = {}
            infos.append(FingerprintInfo(str(fp_id), fp, int(n), int(imported)))
        self._warn(bad, "fingerprint")
        return infos

    # -- writing -----------------------------------------------------------------------------
    def put_many(self, fp: dict[str, Any], rows: Iterable[CostRow]) -> int:
        """Store one batch of measurements of machine ``fp``, made here, in ONE transaction
        (all or nothing: an exception while the rows are consumed leaves no trace of this
        batch). They are local: they replace any earlier row of the same cost, imported ones
        included. Returns the number of rows written."""
        self._writable("storing measurements")
        fp_id = fingerprint_id(fp)
        now = time.time()
        written = 0
        with self._errors("storing measurements"), self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO fingerprints (id, json) VALUES (?, ?)",
                       (fp_id, canonical_json(fp)))
            for kind, key, candidate, m in rows:
                if m.source != "measured":
                    raise ValueError(f"only measured costs are stored (measured here), not "
                                     f"{m.source} ones ({kind} {key} {candidate})")
                values = (fp_id, kind, key, candidate, m.time_s, m.workspace_bytes, m.repeats,
                          m.spread, now, LOCAL)
                try:
                    cost = StoredCost.from_row(dict(zip(_ROW, values, strict=True)))
                except ValueError as problem:
                    raise ValueError(f"not storing {kind} {key} {candidate}: {problem}") \
                        from None
                db.execute(
                    f"INSERT OR REPLACE INTO costs ({', '.join(_COLUMNS)}, origin) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(cost, _ROW))
                written += 1
        return written

    def drop_imported(self, fp_id: str | None = None) -> int:
        """Delete every imported row (of one fingerprint, or all), keeping local ones: the way
        back from a bad import. Returns the number of rows deleted."""
        self._writable("deleting imported costs")
        where, args = ("AND fingerprint_id = ?", (fp_id,)) if fp_id else ("", ())
        with self._errors("deleting imported costs"), self._transaction() as db:
            deleted = db.execute(f"DELETE FROM costs WHERE origin != '{LOCAL}' {where}",
                                 args).rowcount
            db.execute("DELETE FROM fingerprints WHERE id NOT IN "
                       "(SELECT DISTINCT fingerprint_id FROM costs)")
        return int(deleted)

    # -- moving between machines -------------------------------------------------------------
    def export(self, path: str | os.PathLike[str], fp_id: str | None = None) -> int:
        """Write every cost (or one fingerprint's) with its fingerprints as a `CostExport`
        (JSON); the file is replaced atomically, never left half-written. Each row keeps its
        ``origin``. Invalid rows (and rows of an invalid fingerprint) are left out with a
        `StoreWarning`. Returns the number of rows written."""
        where, args = ("WHERE fingerprint_id = ?", (fp_id,)) if fp_id else ("", ())
        with self._errors("exporting"), self._transaction(write=False) as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)}, {self._origin_sql} FROM costs "
                              f"{where} ORDER BY fingerprint_id, kind, key, candidate",
                              args).fetchall()
            texts = db.execute("SELECT id, json FROM fingerprints").fetchall()
        fps: dict[str, dict[str, Any]] = {}
        for i, text in texts:
            fp = _fingerprint(text)
            if fp is not None and fingerprint_id(fp) == i:
                fps[i] = fp
        kept: list[StoredCost] = []
        bad = []
        for r in rows:
            try:
                if r[0] not in fps:
                    raise ValueError("unknown or invalid fingerprint")
                kept.append(StoredCost.from_row(dict(zip(_ROW, r, strict=True))))
            except ValueError as problem:
                bad.append(f"{'/'.join(map(str, r[1:4]))} of fingerprint {r[0]}: {problem}")
        self._warn(bad)
        used = {cost.fingerprint_id for cost in kept} | ({fp_id} if fp_id in fps else set())
        document = CostExport(format=EXPORT_FORMAT, version=EXPORT_VERSION,
                              fingerprints={i: fps[i] for i in sorted(used)}, rows=kept)
        target = Path(path)
        handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.",
                                       suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(document.model_dump_json(indent=1))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(kept)

    def import_(self, path: str | os.PathLike[str], *, max_bytes: int = MAX_IMPORT_BYTES) -> int:
        """Merge an exported file: all of it in one transaction, or (ValueError saying what is
        wrong) nothing. The file is checked completely first: at most ``max_bytes``, then a
        `CostExport` (JSON without NaN/Infinity or absurd nesting, every number finite and
        within bounds, every ``measured_at`` between 2000 and now plus a day of clock skew).

        Every row is stored as imported (origin ``imported:<file name>@<sha256 of the file>``),
        whatever fingerprint it claims, this machine's included: an import never overwrites a
        local row, and of two imported rows of one cost the newer wins. Returns rows read;
        `last_import` has the details."""
        self._writable(f"importing {path}")
        data = _read_bounded(Path(path), max_bytes)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a convplan cost export: not UTF-8 text") from None
        origin = f"{IMPORTED}{_printable(Path(path).name)[:80]}@" \
                 f"{hashlib.sha256(data).hexdigest()[:12]}"
        document = CostExport.from_json(text, str(path))
        rows = [_values(cost) for cost in document.rows]
        with self._errors(f"importing {path}"), self._transaction() as db:
            for fp_id, fp in document.fingerprints.items():
                db.execute("INSERT OR IGNORE INTO fingerprints (id, json) VALUES (?, ?)",
                           (fp_id, canonical_json(fp)))
            local = 0
            for row in rows:
                found = db.execute("SELECT origin FROM costs WHERE fingerprint_id = ? AND "
                                   "kind = ? AND key = ? AND candidate = ?", row[:4]).fetchone()
                local += found is not None and found[0] == LOCAL
            before = db.total_changes
            db.executemany(_IMPORT_UPSERT, [(*row, origin) for row in rows])
            written = db.total_changes - before
        self.last_import = ImportStats(len(rows), written, local, len(rows) - written - local,
                                       origin)
        return len(rows)


def _values(cost: StoredCost, columns: tuple[str, ...] = _COLUMNS) -> tuple[Any, ...]:
    """``cost``'s values of ``columns``, in their order (for SQL parameters)."""
    return tuple(getattr(cost, column) for column in columns)


def _fingerprint(text: Any) -> dict[str, Any] | None:
    """A stored fingerprint's JSON as a dict, or None when it is not one."""
    if not isinstance(text, str) or len(text) > MAX_FINGERPRINT_CHARS:
        return None
    try:
        fp = read_json(text)
    except ValueError:
        return None
    return fp if isinstance(fp, dict) else None


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of ``path`` (a special file or a growing one is cut off there)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise ValueError(f"{path} is too large to be a convplan cost export ({size} "
                                 f"bytes; at most {max_bytes})")
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path} is too large to be a convplan cost export (more than "
                         f"{max_bytes} bytes)")
    return data
