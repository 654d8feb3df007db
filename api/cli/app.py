"""The `convplan` command line."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from convplan.api.cli.batch import register as register_batch
from convplan.api.cli.profiles import (
    check_seconds,
    check_threads,
    console,
    fail,
    progress_bar,
    store_warnings,
)
from convplan.api.cli.profiles import register as register_profile_commands
from convplan.api.cli.serve import register as register_serve
from convplan.kernels import ConvSpec, blas, registry
from convplan.kernels.layout import convert
from convplan.kernels.measure import peak_allocation
from convplan.profiles.timing import median_time
from convplan.selector import zoo
from convplan.selector.layers import paper_layer, paper_layers
from convplan.selector.network import Limits, Network, NetworkError, machine_memory_bytes
from convplan.selector.planning import (
    PlanRequest,
    PlanSpec,
    baselines,
    build_problem,
    check_plan,
    cost_function,
    parse_bytes,
    plan_network,
    plan_spec,
    profiler_for,
)
from convplan.selector.planning import pareto as pareto_frontier
from convplan.selector.runner import RunReport, read_inputs, run_network

# click's base error class: older typer re-exports click's, newer typer vendors its own
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """A usage error (a bad number, an unknown option, a missing argument) is one ``error:``
    line too, like every other bad input, instead of click's usage text and boxed message."""

    def main(self, *args: Any, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **extra)
        try:
            result = super().main(*args, standalone_mode=False, **extra)
        except _CLICK_ERROR as error:
            if type(error).__name__ == "NoArgsIsHelpError":      # `convplan`: the help
                if error.format_message():      # (newer typer has printed it already)
                    typer.echo(error.format_message(), err=True)
                sys.exit(error.exit_code)
            ctx = getattr(error, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            try:
                fail(error.format_message() + hint, code=error.exit_code)
            except typer.Exit as exit_:
                sys.exit(exit_.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Choose GEMM-based convolution algorithms per layer under a memory cap.")

NO_MEMORY = "this needs more memory than the machine (or the process's limit) allows"


def _check_cost_options(threads: int | None, time_limit: float, budget_seconds: float) -> None:
    check_threads(threads)
    check_seconds("--time-limit", time_limit)
    check_seconds("--budget-seconds", budget_seconds)


@app.command()
def algorithms(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
               ) -> None:
    """List the registered convolution algorithms."""
    rows = [a.describe() for a in registry.all_algorithms()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="convolution algorithms")
    for column in ("name", "layout", "supports", "workspace (elements)"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], f"{row['input_layout']} -> {row['output_layout']}",
                      row["supports"], row["workspace"])
    console.print(table)
    console.print("(--json adds what each one does)")


def _parse_spec(text: str) -> ConvSpec:
    """``c=128,h=56,w=56,m=256,k=3,stride=1,pad=1[,n=1,groups=1,dilation=1]``"""
    fields: dict[str, object] = {}
    try:
        for item in text.split(","):
            key, value = item.split("=")
            fields[key.strip()] = int(value)
    except ValueError:
        raise ValueError(f"cannot read layer {text!r}: use a paper layer name (see --list) or "
                         "key=value pairs like c=64,h=56,w=56,m=64,k=3,pad=1") from None
    k = fields.pop("k", None)
    if k is not None:
        fields.setdefault("kh", k)
        fields.setdefault("kw", k)
    if "pad" in fields:
        fields["padding"] = fields.pop("pad")
    fields.setdefault("n", 1)
    try:
        return ConvSpec(**fields)  # type: ignore[arg-type]
    except TypeError as error:
        raise ValueError(f"cannot read layer {text!r}: {error}") from None


def _compare_rows(spec: ConvSpec, threads: int | None) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape(), dtype=np.float32)
    w = rng.standard_normal(spec.weight_shape, dtype=np.float32)
    b = rng.standard_normal(spec.m, dtype=np.float32)
    direct = registry.get("direct")
    spec64 = dataclasses.replace(spec, dtype="float64")
    reference = direct.run(x.astype(np.float64), direct.prepare(w.astype(np.float64),
                                                              b.astype(np.float64), spec64), spec64)
    rows = []
    with blas.threads(threads):
        for algorithm in registry.applicable(spec):
            prepared = algorithm.prepare(w, b, spec)
            x_in = convert(x, "NCHW", algorithm.input_layout)
            out = np.empty(spec.output_shape(algorithm.output_layout), np.float32)
            seconds = median_time(lambda a=algorithm, p=prepared, xi=x_in, o=out:
                                  a.run(xi, p, spec, out=o), budget_s=1.0)
            measured = peak_allocation(lambda a=algorithm, p=prepared, xi=x_in, o=out:
                                       a.run(xi, p, spec, out=o), repeats=1)
            error = float(np.abs(convert(out, algorithm.output_layout, "NCHW")
                                 - reference).max())
            rows.append({"algorithm": algorithm.name,
                         "layout": f"{algorithm.input_layout}->{algorithm.output_layout}",
                         "time_ms": seconds * 1e3, "gflops": spec.flops / seconds / 1e9,
                         "workspace_bytes": algorithm.workspace_bytes(spec),
                         "measured_workspace_bytes": measured, "max_abs_error": error})
    return rows


