"""`convplan batch`: plan many networks under one cap, in this process or on a Dask cluster, and
write one plan file per network plus a summary. `register(app)` adds the command to an app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from convplan.api.batch import (
    BatchError,
    check_request,
    collect_inputs,
    dask_client,
    run_dask,
    run_local,
    write_outputs,
    write_plan,
)
from convplan.api.cli.profiles import check_seconds, check_threads, console, fail, progress_bar
from convplan.selector.planning import PlanRequest, parse_bytes


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


SchedulerOption = Annotated[str | None, typer.Option(
    "--scheduler", help="Run on the Dask cluster of this scheduler (tcp://HOST:PORT).")]
LocalClusterOption = Annotated[int | None, typer.Option(
    "--local-cluster", help="Start a local Dask cluster of N worker processes (1 thread each) "
                            "for this run.")]
ConnectTimeoutOption = Annotated[float, typer.Option(
    "--connect-timeout", help="Seconds to wait for the scheduler and its first worker.")]


def batch(
    paths: Annotated[list[str], typer.Argument(
        help="Network files (.json, .onnx), folders (searched for both) or built-in names.",
        show_default=False)],
    memory_cap: Annotated[str, typer.Option(
        "--memory-cap", help="Peak-memory cap of every plan: bytes, or with kB/MB/GB/KiB/MiB/GiB.",
        show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for the plans (<name>.plan.json) and "
                                           "batch-summary.json.", show_default=False)],
    scheduler: SchedulerOption = None,
    local_cluster: LocalClusterOption = None,
    connect_timeout: ConnectTimeoutOption = 10.0,
    threads: Annotated[int | None, typer.Option(help="BLAS threads (default: all cores of "
                                                     "the machine planning).")] = None,
    solver: Annotated[str, typer.Option(help="ILP solver: cbc or highs.")] = "cbc",
    time_limit: Annotated[float, typer.Option("--time-limit",
                                              help="Solver time limit, seconds.")] = 60.0,
    no_profile: Annotated[bool, typer.Option(
        "--no-profile", help="Use the analytic cost model for missing costs instead of "
                             "measuring.")] = False,
    budget_seconds: Annotated[float, typer.Option(
        "--budget-seconds", help="Measuring budget per candidate, seconds.")] = 0.3,
    db: Annotated[Path | None, typer.Option(
        help="Cost store path, opened by whichever process plans (each worker its own file "
             "at this path); default: its $CONVPLAN_DB or user cache.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    timeout_seconds: Annotated[float, typer.Option(
        "--timeout-seconds", help="Deadline of each network, seconds: one that takes longer is "
                                  "stopped (it runs in a child process) and reported as timed "
                                  "out; the others are still planned.")] = 3600.0,
) -> None:
    """Plan every network under one memory cap; one plan file each (written as soon as that
    network is planned), and a summary."""
    if scheduler is not None and local_cluster is not None:
        fail("give --scheduler or --local-cluster, not both")
    # a --scheduler's workers may be other machines, with other core counts
    check_threads(threads, this_machine=scheduler is None)
    for option, seconds in (("--time-limit", time_limit), ("--budget-seconds", budget_seconds),
                            ("--timeout-seconds", timeout_seconds),
                            ("--connect-timeout", connect_timeout)):
        check_seconds(option, seconds)
    try:
        request = PlanRequest(cap=parse_bytes(memory_cap), threads=threads, solver=solver,
                              time_limit_s=time_limit, measure=not no_profile,
                              budget_s=budget_seconds, db=str(db) if db is not None else None)
        check_request(request)
        inputs = collect_inputs(paths)
    except ValueError as error:     # BatchError, a bad size
        fail(str(error))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cannot create the output folder {out}: {error.strerror}")

    columns = (TextColumn("planning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}", markup=False))
    with progress_bar(*columns) as bar:
        task = bar.add_task("", total=len(inputs))
        done: list[dict[str, Any]] = []

        def on_result(row: dict[str, Any]) -> None:
            write_plan(row, out)            # now, not at the end
            done.append(row)
            bar.update(task, advance=1, description=f"{row['network']}: {row['status']}")

        try:
            if scheduler is None and local_cluster is None:
                rows = run_local(inputs, request, on_result, timeout_seconds)
            else:
                with dask_client(scheduler, local_cluster, connect_timeout) as client:
                    rows = run_dask(inputs, request, client, on_result, timeout_seconds)
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
    table = Table(title=f"batch: {summary['planned']} of {summary['networks']} planned")
    for column in ("network", "status", "time ms", "peak", "solve s", "worker", "error"):
        table.add_column(column, justify="right" if column in ("time ms", "peak", "solve s")
                         else "left", overflow="fold")
    for row in summary["rows"]:
        time_s = row["predicted_time_s"]
        table.add_row(row["network"], row["status"],
                      "" if time_s is None else f"{time_s * 1e3:.2f}", _size(row["peak_bytes"]),
                      "" if row["solve_seconds"] is None else f"{row['solve_seconds']:.2f}",
                      row["worker"] or "", row["error"] or "")
    console.print(table)
    console.print(f"plans and batch-summary.json in {out}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `batch` to the convplan app."""
    app.command("batch")(batch)
