"""`convplan compile`: a model and its plan as one deployable file (`selector.compiled`), which
`convplan run FILE.cvplan` runs without planning, measuring or reading ONNX. `register(app)`
adds the command to an app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from convplan.api.cli.common import (
    Algorithm,
    Batch,
    InputShape,
    Json,
    Model,
    Threads,
    bad_input,
    check_writable,
    console,
    fail,
    load_model,
    size,
)
from convplan.api.cli.running import check_made_for, read_plan


def compile_model(
    model: Model,
    out: Annotated[Path, typer.Option("--out", "-o", help="The compiled plan to write "
                                      "(conventionally FILE.cvplan).", show_default=False)],
    plan: Annotated[Path | None, typer.Option(help="A plan: JSON with an \"assignment\".")
                    ] = None,
    algorithm: Algorithm = None,
    threads: Threads = None,
    as_json: Json = False,
    batch: Batch = None,
    input_shape: InputShape = None,
) -> None:
    """Compile a model and its plan into one file: header, network, plan, arena layout and
    prepared weights, memory-mapped read-only by `convplan run FILE.cvplan`."""
    from convplan.selector.compiled import compile_plan
    from convplan.selector.incoming import check_inputs

    if algorithm is not None and plan is not None:
        fail("give --algorithm or --plan, not both")
    with bad_input():
        chosen = read_plan(plan) if plan is not None else None
        check_writable(out, "--out")
        network = load_model(model, batch, input_shape)
        if chosen is not None:
            assert plan is not None
            check_made_for(plan, chosen.network, network)
            check_inputs(network, chosen.inputs)
        name = network.name
        header = compile_plan(network, out, chosen, algorithm=algorithm, threads=threads,
                              owned=True)
        del network
    written = out.stat().st_size
    if as_json:
        print(json.dumps({"path": str(out), "bytes": written, "network": name,
                          "data_bytes": header.data_bytes, "arena_bytes": header.arena.size,
                          "arrays": len(header.arrays), "assignment": header.assignment},
                         indent=2))
        return
    console.print(f"compiled {name} into {out}: {size(written)} (weights "
                  f"{size(header.data_bytes)} in {len(header.arrays)} arrays, arena "
                  f"{size(header.arena.size)}); run it with convplan run {out}")


def register(app: typer.Typer) -> None:
    """Add `compile` to the convplan app."""
    app.command("compile")(compile_model)
