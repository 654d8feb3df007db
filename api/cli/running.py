"""`convplan run`: run a network with one algorithm or a plan, and report the measured time and
peak memory next to the prediction. `register(app)` adds the command to an app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from convplan.api.cli.common import (
    Algorithm,
    Batch,
    InputShape,
    Model,
    Threads,
    bad_input,
    check_writable,
    console,
    fail,
    load_model,
    new_table,
    size,
)

if TYPE_CHECKING:
    from convplan.selector.incoming import PlanSpec
    from convplan.selector.network import Network
    from convplan.selector.runner import RunReport


def read_plan(path: Path) -> PlanSpec:
    """A plan file (`selector.planning.PlanSpec`, exactly what /v1/run takes), or a
    NetworkError (PlanError) saying what is wrong with it."""
    from convplan.selector.incoming import plan_file

    return plan_file(path)


def check_made_for(plan: Path, made_for: str | None, network: Network) -> None:
    """A plan made for another network is refused naming the file and both networks
    (`check_plan(made_for=)` names the networks only)."""
    from convplan.selector.network import quoted

    if made_for is not None and made_for != network.name:
        fail(f"{plan} was made for network {quoted(made_for)}, not {quoted(network.name)}")


def _output_file(path: Path, outputs: int) -> Path:
    """Where NumPy writes ``--output``: it adds .npy (one output) or .npz unless present."""
    suffix = ".npy" if outputs == 1 else ".npz"
    return path if path.suffix == suffix else path.with_name(path.name + suffix)


def run(
    model: Model,
    algorithm: Algorithm = None,
    plan: Annotated[Path | None, typer.Option(help="A plan: JSON with an \"assignment\".")
                    ] = None,
    input_path: Annotated[Path | None, typer.Option(
        "--input", help="Input .npy (or .npz by input name); default: seeded random.")] = None,
    output_path: Annotated[Path | None, typer.Option(
        "--output", help="Write the output to this .npy (.npz when several).")] = None,
    threads: Threads = None,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs (the median is reported).")
                      ] = 1,
    check: Annotated[bool, typer.Option(
        "--check", help="Compare with onnxruntime (or onnx's ReferenceEvaluator).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch: Batch = None,
    input_shape: InputShape = None,
) -> None:
    """Run a network: time, measured vs predicted peak memory, per-layer steps. MODEL may be
    a compiled plan (FILE.cvplan, `convplan compile`): it runs as compiled."""
    from convplan.selector.compiled import is_compiled

    if algorithm is not None and plan is not None:
        fail("give --algorithm or --plan, not both")
    if is_compiled(model):
        report = _run_compiled(Path(model), algorithm=algorithm, plan=plan, input_path=input_path,
                               output_path=output_path, threads=threads, repeat=repeat,
                               check=check, batch=batch, input_shape=input_shape)
    else:
        report = _run_model(model, algorithm=algorithm, plan=plan, input_path=input_path,
                            output_path=output_path, threads=threads, repeat=repeat,
                            check=check, batch=batch, input_shape=input_shape)
    if output_path is not None:
        _save(output_path, report)
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    _print_run(report)


def _run_compiled(path: Path, *, algorithm: str | None, plan: Path | None,
                  input_path: Path | None, output_path: Path | None, threads: int | None,
                  repeat: int, check: bool, batch: int | None, input_shape: list[str] | None
                  ) -> RunReport:
    """A compiled plan, run as compiled: its plan, shapes and weights are the file's."""
    from convplan.selector.inputs import read_inputs
    from convplan.selector.network import Limits
    from convplan.selector.resident import ResidentPeak
    from convplan.selector.runner import run_session
    from convplan.selector.session import Session

    given = [option for option, value in (("--algorithm", algorithm), ("--plan", plan),
                                          ("--batch", batch), ("--input-shape", input_shape),
                                          ("--check", check)) if value]
    if given:
        fail(f"{path} is a compiled plan: it carries its plan, shapes and prepared weights, so "
             f"{', '.join(given)} cannot apply (--check needs the original model: run that)")
    with bad_input(), ResidentPeak() as resident:
        session = Session.from_compiled(path, threads=threads, limits=Limits.of_this_machine())
        with session:
            if output_path is not None:
                check_writable(_output_file(output_path, len(session.outputs)), "--output")
            inputs = read_inputs(input_path, session.inputs, what=f"input {input_path}") \
                if input_path is not None else None
            report = run_session(session, inputs, repeat=repeat)
    # resident growth includes the weights' file-backed pages (mapped_weight_bytes) as read
    report.rss_peak_growth_bytes = resident.growth_bytes
    report.rss_baseline_bytes = resident.baseline_bytes
    return report


