"""The cost export: the JSON document `CostStore.export` writes and `CostStore.import_` reads,
as one pydantic model, `CostExport` (its rows are `StoredCost`, the cost store's rows).

An export carries measurements between machines, so a file to import is read as hostile: it is
parsed without NaN or Infinity, validated strictly (the right JSON types, every number finite
and within bounds, every timestamp plausible, every fingerprint matching its id and every row
naming one of them), and refused whole with one message naming the file and the first fault.
``StoredCost`` is also what the store checks each of its own rows against, so a row the store
uses is one it could export and import again.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from .fingerprint import canonical_json, fingerprint_id
from .measurement import Measurement

EXPORT_FORMAT: Final = "convplan-costs"
EXPORT_VERSION: Final = 1

# What a stored or imported number may be; anything else is damage or a forgery.
MAX_TIME_S = 1e4                    # one run of one layer: under three hours
MAX_WORKSPACE_BYTES = 2 ** 48       # 256 TiB
MAX_REPEATS = 10 ** 9
MAX_SPREAD = 1e6
EARLIEST_MEASURED_AT = 946684800.0  # 2000-01-01: nothing was measured before
CLOCK_SKEW_S = 86400.0              # an import's timestamps may be this far in the future
MAX_NAME_CHARS = 4096               # kind, key, candidate
MAX_FINGERPRINT_CHARS = 65536       # one fingerprint's canonical JSON

#: A row's origin: measured by this store, or imported ('imported:<file>@<digest>').
LOCAL = "local"
IMPORTED = "imported:"

CostName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
#: A machine fingerprint (see `fingerprint.machine_fingerprint`), as JSON data.
Fingerprint = dict[str, Any]

#: What each field of a `StoredCost` must be, as the messages say it.
_MUST_BE = {
    "fingerprint_id": "a string",
    "kind": f"a non-empty string of at most {MAX_NAME_CHARS} characters",
    "key": f"a non-empty string of at most {MAX_NAME_CHARS} characters",
    "candidate": f"a non-empty string of at most {MAX_NAME_CHARS} characters",
    "time_s": f"a number between 0 and {MAX_TIME_S:g}",
    "workspace_bytes": f"an integer between 0 and {MAX_WORKSPACE_BYTES}",
    "repeats": f"an integer between 0 and {MAX_REPEATS}",
    "spread": f"a number between 0 and {MAX_SPREAD:g}",
    "measured_at": "a number (seconds since the epoch)",
    "origin": f"'{LOCAL}' or '{IMPORTED}...'",
}


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a hostile file may hold huge values)."""
    try:
        text = value if isinstance(value, str) and limit > 80 else repr(value)
    except ValueError:          # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


