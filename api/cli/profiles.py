"""`convplan profile` and `convplan profiles ...`: measure a network's costs once, keep them in
the cost store, and move them between machines. `register(app)` adds these commands to an app."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from convplan.api.cli.common import (
    Batch,
    Budget,
    ConnectTimeout,
    Db,
    InputShape,
    Json,
    LocalCluster,
    Model,
    Threads,
    bad_input,
    console,
    counting_bar,
    fail,
    load_model,
    new_table,
    store_warnings,
    warn,
)

if TYPE_CHECKING:
    from convplan.profiles.requests import CostRequest
    from convplan.profiles.store import CostStore

profiles_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                           help="The cost store: list, export and import measured costs.")


def _open(db: Path | None, **options: bool) -> CostStore:
    """The store, or exit 2 with the StoreError's message (it names the file and the fix)."""
    from convplan.profiles.store import CostStore, default_db_path

    try:
        return CostStore(db if db is not None else default_db_path(), **options)
    except ValueError as error:
        fail(str(error))


def profile(
    model: Model,
    threads: Threads = None,
    budget_seconds: Budget = 0.5,
    db: Db = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Measure on the workers of this Dask scheduler (tcp://HOST:PORT) "
                            "whose machine fingerprint is this machine's.")] = None,
    local_cluster: LocalCluster = None,
    connect_timeout: ConnectTimeout = 10.0,
    remeasure_imported: Annotated[bool, typer.Option(
        "--remeasure-imported", help="Measure again the costs the store only has imported "
                                     "(from `profiles import`); the new measurements replace "
                                     "them.")] = False,
    batch: Batch = None,
    input_shape: InputShape = None,
) -> None:
    """Measure what a plan of MODEL needs on this machine (cached costs are skipped)."""
    from convplan.profiles.store import StoreError

    with store_warnings():
        try:
            _profile(model, threads, budget_seconds, db, as_json, scheduler, local_cluster,
                     connect_timeout, remeasure_imported, batch, input_shape)
        except StoreError as error:     # damage found after opening: names the file
            fail(str(error))


def _profile(model: str, threads: int | None, budget_seconds: float, db: Path | None,
             as_json: bool, scheduler: str | None, local_cluster: int | None,
             connect_timeout: float, remeasure_imported: bool, batch: int | None = None,
             input_shape: list[str] | None = None) -> None:
    """`profile` once its options are checked (--threads and the durations by their
    declarations)."""
    from convplan.profiles.profiler import Profiler
    from convplan.selector.planning import requests_for

    if scheduler is not None and local_cluster is not None:
        fail("give --scheduler or --local-cluster, not both")
    with bad_input():               # NetworkError and every bad-model error
        network = load_model(model, batch, input_shape)
    specs = [network.conv_spec(node) for node in network.conv_nodes]
    requests = requests_for(network)        # exactly what `convplan plan` will ask for
    convs = [r for r in requests if r.kind == "conv"]
    transforms = [r for r in requests if r.kind == "transform"]
    ops = [r for r in requests if r.kind == "op"]
    n_threads = threads or os.cpu_count() or 1
    store = _open(db, use_imported=not remeasure_imported)
    if store.read_only:
        store.close()
        fail(f"cost store {store.path} is read-only: `convplan profile` stores what it "
             "measures; make it writable or give another --db")
    if scheduler is not None or local_cluster is not None:
        with store:
            _profile_on_cluster(network.name, requests, store, n_threads, budget_seconds,
                                scheduler, local_cluster, connect_timeout, as_json,
                                {"conv_specs": len(set(specs)), "conv_requests": len(convs),
                                 "transform_requests": len(transforms),
                                 "op_requests": len(ops)})
        return
    with store:
        profiler = Profiler(store, n_threads, budget_seconds)
        before = store.count(profiler.fingerprint_id)
        bar, progress = counting_bar("profiling")
        with bar:
            try:
                profiler.costs(requests, progress=progress)
            except KeyboardInterrupt:
                kept = store.count(profiler.fingerprint_id) - before
                fail(f"interrupted: {kept} new measurement(s) kept in {store.path}; run the "
                     "same command again to measure the rest", code=130)
            except (ValueError, sqlite3.Error) as error:
                fail(f"profiling failed: {error}")
        stats = profiler.last_stats
        assert stats is not None
        summary = {
            "model": network.name, "db": str(store.path),
            "fingerprint_id": profiler.fingerprint_id, "threads": n_threads,
            "conv_specs": len(set(specs)), "conv_requests": len(convs),
            "transform_requests": len(transforms), "op_requests": len(ops),
            "requested": stats.requested,
            "measured": stats.measured, "cached": stats.cached,
            "seconds": round(stats.seconds, 3),
        }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(
        f"{summary['model']}: {stats.requested} costs ({len(set(specs))} distinct conv layers x "
        f"algorithms: {len(convs)}, other layers x layouts: {len(ops)}, layout transforms: "
        f"{len(transforms)}) | measured now "
        f"{stats.measured}, cached {stats.cached}, {stats.seconds:.1f} s | {n_threads} "
        f"thread(s), fingerprint {profiler.fingerprint_id}, store {store.path}", soft_wrap=True)


