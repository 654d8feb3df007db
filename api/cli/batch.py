"""`convplan batch`: plan many networks under one cap, in this process or on a Dask cluster, and
write one plan file per network plus a summary. `register(app)` adds the command to an app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from convplan.api.cli.common import (
    ArenaCap,
    Batch,
    Budget,
    ConnectTimeout,
    InputShape,
    LocalCluster,
    NoProfile,
    Solver,
    TimeLimit,
    check_threads,
    console,
    counting_bar,
    fail,
    new_table,
    seconds_checked,
    size,
)


def batch(
    paths: Annotated[list[str], typer.Argument(
        help="Network files (.json, .onnx), folders (searched for both) or built-in names.",
        show_default=False)],
    memory_cap: Annotated[str, typer.Option(
        "--memory-cap", help="Peak-memory cap of every plan: bytes, or with kB/MB/GB/KiB/MiB/GiB.",
        show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for the plans (<name>.plan.json) and "
                                           "batch-summary.json.", show_default=False)],
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Run on the Dask cluster of this scheduler (tcp://HOST:PORT).")
    ] = None,
    local_cluster: LocalCluster = None,
    connect_timeout: ConnectTimeout = 10.0,
    threads: Annotated[int | None, typer.Option(help="BLAS threads (default: all cores of "
                                                     "the machine planning).")] = None,
    solver: Solver = "cbc",
    time_limit: TimeLimit = 60.0,
    no_profile: NoProfile = False,
    budget_seconds: Budget = 0.3,
    db: Annotated[Path | None, typer.Option(
        help="Cost store path, opened by whichever process plans (each worker its own file "
             "at this path); default: its $CONVPLAN_DB or user cache.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    timeout_seconds: Annotated[float, typer.Option(
        "--timeout-seconds", help="Deadline of each network, seconds: one that takes longer is "
                                  "stopped (it runs in a child process) and reported as timed "
                                  "out; the others are still planned.",
        callback=seconds_checked)] = 3600.0,
    batch_size: Batch = None,
    input_shape: InputShape = None,
    arena_cap: ArenaCap = None,
) -> None:
    """Plan every network under one memory cap (and arena cap, if given); one plan file each
    (written as soon as that network is planned), and a summary."""
    from convplan.api.batch import (
        BatchError,
        collect_inputs,
        dask_client,
        run_dask,
        run_local,
        write_outputs,
        write_plan,
    )
    from convplan.selector.network import InputShapes
    from convplan.selector.planning import PlanRequest

    if scheduler is not None and local_cluster is not None:
        fail("give --scheduler or --local-cluster, not both")
    # a --scheduler's workers may be other machines, with other core counts
    check_threads(threads, this_machine=scheduler is None)   # (the durations: by declaration)
    try:
        request = PlanRequest(cap=memory_cap, arena_cap=arena_cap, threads=threads,
                              solver=solver, time_limit_s=time_limit, measure=not no_profile,
                              budget_s=budget_seconds, db=str(db) if db is not None else None)
        inputs = collect_inputs(paths)
        shapes = InputShapes.parse(input_shape or (), batch_size)   # each network's, there
    except ValueError as error:     # BatchError, a bad size, a shape that is no shape
        fail(str(error))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cannot create the output folder {out}: {error.strerror}")

    bar, progress = counting_bar("planning")
    with bar:
        done: list[dict[str, Any]] = []
        progress(0, len(inputs))

        def on_result(row: dict[str, Any]) -> None:
            write_plan(row, out)            # now, not at the end
            done.append(row)
            progress(len(done), len(inputs), f"{row['network']}: {row['status']}")

        try:
            if scheduler is None and local_cluster is None:
                rows = run_local(inputs, request, on_result, timeout_seconds, shapes)
            else:
                with dask_client(scheduler, local_cluster, connect_timeout) as client:
                    rows = run_dask(inputs, request, client, on_result, timeout_seconds,
                                    shapes)
        except BatchError as error:
            fail(str(error))
        except KeyboardInterrupt:
            write_outputs(done, out)
            fail(f"interrupted: the {len(done)} network(s) finished so far are in {out}",
                 code=130)
    summary = write_outputs(rows, out)
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        _print_summary(summary, out)
    if summary.get("summary_error"):
        fail(summary["summary_error"], code=1)
    if summary["failed"]:
        failed = [r["network"] for r in summary["rows"] if r["status"] != "planned"]
        fail(f"{summary['failed']} of {summary['networks']} network(s) failed: "
             f"{', '.join(failed)} (their errors are in {out / 'batch-summary.json'})", code=1)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    table = new_table(f"batch: {summary['planned']} of {summary['networks']} planned",
                      ("network", "status", "time ms", "peak", "solve s", "worker", "error"),
                      right=("time ms", "peak", "solve s"), overflow="fold")
    for row in summary["rows"]:
        time_s = row["predicted_time_s"]
        table.add_row(row["network"], row["status"],
                      "" if time_s is None else f"{time_s * 1e3:.2f}", size(row["peak_bytes"]),
                      "" if row["solve_seconds"] is None else f"{row['solve_seconds']:.2f}",
                      row["worker"] or "", row["error"] or "")
    console.print(table)
    console.print(f"plans and batch-summary.json in {out}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `batch` to the convplan app."""
    app.command("batch")(batch)
