"""Writing a batch's results: one plan file per planned network, as soon as it is planned, and
the summary. Every file is written whole or not at all (a temporary file and a rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Written next to the plans; never collected as a network (nor are the plans themselves).
SUMMARY_FILE = "batch-summary.json"
PLAN_SUFFIX = ".plan.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    a reader (or an interrupted run) never sees half a file."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plan(row: dict[str, Any], out_dir: Path) -> None:
    """Write a planned row's plan to ``out_dir/<name>.plan.json`` now (once; a failed write
    turns the row into an error) and note the file in the row as ``plan_file``."""
    if "plan_file" in row:
        return
    row["plan_file"] = None
    if row["status"] != "planned":
        return
    path = out_dir / f"{row['network']}{PLAN_SUFFIX}"
    try:
        write_atomic(path, json.dumps(row["plan"].model_dump(mode="json"), indent=1))
        row["plan_file"] = str(path)
    except OSError as error:
        row.update(status="error", error=f"cannot write {path}: {error.strerror}")


def write_outputs(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Write each planned row's plan not written yet (`write_plan`) and the summary to
    ``out_dir/batch-summary.json``; the summary."""
    for row in rows:
        write_plan(row, out_dir)
    summary = summarize(rows)
    try:
        write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
    except OSError as error:
        summary["summary_error"] = f"cannot write {out_dir / SUMMARY_FILE}: {error.strerror}"
    return summary


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary document: counts, and every row without its (large) plan."""
    planned = sum(1 for r in rows if r["status"] == "planned")
    return {"networks": len(rows), "planned": planned, "failed": len(rows) - planned,
            "rows": [{k: v for k, v in r.items() if k != "plan"} for r in rows]}
