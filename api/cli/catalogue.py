"""`convplan algorithms`, `convplan networks` and `convplan compare`: what convplan has to
choose from, and how the algorithms do on one layer. `register(app)` adds them to an app."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated

import typer

from convplan.api.cli.common import (
    NO_MEMORY,
    Json,
    Threads,
    bad_input,
    console,
    fail,
    new_table,
    size,
)

if TYPE_CHECKING:
    from convplan.kernels import ConvSpec


def algorithms(as_json: Json = False) -> None:
    """List the registered convolution algorithms."""
    from convplan.selector.catalogue import registered_algorithms

    infos = registered_algorithms()
    if as_json:
        print(json.dumps([a.model_dump(mode="json") for a in infos], indent=2))
        return
    table = new_table("convolution algorithms",
                      ("name", "layout", "supports", "workspace (elements)"))
    for a in infos:
        table.add_row(a.name, f"{a.input_layout} -> {a.output_layout}", a.supports, a.workspace)
    console.print(table)
    console.print("(--json adds what each one does)")


def networks(as_json: Json = False) -> None:
    """List the built-in networks."""
    from convplan.selector.catalogue import builtin_networks

    infos = builtin_networks()
    if as_json:
        print(json.dumps([n.model_dump(mode="json") for n in infos], indent=2))
        return
    table = new_table("built-in networks (also: a .json description or an .onnx file)",
                      ("name", "source"))
    for n in infos:
        table.add_row(n.name, n.source)
    console.print(table)


def _parse_spec(text: str) -> ConvSpec:
    """``c=128,h=56,w=56,m=256,k=3,stride=1,pad=1[,n=1,groups=1,dilation=1]``"""
    from convplan.kernels import ConvSpec

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
    """Every applicable algorithm on seeded data: median time, measured workspace and the
    error against a float64 direct convolution."""
    import dataclasses

    import numpy as np

    from convplan.kernels import blas, registry
    from convplan.kernels.layout import convert
    from convplan.kernels.measure import peak_allocation
    from convplan.profiles.timing import median_time

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


def compare(
    layer: Annotated[str, typer.Argument(help="A paper layer (vgg16:conv3_1) or c=..,h=..,...")
                     ] = "vgg16:conv3_1",
    threads: Threads = None,
    list_layers: Annotated[bool, typer.Option("--list", help="List the paper layers.")] = False,
    as_json: Json = False,
) -> None:
    """Run every applicable algorithm on one layer: time, GFLOP/s, workspace, error."""
    from convplan.kernels import registry
    from convplan.selector.network import machine_memory_bytes, paper_layer, paper_layers

    if list_layers:
        for name, spec in paper_layers().items():
            console.print(f"{name:22s} {spec.describe()}")
        return
    with bad_input():
        spec = paper_layer(layer) if ":" in layer else _parse_spec(layer)
    # float32 input, weights and output, their float64 copies and the reference: all before
    # the first allocation (a layer of absurd size is refused, not attempted)
    elements = (math.prod(spec.input_shape()) + math.prod(spec.weight_shape)
                + math.prod(spec.output_shape("NCHW")))
    if 12 * elements + max(a.workspace_bytes(spec) for a in registry.applicable(spec)) \
            > machine_memory_bytes():
        fail(f"layer {spec.describe()} needs about {size(12 * elements)} for its tensors; "
             f"this machine has {size(machine_memory_bytes())}")
    try:
        rows = _compare_rows(spec, threads)
    except MemoryError:
        fail(NO_MEMORY)
    if as_json:
        print(json.dumps({"layer": layer, "spec": spec.key(), "threads": threads, "rows": rows},
                         indent=2))
        return
    columns = ("algorithm", "layout", "ms", "GFLOP/s", "workspace", "measured", "max |error|")
    table = new_table(f"{layer}: {spec.describe()}, {spec.flops / 1e9:.3f} GFLOP", columns,
                      right=columns[2:])
    for row in sorted(rows, key=lambda r: r["time_ms"]):
        table.add_row(row["algorithm"], row["layout"], f"{row['time_ms']:.2f}",
                      f"{row['gflops']:.1f}", size(row["workspace_bytes"]),
                      size(row["measured_workspace_bytes"]), f"{row['max_abs_error']:.1e}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `algorithms`, `compare` and `networks` to the convplan app."""
    app.command("algorithms")(algorithms)
    app.command("compare")(compare)
    app.command("networks")(networks)