def _run_model(model: str, *, algorithm: str | None, plan: Path | None,
               input_path: Path | None, output_path: Path | None, threads: int | None,
               repeat: int, check: bool, batch: int | None, input_shape: list[str] | None
               ) -> RunReport:
    from convplan.selector.incoming import check_inputs
    from convplan.selector.inputs import read_inputs
    from convplan.selector.resident import ResidentPeak
    from convplan.selector.runner import run_network, run_plan

    _warm_up()
    with bad_input(), ResidentPeak() as resident:
        chosen = read_plan(plan) if plan is not None else None
        network = load_model(model, batch, input_shape)
        if chosen is not None:
            assert plan is not None
            check_made_for(plan, chosen.network, network)
            check_inputs(network, chosen.inputs)    # made for these shapes
        if output_path is not None:
            check_writable(_output_file(output_path, len(network.outputs)), "--output")
        inputs = read_inputs(input_path, network, what=f"input {input_path}") \
            if input_path is not None else None
        # the network was loaded for this run alone: its originals go once prepared
        if chosen is not None:      # checked against the network, then run (its threads)
            report = run_plan(network, chosen, inputs, threads=threads, repeat=repeat,
                              check=check, owned=True, resident=resident)
        else:
            report = run_network(network, inputs, algorithm=algorithm, threads=threads,
                                 repeat=repeat, check=check, owned=True, resident=resident)
        del network
    return report


def _warm_up() -> None:
    """Import what loading and running a model imports, before the resident baseline: the
    growth `run --json` reports is the model's (its weights, arena, the runtime's allowance),
    not the code of the ONNX reader and the kernels, which every run of the process shares."""
    import convplan.selector.onnx.importer
    import convplan.selector.session  # noqa: F401


def _save(path: Path, report: RunReport) -> None:
    import numpy as np

    try:
        if len(report.outputs) == 1:
            np.save(path, next(iter(report.outputs.values())))
        else:
            np.savez(path, **report.outputs)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror}")


def _print_run(report: RunReport) -> None:
    table = new_table(f"{report.network}: {len(report.layers)} steps, "
                      f"{report.threads} thread(s)",
                      ("step", "op", "algorithm", "layout", "ms", "workspace", "live"),
                      right=("ms", "workspace", "live"))
    for layer in report.layers:
        table.add_row(layer.name, layer.op, layer.algorithm or "", layer.layout,
                      f"{layer.time_s * 1e3:.2f}", size(layer.workspace_bytes),
                      size(layer.live_bytes))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    ratio = report.predicted_peak_bytes / max(report.measured_peak_bytes, 1)
    console.print(f"time {report.time_s * 1e3:.1f} ms | peak memory: measured "
                  f"{size(report.measured_peak_bytes)}, predicted "
                  f"{size(report.predicted_peak_bytes)} (x{ratio:.3f}, at {report.peak_step}) "
                  f"| arena {size(report.arena_bytes)} (max live "
                  f"{size(report.max_live_bytes)}) | weights {size(report.weight_bytes)} (prepared "
                  f"{size(report.prepared_bytes)}, other layers' "
                  f"{size(report.constant_bytes)}), held once"
                  + (f", {size(report.mapped_weight_bytes)} of them mapped from the file"
                     if report.mapped_weight_bytes else "")
                  + ("" if report.weights_released else
                     f"; the originals ({size(report.original_weight_bytes)}) not counted"))
    if report.rss_peak_growth_bytes is not None:
        console.print(f"process: peak resident growth {size(report.rss_peak_growth_bytes)}, "
                      f"promised footprint {size(report.footprint_bytes)} (the peak above and "
                      "the runtime's allowance)")
    if report.max_abs_error is not None:
        console.print(f"check against {report.reference}: max |error| "
                      f"{report.max_abs_error:.2e} ({report.max_rel_error:.1e} of max |output|)")


def register(app: typer.Typer) -> None:
    """Add `run` to the convplan app."""
    app.command("run")(run)