def _profile_on_cluster(model: str, requests: list[CostRequest], store: CostStore, threads: int,
                        budget_seconds: float, scheduler: str | None, local_cluster: int | None,
                        connect_timeout: float, as_json: bool, counts: dict[str, int]) -> None:
    """`profile --scheduler/--local-cluster`: measure on the Dask workers that are this machine
    (the others are refused, and the output says which and why); store here."""
    from convplan.api.batch import BatchError, dask_client, profile_on_cluster

    bar, progress = counting_bar("profiling on the cluster", show_item=False)
    try:
        with dask_client(scheduler, local_cluster, connect_timeout) as client, bar:
            result = profile_on_cluster(client, requests, store, threads, budget_seconds,
                                        progress)
    except KeyboardInterrupt:
        fail(f"interrupted: the measurements that came back are kept in {store.path}; run "
             "the same command again to measure the rest", code=130)
    except (BatchError, sqlite3.Error) as error:
        fail(str(error) if isinstance(error, BatchError) else f"profiling failed: {error}")
    summary = {"model": model, "db": str(store.path), "fingerprint_id": result.fingerprint_id,
               "threads": threads, **counts, "requested": result.requested,
               "measured": result.measured, "cached": result.cached,
               "seconds": round(result.seconds, 3), **result.as_dict()}
    for worker in result.workers:
        if not worker.accepted:
            warn(f"refused worker {worker.address}: its machine fingerprint is not this "
                 f"machine's ({'; '.join(worker.reasons)}); its measurements are not used")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        used = ", ".join(f"{w.address}: {w.measured}" for w in result.accepted) or "none"
        console.print(
            f"{model}: {result.requested} costs | measured now {result.measured} on "
            f"{len(result.accepted)} of {len(result.workers)} worker(s) ({used}), "
            f"cached {result.cached}, {result.seconds:.1f} s | {threads} thread(s), "
            f"fingerprint {result.fingerprint_id}, store {store.path}", soft_wrap=True)
    if result.failures:
        fail("; ".join(result.failures), code=1)


@profiles_app.command("export")
def export_costs(file: Annotated[Path, typer.Argument(help="JSON file to write.")],
                 db: Db = None) -> None:
    """Write every stored cost, with its machine fingerprint and origin, to a JSON file."""
    with store_warnings(), _open(db) as store:
        try:
            rows = store.export(file)
            fps = len(store.fingerprints())
        except OSError as error:
            fail(f"cannot write {file}: {error.strerror}")
        except ValueError as error:
            fail(str(error))
    console.print(f"exported {rows} cost(s) of {fps} fingerprint(s) to {file}")


@profiles_app.command("import")
def import_costs(file: Annotated[Path, typer.Argument(help="A file `profiles export` wrote.")],
                 db: Db = None) -> None:
    """Merge an exported JSON file into the store (all or nothing). Imported costs are marked
    as imported, never as measured here: they never replace this store's own measurements,
    and of two imports of one cost the newer wins."""
    with store_warnings(), _open(db) as store:
        try:
            rows = store.import_(file)
        except (ValueError, sqlite3.Error) as error:
            fail(str(error))
        path, stats = store.path, store.last_import
    assert stats is not None
    console.print(
        f"imported {rows} cost(s) from {file} into {path}: {stats.written} written as "
        f"imported, {stats.kept_local} kept because this store measured them itself, "
        f"{stats.kept_newer} kept because it holds a newer import", soft_wrap=True)


@profiles_app.command("drop-imported")
def drop_imported(db: Db = None,
                  fingerprint: Annotated[str | None, typer.Option(
                      "--fingerprint", help="Only this fingerprint's imported costs.")] = None
                  ) -> None:
    """Delete the imported costs (this store's own measurements stay): the way back from a bad
    import. `convplan profile` then measures what is missing."""
    with store_warnings(), _open(db) as store:
        try:
            dropped = store.drop_imported(fingerprint)
        except (ValueError, sqlite3.Error) as error:
            fail(str(error))
        path = store.path
    console.print(f"deleted {dropped} imported cost(s) from {path}")


@profiles_app.command("list")
def list_costs(db: Db = None,
               as_json: Json = False
               ) -> None:
    """The machine fingerprints in the store and how many costs each holds (how many of them
    imported)."""
    with store_warnings(), _open(db) as store:
        try:
            infos = store.fingerprints()
        except ValueError as error:
            fail(str(error))
        path, read_only = store.path, store.read_only
    if as_json:
        print(json.dumps([{"id": i.id, "rows": i.rows, "imported": i.imported,
                           "fingerprint": i.fingerprint} for i in infos], indent=2))
        return
    table = new_table(f"cost store {path}" + (" (read-only)" if read_only else ""),
                      ("fingerprint", "threads", "cpu", "blas", "convplan", "costs", "imported"),
                      right=("threads", "costs", "imported"))
    for info in infos:
        fp = info.fingerprint
        blas = fp.get("blas", {})
        table.add_row(info.id, str(fp.get("threads", "?")), str(fp.get("cpu", "?")),
                      f"{blas.get('version', '?')} {blas.get('corename', '')}".strip()
                      if isinstance(blas, dict) else str(blas),
                      str(fp.get("convplan", "?")), str(info.rows), str(info.imported))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `profile` and the `profiles` group to the convplan app."""
    app.command("profile")(profile)
    app.add_typer(profiles_app, name="profiles")