@app.command()
def compare(
    layer: Annotated[str, typer.Argument(help="A paper layer (vgg16:conv3_1) or c=..,h=..,...")
                     ] = "vgg16:conv3_1",
    threads: Annotated[int | None, typer.Option(help="BLAS threads (default: all cores).")
                       ] = None,
    list_layers: Annotated[bool, typer.Option("--list", help="List the paper layers.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run every applicable algorithm on one layer: time, GFLOP/s, workspace, error."""
    if list_layers:
        for name, spec in paper_layers().items():
            console.print(f"{name:22s} {spec.describe()}")
        return
    check_threads(threads)
    try:
        spec = paper_layer(layer) if ":" in layer else _parse_spec(layer)
    except ValueError as error:
        fail(str(error))
    # float32 input, weights and output, their float64 copies and the reference: all before
    # the first allocation (a layer of absurd size is refused, not attempted)
    elements = (math.prod(spec.input_shape()) + math.prod(spec.weight_shape)
                + math.prod(spec.output_shape("NCHW")))
    if 12 * elements + max(a.workspace_bytes(spec) for a in registry.applicable(spec)) \
            > machine_memory_bytes():
        fail(f"layer {spec.describe()} needs about {_bytes(12 * elements)} for its tensors; "
             f"this machine has {_bytes(machine_memory_bytes())}")
    try:
        rows = _compare_rows(spec, threads)
    except MemoryError:
        fail(NO_MEMORY)
    if as_json:
        print(json.dumps({"layer": layer, "spec": spec.key(), "threads": threads, "rows": rows},
                         indent=2))
        return
    table = Table(title=f"{layer}: {spec.describe()}, {spec.flops / 1e9:.3f} GFLOP")
    for column in ("algorithm", "layout", "ms", "GFLOP/s", "workspace", "measured",
                   "max |error|"):
        table.add_column(column, justify="left" if column in ("algorithm", "layout") else "right")
    for row in sorted(rows, key=lambda r: r["time_ms"]):
        table.add_row(row["algorithm"], row["layout"], f"{row['time_ms']:.2f}",
                      f"{row['gflops']:.1f}", _bytes(row["workspace_bytes"]),
                      _bytes(row["measured_workspace_bytes"]), f"{row['max_abs_error']:.1e}")
    console.print(table)


@app.command()
def networks(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
             ) -> None:
    """List the built-in networks."""
    rows = []
    for name in zoo.names():
        light = zoo.PAPER_NETWORKS.get(name, name.removeprefix("onnx:"))
        source = ("described in convplan (seeded weights)" if light is None
                  else f"onnx light model {light}")
        rows.append({"name": name, "source": source})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in networks (also: a .json description or an .onnx file)")
    table.add_column("name")
    table.add_column("source")
    for row in rows:
        table.add_row(row["name"], row["source"])
    console.print(table)


def _read_inputs(path: Path, network: Network) -> dict[str, np.ndarray]:
    """--input: an .npy or .npz whose headers are checked against the network's inputs before
    any data is read (`selector.runner.read_inputs`)."""
    return read_inputs(path, network, what=f"input {path}")


def _read_plan(path: Path) -> PlanSpec:
    """A plan file (`selector.planning.PlanSpec`, exactly what /v1/run takes), or a
    NetworkError (PlanError) saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NetworkError(f"cannot read plan {path}: {error.strerror}") from None
    return plan_spec(data, f"plan {path}")


@app.command()
def run(
    model: Annotated[str, typer.Argument(
        help="A built-in network (convplan networks), a .json description or an .onnx file.")],
    algorithm: Annotated[str | None, typer.Option(
        help="One algorithm for every convolution (layers it cannot run use the default).")
    ] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan: JSON with an \"assignment\".")
                    ] = None,
    input_path: Annotated[Path | None, typer.Option(
        "--input", help="Input .npy (or .npz by input name); default: seeded random.")] = None,
    output_path: Annotated[Path | None, typer.Option(
        "--output", help="Write the output to this .npy (.npz when several).")] = None,
    threads: Annotated[int | None, typer.Option(help="BLAS threads (default: all cores).")
                       ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs (the median is reported).")
                      ] = 1,
    check: Annotated[bool, typer.Option(
        "--check", help="Compare with onnxruntime (or onnx's ReferenceEvaluator).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a network: time, measured vs predicted peak memory, per-layer steps."""
    if algorithm is not None and plan is not None:
        fail("give --algorithm or --plan, not both")
    check_threads(threads)
    try:
        chosen = _read_plan(plan) if plan is not None else None
        network = zoo.load_network(model, limits=Limits.of_this_machine())
        if chosen is not None:
            check_plan(network, chosen.assignment, chosen.layouts, made_for=chosen.network)
            if threads is None and chosen.threads is not None:
                # the thread count its costs were measured with, within this machine's cores
                threads = min(chosen.threads, os.cpu_count() or 1)
        inputs = _read_inputs(input_path, network) if input_path is not None else None
        report = run_network(network, inputs, assignment=chosen and chosen.assignment,
                             layouts=chosen and chosen.layouts, algorithm=algorithm,
                             strict=plan is not None, threads=threads, repeat=repeat,
                             check=check)
    except ValueError as error:     # NetworkError, PlanError and every bad-argument error
        fail(str(error))
    except MemoryError:
        fail(NO_MEMORY)
    if output_path is not None:
        try:
            if len(report.outputs) == 1:
                np.save(output_path, next(iter(report.outputs.values())))
            else:
                np.savez(output_path, **report.outputs)
        except OSError as error:
            fail(f"cannot write {output_path}: {error.strerror}")
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    _print_run(report)


def _print_run(report: RunReport) -> None:
    table = Table(title=f"{report.network}: {len(report.layers)} steps, "
                        f"{report.threads} thread(s)")
    for column in ("step", "op", "algorithm", "layout", "ms", "workspace", "live"):
        table.add_column(column, justify="right" if column in ("ms", "workspace", "live")
                         else "left")
    for layer in report.layers:
        table.add_row(layer.name, layer.op, layer.algorithm or "", layer.layout,
                      f"{layer.time_s * 1e3:.2f}", _bytes(layer.workspace_bytes),
                      _bytes(layer.live_bytes))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    ratio = report.predicted_peak_bytes / max(report.measured_peak_bytes, 1)
    console.print(f"time {report.time_s * 1e3:.1f} ms | peak memory: measured "
                  f"{_bytes(report.measured_peak_bytes)}, predicted "
                  f"{_bytes(report.predicted_peak_bytes)} (x{ratio:.3f}, at {report.peak_step}) "
                  f"| prepared weights {_bytes(report.prepared_bytes)}, original weights "
                  f"{_bytes(report.weight_bytes)} (not counted)")
    if report.max_abs_error is not None:
        console.print(f"check against {report.reference}: max |error| "
                      f"{report.max_abs_error:.2e} ({report.max_rel_error:.1e} of max |output|)")


def _progress_bar():
    """A rich progress bar on stderr, and the profiler callback that drives it."""
    bar = progress_bar(TextColumn("profiling"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("{task.description}", markup=False))
    task = bar.add_task("", total=None)

    def progress(done: int, total: int, request) -> None:
        bar.update(task, completed=done, total=total,
                   description=f"{request.kind} {request.candidate}")

    return bar, progress


Model = Annotated[str, typer.Argument(
    help="A built-in network (convplan networks), a .json description or an .onnx file.")]
Threads = Annotated[int | None, typer.Option(help="BLAS threads (default: all cores).")]
Solver = Annotated[str, typer.Option(help="ILP solver: cbc or highs.")]
TimeLimit = Annotated[float, typer.Option("--time-limit", help="Solver time limit, seconds.")]
Db = Annotated[Path | None, typer.Option(help="Cost store (default: $CONVPLAN_DB or the "
                                               "user cache directory).")]
NoProfile = Annotated[bool, typer.Option(
    "--no-profile", help="Use the analytic cost model for missing costs instead of measuring.")]
Budget = Annotated[float, typer.Option("--budget-seconds",
                                       help="Measuring budget per candidate, seconds.")]


@app.command()
def plan(
    model: Model,
    memory_cap: Annotated[str | None, typer.Option(
        "--memory-cap", help="Peak-memory cap: bytes, or with kB/MB/GB/KiB/MiB/GiB "
                             "(default: none, the fastest plan).")] = None,
    threads: Threads = None,
    solver: Solver = "cbc",
    time_limit: TimeLimit = 60.0,
    out: Annotated[Path | None, typer.Option(help="Write the plan (JSON) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    no_profile: NoProfile = False,
    db: Db = None,
    budget_seconds: Budget = 0.3,
) -> None:
    """Choose every layer's algorithm and layout: fastest under the memory cap (an ILP)."""
    _check_cost_options(threads, time_limit, budget_seconds)
    try:
        request = PlanRequest(cap=parse_bytes(memory_cap) if memory_cap is not None else None,
                              threads=threads, solver=solver, time_limit_s=time_limit,
                              measure=not no_profile, budget_s=budget_seconds,
                              db=str(db) if db is not None else None)
        network = zoo.load_network(model, limits=Limits.of_this_machine())
        bar, progress = _progress_bar()
        with store_warnings(), bar:
            document = plan_network(network, request, progress)
    except ValueError as error:     # NetworkError, PlanningError, bad sizes and options
        fail(str(error))
    except MemoryError:
        fail(NO_MEMORY)
    if out is not None:
        try:
            out.write_text(json.dumps(document, indent=1))
        except OSError as error:
            fail(f"cannot write {out}: {error.strerror}")
    if as_json:
        print(json.dumps(document, indent=1))
        return
    _print_plan(document)


def _print_plan(document: dict) -> None:
    cap = document["memory_cap_bytes"]
    table = Table(title=f"{document['network']}: plan under "
                        f"{_bytes(cap) if cap else 'no cap'}, {document['threads']} thread(s)")
    for column in ("layer", "op", "algorithm", "layouts", "ms", "workspace", "options"):
        table.add_column(column, justify="right" if column in ("ms", "workspace", "options")
                         else "left")
    for layer in document["layers"]:
        table.add_row(layer["name"], layer["op"], layer["algorithm"] or "",
                      f"{layer['input_layout']}->{layer['output_layout']}",
                      f"{layer['time_s'] * 1e3:.2f}", _bytes(layer["workspace_bytes"]),
                      str(len(layer["candidates"])))
    console.print(table)
    solver, predicted = document["solver"], document["predicted"]
    console.print(f"{len(document['transforms'])} layout transform(s); solver {solver['name']}: "
                  f"{solver['status']}{'' if solver['optimal'] else ' (not proven optimal)'} in "
                  f"{solver['solve_seconds']:.2f} s; costs {document['costs']}")
    summary = Table(title="predicted")
    for column in ("plan", "time ms", "peak", "fits the cap"):
        summary.add_column(column, justify="left" if column == "plan" else "right")
    summary.add_row("this plan", f"{predicted['time_s'] * 1e3:.1f}",
                    _bytes(predicted["peak_bytes"]), "yes")
    for name, row in document["baselines"].items():
        summary.add_row(name.replace("_", " "), f"{row['time_s'] * 1e3:.1f}",
                        _bytes(row["peak_bytes"]), "yes" if row["fits_cap"] else "no")
    console.print(summary)


@app.command()
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
) -> None:
    """The time / peak-memory frontier: the fastest plan at each of a sweep of caps."""
    _check_cost_options(threads, time_limit, budget_seconds)
    try:
        network = zoo.load_network(model, limits=Limits.of_this_machine())
        request = PlanRequest(threads=threads, solver=solver, time_limit_s=time_limit,
                              measure=not no_profile, budget_s=budget_seconds,
                              db=str(db) if db is not None else None)
        with store_warnings():
            profiler = profiler_for(request)
            try:
                bar, progress = _progress_bar()
                with bar:
                    problem = build_problem(network, cost_function(profiler, request.measure,
                                                                   progress))
            finally:
                if profiler.store is not None:
                    profiler.store.close()
        frontier = pareto_frontier(problem, points, solver=solver, time_limit_s=time_limit)
        marks = baselines(problem, None, solver=solver, time_limit_s=time_limit)
    except ValueError as error:
        fail(str(error))
    except MemoryError:
        fail(NO_MEMORY)
    rows = [{k: v for k, v in p.items() if k != "choice"} for p in frontier]
    if plot is not None:
        try:
            _plot_frontier(rows, marks, network.name, plot)
        except (ImportError, OSError) as error:
            fail(f"cannot draw {plot}: {error}")
    if as_json:
        print(json.dumps({"network": network.name, "threads": profiler.threads,
                          "points": rows, "baselines": marks}, indent=1))
        return
    table = Table(title=f"{network.name}: time / peak-memory frontier")
    for column in ("peak", "time ms", "cap", "optimal"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(_bytes(row["predicted_peak_bytes"]), f"{row['time_s'] * 1e3:.1f}",
                      _bytes(row["cap_bytes"]), "yes" if row["optimal"] else "no")
    console.print(table)
    for name, row in marks.items():
        console.print(f"baseline {name.replace('_', ' ')}: {row['time_s'] * 1e3:.1f} ms at "
                      f"{_bytes(row['peak_bytes'])}")


def _plot_frontier(rows: list[dict], marks: dict, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.step([r["predicted_peak_bytes"] / 2**20 for r in rows],
              [r["time_s"] * 1e3 for r in rows], where="post", marker="o", label="convplan")
    for label, row in marks.items():
        axes.scatter(row["peak_bytes"] / 2**20, row["time_s"] * 1e3, marker="x",
                     label=label.replace("_", " "))
    axes.set_xlabel("peak memory (MiB)")
    axes.set_ylabel("time (ms)")
    axes.set_title(f"{name}: time vs peak memory")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


register_profile_commands(app)
register_batch(app)
register_serve(app)

if __name__ == "__main__":
    app()
