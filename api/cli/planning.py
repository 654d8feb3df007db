"""`convplan plan` and `convplan pareto`: the fastest plan under a memory cap, and the time /
peak-memory frontier over a sweep of caps. `register(app)` adds them to an app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from convplan.api.cli.common import (
    ArenaCap,
    Batch,
    Budget,
    Db,
    InputShape,
    Model,
    NoProfile,
    Solver,
    Threads,
    TimeLimit,
    bad_input,
    check_cap_holds_weights,
    check_writable,
    console,
    counting_bar,
    fail,
    load_model,
    new_table,
    size,
    store_warnings,
)

if TYPE_CHECKING:
    from convplan.selector.planning import Frontier, Plan, PlanRequest

MemoryCap = Annotated[str | None, typer.Option(
    "--memory-cap", help="Cap of the whole footprint (weights, inputs, arena): bytes, or with "
                         "kB/MB/GB/KiB/MiB/GiB (default: none, the fastest plan).")]


def _request(threads: int | None, solver: str, time_limit: float, no_profile: bool,
             db: Path | None, budget_seconds: float, memory_cap: str | None = None,
             arena_cap: str | None = None) -> PlanRequest:
    """The cost options of plan and pareto (and plan's cap) as one `PlanRequest`; a bad value
    is a ValueError saying what is wrong."""
    from convplan.selector.planning import PlanRequest

    return PlanRequest(cap=memory_cap, arena_cap=arena_cap, threads=threads, solver=solver,
                       time_limit_s=time_limit,
                       measure=not no_profile, budget_s=budget_seconds,
                       db=str(db) if db is not None else None)


def plan(
    model: Model,
    memory_cap: MemoryCap = None,
    arena_cap: ArenaCap = None,
    threads: Threads = None,
    solver: Solver = "cbc",
    time_limit: TimeLimit = 60.0,
    out: Annotated[Path | None, typer.Option(help="Write the plan (JSON) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    no_profile: NoProfile = False,
    db: Db = None,
    budget_seconds: Budget = 0.3,
    batch: Batch = None,
    input_shape: InputShape = None,
) -> None:
    """Choose every layer's algorithm and layout: fastest under the memory and arena caps (an
    ILP)."""
    from convplan.selector.planning import plan_network

    with bad_input():
        request = _request(threads, solver, time_limit, no_profile, db, budget_seconds,
                           memory_cap, arena_cap)
        if out is not None:
            check_writable(out, "--out")
        network = load_model(model, batch, input_shape)
        check_cap_holds_weights(request, network)
        bar, progress = counting_bar("profiling")
        with store_warnings(), bar:
            document = plan_network(network, request, progress)
    text = json.dumps(document.model_dump(mode="json"), indent=1)
    if out is not None:
        try:
            out.write_text(text)
        except OSError as error:
            fail(f"cannot write {out}: {error.strerror}")
    if as_json:
        print(text)
        return
    _print_plan(document)


def _print_plan(document: Plan) -> None:
    cap, arena = document.memory_cap_bytes, document.arena_cap_bytes
    caps = ", ".join([*([size(cap)] if cap else []), *([f"arena {size(arena)}"] if arena else [])])
    table = new_table(f"{document.network}: plan under "
                      f"{caps or 'no cap'}, {document.threads} thread(s)",
                      ("layer", "op", "algorithm", "layouts", "ms", "workspace", "options"),
                      right=("ms", "workspace", "options"))
    for layer in document.layers:
        table.add_row(layer.name, layer.op, layer.algorithm or "",
                      f"{layer.input_layout}->{layer.output_layout}",
                      f"{layer.time_s * 1e3:.2f}", size(layer.workspace_bytes),
                      str(len(layer.candidates)))
    console.print(table)
    solver, predicted = document.solver, document.predicted
    console.print(f"{len(document.transforms)} layout transform(s); solver {solver.name}: "
                  f"{solver.status}{'' if solver.optimal else ' (not proven optimal)'} in "
                  f"{solver.solve_seconds:.2f} s; costs {document.costs}")
    summary = new_table("predicted", ("plan", "time ms", "peak", "arena", "fits the caps"),
                        right=("time ms", "peak", "arena", "fits the caps"))
    summary.add_row("this plan", f"{predicted.time_s * 1e3:.1f}",
                    size(predicted.peak_bytes), size(predicted.arena_bytes), "yes")
    for name, row in document.baselines.items():
        summary.add_row(name.replace("_", " "), f"{row.time_s * 1e3:.1f}",
                        size(row.peak_bytes), size(row.arena_bytes),
                        "yes" if row.fits_cap else "no")
    console.print(summary)


def pareto(
    model: Model,
    points: Annotated[int, typer.Option(min=2, max=64, help="Caps to solve for.")] = 8,
    plot: Annotated[Path | None, typer.Option(help="Draw the frontier (PNG, needs "
                                                   "matplotlib).")] = None,
    threads: Threads = None,
    solver: Solver = "cbc",
    time_limit: TimeLimit = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    no_profile: NoProfile = False,
    db: Db = None,
    budget_seconds: Budget = 0.3,
    batch: Batch = None,
    input_shape: InputShape = None,
) -> None:
    """The time / peak-memory frontier: the fastest plan at each of a sweep of caps."""
    from convplan.selector.planning import pareto_network

    with bad_input():
        if plot is not None:
            check_writable(plot, "--plot")
        network = load_model(model, batch, input_shape)
        request = _request(threads, solver, time_limit, no_profile, db, budget_seconds)
        bar, progress = counting_bar("profiling")
        with store_warnings(), bar:
            frontier = pareto_network(network, request, points, progress)
    if plot is not None:
        try:
            _plot_frontier(frontier, plot)
        except (ImportError, OSError) as error:
            fail(f"cannot draw {plot}: {error}")
    if as_json:
        print(json.dumps(frontier.model_dump(mode="json"), indent=1))
        return
    columns = ("peak", "time ms", "cap", "optimal")
    table = new_table(f"{frontier.network}: time / peak-memory frontier", columns,
                      right=columns)
    for point in frontier.points:
        table.add_row(size(point.predicted_peak_bytes), f"{point.time_s * 1e3:.1f}",
                      size(point.cap_bytes), "yes" if point.optimal else "no")
    console.print(table)
    for name, row in frontier.baselines.items():
        console.print(f"baseline {name.replace('_', ' ')}: {row.time_s * 1e3:.1f} ms at "
                      f"{size(row.peak_bytes)}")


def _plot_frontier(frontier: Frontier, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.step([p.predicted_peak_bytes / 2**20 for p in frontier.points],
              [p.time_s * 1e3 for p in frontier.points], where="post", marker="o",
              label="convplan")
    for label, row in frontier.baselines.items():
        axes.scatter(row.peak_bytes / 2**20, row.time_s * 1e3, marker="x",
                     label=label.replace("_", " "))
    axes.set_xlabel("peak memory (MiB)")
    axes.set_ylabel("time (ms)")
    axes.set_title(f"{frontier.network}: time vs peak memory")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def register(app: typer.Typer) -> None:
    """Add `plan` and `pareto` to the convplan app."""
    app.command("plan")(plan)
    app.command("pareto")(pareto)