class StoredCost(BaseModel):
    """One measured cost: a row of the cost store and of an export (the store's columns, in
    their order). ``measured_at`` is seconds since the epoch; when validated with the context
    ``{"imported_at": t}`` it must also lie between 2000 and ``t`` plus a day of clock skew."""

    model_config = ConfigDict(strict=True, frozen=True)

    fingerprint_id: str
    kind: CostName
    key: CostName
    candidate: CostName
    time_s: Annotated[float, Field(ge=0, le=MAX_TIME_S, allow_inf_nan=False)]
    workspace_bytes: Annotated[int, Field(ge=0, le=MAX_WORKSPACE_BYTES)]
    repeats: Annotated[int, Field(ge=0, le=MAX_REPEATS)]
    spread: Annotated[float, Field(ge=0, le=MAX_SPREAD, allow_inf_nan=False)]
    measured_at: Annotated[float, Field(allow_inf_nan=False)]
    #: Where the source store had it from; an import marks every row with its own origin.
    origin: Annotated[str, Field(pattern=f"^({LOCAL}$|{IMPORTED})")] = LOCAL

    @field_validator("measured_at")
    @classmethod
    def _measured_before_the_import(cls, measured_at: float, info: ValidationInfo) -> float:
        imported_at = (info.context or {}).get("imported_at")
        if imported_at is None:
            return measured_at
        latest = imported_at + CLOCK_SKEW_S
        if not EARLIEST_MEASURED_AT <= measured_at <= latest:
            raise ValueError(f"measured_at {short_repr(measured_at)} is not between "
                             f"{EARLIEST_MEASURED_AT:.0f} (the year 2000) and {latest:.0f} (now, "
                             f"plus {CLOCK_SKEW_S:.0f} s of clock skew)")
        return measured_at

    @classmethod
    def from_row(cls, values: dict[str, Any]) -> StoredCost:
        """A row's values (column name -> value) as a checked cost; ValueError saying, in the
        store's words, what is wrong."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ValueError(_field_problem(error.errors(include_url=False)[0])) from None

    def measurement(self) -> Measurement:
        """This cost as plans use it: "measured" when measured by this store, else
        "imported" with its origin."""
        local = self.origin == LOCAL
        return Measurement(self.time_s, self.workspace_bytes, "measured" if local else "imported",
                           self.repeats, self.spread, "" if local else self.origin)


class CostExport(BaseModel):
    """An export: the costs and the machine fingerprints they were measured on (fingerprint id
    -> fingerprint). `from_json` reads one to import; unknown keys are ignored."""

    model_config = ConfigDict(strict=True)

    format: Literal[EXPORT_FORMAT]
    version: Literal[EXPORT_VERSION]
    fingerprints: dict[str, Fingerprint]
    rows: list[StoredCost]

    @field_validator("fingerprints")
    @classmethod
    def _fingerprints_match_their_ids(cls, fingerprints: dict[str, Fingerprint]
                                      ) -> dict[str, Fingerprint]:
        for fp_id, fp in fingerprints.items():
            try:
                text, its_id = canonical_json(fp), fingerprint_id(fp)
            except (ValueError, RecursionError):
                raise ValueError(f"fingerprint {short_repr(fp_id)} cannot be stored") from None
            if len(text) > MAX_FINGERPRINT_CHARS:
                raise ValueError(f"fingerprint {short_repr(fp_id)} is longer than "
                                 f"{MAX_FINGERPRINT_CHARS} characters")
            if its_id != fp_id:
                raise ValueError(f"fingerprint {short_repr(fp_id)} does not match its contents "
                                 f"(hash {its_id})")
        return fingerprints

    @model_validator(mode="after")
    def _rows_name_known_fingerprints(self) -> CostExport:
        for i, row in enumerate(self.rows):
            if row.fingerprint_id not in self.fingerprints:
                raise ValueError(f"rows[{i}] refers to unknown fingerprint "
                                 f"{short_repr(row.fingerprint_id)}")
        return self

    @classmethod
    def from_json(cls, text: str, where: str, *, imported_at: float | None = None
                  ) -> CostExport:
        """The export in ``text``, checked completely (its timestamps against ``imported_at``,
        default now); ValueError "<where> is not a valid convplan cost export: <the first
        fault>"."""
        def invalid(what: str) -> ValueError:
            return ValueError(f"{where} is not a valid convplan cost export: {what}")

        try:
            document = read_json(text)
        except ValueError as error:
            raise invalid(str(error)) from None
        try:
            return cls.model_validate(document, context={
                "imported_at": time.time() if imported_at is None else imported_at})
        except ValidationError as error:
            raise invalid(short_repr(_document_problem(error.errors(include_url=False)), 500)
                          ) from None


class _Constant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Constant(f"{name} is not a number convplan accepts")


def read_json(text: str) -> Any:
    """JSON text as Python data; ValueError saying what is wrong. NaN and Infinity (which
    Python's json reads as numbers) are refused by name; so are absurd nesting and integers
    too long to convert."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except _Constant:
        raise
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except MemoryError:
        raise ValueError("too large to parse") from None
    except ValueError as error:     # e.g. an integer of more than 4300 digits
        raise ValueError(f"invalid JSON ({error})") from None


def _field_problem(error: ErrorDetails) -> str:
    """One field's fault in a `StoredCost`, without pydantic's words."""
    field = str(error["loc"][-1])
    if error["type"] == "value_error":      # a validator's own message
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return f"{field} must be {_MUST_BE[field]}, not {short_repr(error['input'])}"


def _document_problem(errors: list[ErrorDetails]) -> str:
    """The first fault of a `CostExport`, without pydantic's words (the messages the import
    always gave)."""
    first = errors[0]
    loc = first["loc"]
    if first["type"] == "value_error" and len(loc) < 3:     # the document's own checks
        return str(first.get("ctx", {}).get("error", first["msg"]))
    if not loc or loc[0] == "format":
        return f'expected an object with "format": "{EXPORT_FORMAT}"'
    if loc[0] == "version":
        found = None if first["type"] == "missing" else first["input"]
        return f"version {short_repr(found)}, expected {EXPORT_VERSION}"
    if len(loc) == 1:
        return '"fingerprints" must be an object and "rows" a list'
    if loc[0] == "fingerprints":
        return f"fingerprint {short_repr(loc[1])} is not an object"
    row = f"rows[{loc[1]}]"
    if len(loc) == 2:
        return f"{row} is not an object"
    if first["type"] == "missing":
        lacking = [str(e["loc"][2]) for e in errors
                   if e["type"] == "missing" and e["loc"][:2] == loc[:2]]
        return f"{row} lacks {', '.join(lacking)}"
    if loc[2] == "fingerprint_id":
        return f"{row} refers to unknown fingerprint {short_repr(first['input'])}"
    joint = "." if loc[2] in ("kind", "key", "candidate") else ": "
    return f"{row}{joint}{_field_problem(first)}"
