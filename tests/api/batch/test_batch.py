"""`convplan batch` (in-process and on a Dask LocalCluster) and `convplan profile` on a cluster:
the profiler's Dask backend, with the fingerprint check that refuses workers on another kind of
machine.

Every cluster here is started by a fixture or by the command's own --local-cluster path and is
closed when its test (or this module) ends. Plans use analytic costs (--no-profile) and tiny
measuring budgets; every cost store is a temporary file, passed to the workers in the request.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from convplan.api.batch import (
    PLAN_SUFFIX,
    SUMMARY_FILE,
    BatchError,
    collect_inputs,
    dask_client,
    environ_kept,
    profile_on_cluster,
    run_dask,
    run_local,
)
from convplan.api.cli.batch import register as register_batch
from convplan.api.cli.profiles import register as register_profiles
from convplan.kernels import blas
from convplan.profiles.fingerprint import fingerprint_id, machine_fingerprint
from convplan.profiles.profiler import InProcess, MeasuringJob, Profiler, request_key
from convplan.profiles.remote import DaskBackend, fingerprint_differences, measure_chunk
from convplan.profiles.store import CostStore
from convplan.selector.network import zoo
from convplan.selector.planning import PlanRequest, requests_for
from convplan.selector.runner import run_network
from tests.support import DATA, ROOT

CAP = "4MiB"


def _net(name: str, channels: int, size: int) -> dict:
    return {"name": name, "seed": 1, "inputs": [{"name": "x", "shape": [1, 3, size, size]}],
            "layers": [
                {"name": "c1", "op": "conv", "inputs": ["x"], "out_channels": channels,
                 "kernel": 3, "padding": 1},
                {"name": "r1", "op": "relu", "inputs": ["c1"]},
                {"name": "c2", "op": "conv", "inputs": ["r1"], "out_channels": channels,
                 "kernel": 3, "padding": 1},
                {"name": "c3", "op": "conv", "inputs": ["c2"], "out_channels": channels,
                 "kernel": 1},
                {"name": "sum", "op": "add", "inputs": ["r1", "c3"]},
                {"name": "p", "op": "maxpool", "inputs": ["sum"], "kernel": 2, "stride": 2},
                {"name": "gap", "op": "globalavgpool", "inputs": ["p"]},
                {"name": "f", "op": "flatten", "inputs": ["gap"]}]}


NETS = {"small": _net("small", 4, 12), "medium": _net("medium", 8, 16),
        "wide": _net("wide", 16, 16)}
GOOD = {*NETS, "torch_resnetish"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small JSON networks and a PyTorch-exported ONNX file."""
    path = tmp_path_factory.mktemp("nets")
    for name, description in NETS.items():
        (path / f"{name}.json").write_text(json.dumps(description))
    shutil.copy(DATA / "torch_resnetish.onnx", path)
    return path


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """The same networks plus invalid JSON and a truncated ONNX file."""
    path = tmp_path_factory.mktemp("broken")
    for file in folder.iterdir():
        shutil.copy(file, path)
    (path / "broken.json").write_text('{"name": "broken", "inputs": [')
    (path / "truncated.onnx").write_bytes((DATA / "torch_resnetish.onnx").read_bytes()[:700])
    return path


@pytest.fixture
def client() -> Iterator:
    """A two-worker LocalCluster (processes, one thread each), via the project's own path.
    Per test, not per module: a live client's threads allocate, and `tracemalloc` (the measured
    peak of the plans run here) sees every thread of this process."""
    with dask_client(local_workers=2, timeout_s=30) as c:
        yield c


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def other() -> None:  # a second command, as in the real app
        """Stand-in for the rest of convplan."""

    register_batch(app)
    register_profiles(app)
    return app


def invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def batch_args(inputs: Path | str, out: Path, db: Path, *extra: str) -> list[str]:
    return ["batch", str(inputs), "--memory-cap", CAP, "--out", str(out), "--no-profile",
            "--threads", "1", "--db", str(db), "--json", *extra]


def plans_in(out: Path) -> dict[str, dict]:
    return {p.name.removesuffix(PLAN_SUFFIX): json.loads(p.read_text())
            for p in out.glob(f"*{PLAN_SUFFIX}")}


# -- batch ---------------------------------------------------------------------------------------
def test_local_cluster_plans_like_in_process(app, folder: Path, tmp_path: Path) -> None:
    db = tmp_path / "costs.sqlite"
    here = invoke(app, *batch_args(folder, tmp_path / "here", db))
    assert here.exit_code == 0, here.output
    there = invoke(app, *batch_args(folder, tmp_path / "there", db, "--local-cluster", "2"))
    assert there.exit_code == 0, there.output
    local, remote = plans_in(tmp_path / "here"), plans_in(tmp_path / "there")
    assert set(local) == set(remote) == GOOD
    for name in GOOD:
        a, b = local[name], remote[name]
        assert a["assignment"] == b["assignment"] and a["layouts"] == b["layouts"], name
        assert a["predicted"]["peak_bytes"] == b["predicted"]["peak_bytes"], name
        assert a["predicted"]["peak_bytes"] <= a["memory_cap_bytes"] == 4 * 2**20
        assert a["costs"] == "analytic"
    summary = json.loads(there.stdout)
    assert summary["planned"] == summary["networks"] == 4 and summary["failed"] == 0
    assert all(r["worker"].startswith("tcp://") for r in summary["rows"])
    assert json.loads((tmp_path / "there" / SUMMARY_FILE).read_text()) == summary
    assert not list((tmp_path / "there").glob(".*"))      # no temporary files left behind


def _check_broken(rows: list[dict]) -> None:
    by_name = {r["network"]: r for r in rows}
    assert set(by_name) == GOOD | {"broken", "truncated"}
    assert "invalid network description" in by_name["broken"]["error"]
    assert "not a valid ONNX file" in by_name["truncated"]["error"]
    for name in GOOD:
        assert by_name[name]["status"] == "planned" and by_name[name]["error"] is None, name
    for name in ("broken", "truncated"):
        assert by_name[name]["status"] == "error" and by_name[name]["plan"] is None


def test_broken_files_are_reported_and_the_rest_planned(app, broken_folder: Path, client,
                                                        tmp_path: Path) -> None:
    db = tmp_path / "costs.sqlite"
    result = invoke(app, *batch_args(broken_folder, tmp_path / "out", db))
    assert result.exit_code == 1, result.output
    assert "2 of 6 network(s) failed: broken, truncated" in result.stderr
    assert "Traceback" not in result.output
    assert set(plans_in(tmp_path / "out")) == GOOD
    summary = json.loads(result.stdout)
    _check_broken([{**r, "plan": None if r["status"] == "error" else {}}
                   for r in summary["rows"]])
    # the same on the cluster, through the library functions
    request = PlanRequest(cap=4 * 2**20, threads=1, measure=False, db=str(db))
    inputs = collect_inputs([broken_folder])
    seen: list[str] = []
    rows = run_dask(inputs, request, client, lambda row: seen.append(row["network"]))
    _check_broken(rows)
    assert sorted(seen) == sorted(i.name for i in inputs)
    local = run_local(inputs, request)
    for a, b in zip(local, rows, strict=True):
        assert (a["network"], a["status"], a["peak_bytes"]) == \
            (b["network"], b["status"], b["peak_bytes"])


def test_plan_files_run_as_plans(app, folder: Path, tmp_path: Path) -> None:
    from convplan.api.cli import _read_plan  # exactly what `convplan run --plan` reads

    out = tmp_path / "out"
    result = invoke(app, *batch_args(folder, out, tmp_path / "costs.sqlite"))
    assert result.exit_code == 0, result.output
    sources = {name: folder / f"{name}.json" for name in NETS}
    sources["torch_resnetish"] = folder / "torch_resnetish.onnx"
    for name, source in sources.items():
        plan = _read_plan(out / f"{name}{PLAN_SUFFIX}")
        report = run_network(zoo.load_network(source), assignment=plan.assignment,
                             layouts=plan.layouts, strict=True, threads=plan.threads)
        document = json.loads((out / f"{name}{PLAN_SUFFIX}").read_text())
        assert report.predicted_peak_bytes == document["predicted"]["peak_bytes"]
        assert report.measured_peak_bytes <= report.predicted_peak_bytes


def test_a_cap_too_small_for_one_network_fails_only_that_one(app, folder: Path,
                                                             tmp_path: Path) -> None:
    invoke(app, *batch_args(folder / "small.json", tmp_path / "a", tmp_path / "c.sqlite"))
    small = plans_in(tmp_path / "a")["small"]
    cap = small["predicted"]["model_bound_bytes"] + 1024     # fits "small", not "wide"
    result = invoke(app, "batch", folder / "small.json", folder / "wide.json", "--memory-cap",
                    str(cap), "--out", tmp_path / "b", "--no-profile", "--threads", "1",
                    "--db", tmp_path / "c.sqlite", "--json")
    assert result.exit_code == 1, result.output
    rows = {r["network"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["small"]["status"] == "planned", rows["small"]["error"]
    assert rows["wide"]["status"] == "error"
    assert "the smallest achievable peak is" in rows["wide"]["error"]
    assert "1 of 2 network(s) failed: wide" in result.stderr
    assert set(plans_in(tmp_path / "b")) == {"small"}


def test_a_network_over_its_deadline_fails_alone_and_plans_are_written_as_they_come(
        folder: Path, tmp_path: Path) -> None:
    """vgg16, measured, takes minutes; with a 20 s deadline per network it is stopped and
    reported, the networks around it are planned, and the first plan file exists while vgg16
    is still being planned (not only at the end)."""
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "convplan", "batch", str(folder / "small.json"), "vgg16",
               str(folder / "medium.json"), "--memory-cap", "1GiB", "--out", str(out),
               "--threads", "1", "--budget-seconds", "0.002", "--db",
               str(tmp_path / "costs.sqlite"), "--timeout-seconds", "20", "--json"]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = out / f"small{PLAN_SUFFIX}"
        while not first.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() - started < 60, "no plan for small within 60 s"
            time.sleep(0.1)
        assert process.poll() is None          # vgg16 is still being planned
        assert not (out / f"medium{PLAN_SUFFIX}").exists()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    assert process.returncode == 1, stderr
    rows = {r["network"]: r for r in json.loads(stdout)["rows"]}
    assert rows["vgg16"]["status"] == "error" and "timed out" in rows["vgg16"]["error"]
    assert 20 <= rows["vgg16"]["seconds"] < 20 + 8
    assert rows["small"]["status"] == rows["medium"]["status"] == "planned"
    assert set(plans_in(out)) == {"small", "medium"}
    assert plans_in(out)["medium"]["costs"] == "measured"
    assert "1 of 3 network(s) failed: vgg16" in stderr
    assert elapsed < 90, elapsed


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.stderr


@pytest.mark.parametrize("args, message", [
    (["--memory-cap", "12XB"], "cannot read '12XB' as a size"),
    (["--memory-cap", "0"], "must be positive"),
    (["--solver", "gurobi"], "unknown solver"),
    (["--local-cluster", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    (["--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "1"],
     "cannot reach the Dask scheduler at tcp://127.0.0.1:1 within 1 s"),
    (["--scheduler", "nonsense://x:1", "--connect-timeout", "1"], "unknown address scheme"),
])
def test_bad_arguments_are_clear_errors(app, folder: Path, tmp_path: Path, args: list[str],
                                        message: str) -> None:
    base = ["batch", str(folder), "--memory-cap", CAP, "--out", str(tmp_path / "out"),
            "--no-profile"]
    stderr = _error(invoke(app, *base, *args))
    assert stderr.startswith("error:") and message in stderr
    assert not list((tmp_path / "out").glob(f"*{PLAN_SUFFIX}"))


def test_no_inputs_is_a_clear_error(app, tmp_path: Path) -> None:
    out = ["--memory-cap", CAP, "--out", str(tmp_path / "out")]
    assert "Missing argument" in _error(invoke(app, "batch", *out))
    (tmp_path / "empty").mkdir()
    assert "no .json or .onnx files in folder" in _error(
        invoke(app, "batch", str(tmp_path / "empty"), *out))
    assert "neither a built-in network" in _error(
        invoke(app, "batch", str(tmp_path / "missing.onnx"), *out))
    with pytest.raises(BatchError, match="no networks given"):
        collect_inputs([])


def test_a_local_cluster_leaves_the_environment_as_it_was(folder: Path, tmp_path: Path) -> None:
    before = dict(os.environ)
    with dask_client(local_workers=1, timeout_s=30) as client:
        request = PlanRequest(threads=1, measure=False, db=str(tmp_path / "c.sqlite"))
        rows = run_dask(collect_inputs([folder / "small.json"]), request, client)
        assert rows[0]["status"] == "planned", rows[0]["error"]
    assert dict(os.environ) == before       # no OPENBLAS_NUM_THREADS=1 left for later children


def test_collect_inputs_names_and_skips(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.json").write_text(json.dumps(NETS["small"]))
    shutil.copy(DATA / "torch_resnetish.onnx", tmp_path / "sub" / "a.onnx")
    (tmp_path / f"old{PLAN_SUFFIX}").write_text("{}")      # a previous batch's output
    (tmp_path / SUMMARY_FILE).write_text("{}")
    (tmp_path / "notes.txt").write_text("not a network")
    inputs = collect_inputs([tmp_path, "onnx:squeezenet", tmp_path / "a.json"])
    assert [(i.name, i.kind) for i in inputs] == [
        ("a", "json"), ("a-2", "onnx"), ("onnx_squeezenet", "builtin")]
    assert inputs[0].data == (tmp_path / "a.json").read_bytes()     # bytes travel, not paths
    assert inputs[2].data == b"onnx:squeezenet"


# -- profiling on a cluster ----------------------------------------------------------------------
def _keys(db: Path) -> set[tuple[str, str, str, str]]:
    export = db.with_suffix(".export.json")
    with CostStore(db) as store:
        store.export(export)
    rows = json.loads(export.read_text())["rows"]
    return {(r["fingerprint_id"], r["kind"], r["key"], r["candidate"]) for r in rows}


def test_profile_on_a_local_cluster_stores_what_a_local_profile_stores(
        app, folder: Path, tmp_path: Path) -> None:
    net = folder / "medium.json"
    common = ["--threads", "1", "--budget-seconds", "0.002", "--json"]
    local_db, cluster_db = tmp_path / "local.sqlite", tmp_path / "cluster.sqlite"
    local = invoke(app, "profile", net, "--db", local_db, *common)
    assert local.exit_code == 0, local.output
    there = invoke(app, "profile", net, "--db", cluster_db, "--local-cluster", "2", *common)
    assert there.exit_code == 0, there.output
    report = json.loads(there.stdout)
    assert report["measured"] == report["requested"] == json.loads(local.stdout)["requested"]
    assert report["failures"] == [] and len(report["workers"]) == 2
    assert all(w["accepted"] for w in report["workers"])
    assert sum(w["measured"] for w in report["workers"]) == report["measured"]
    assert _keys(cluster_db) == _keys(local_db)
    assert report["fingerprint_id"] == json.loads(local.stdout)["fingerprint_id"]


def test_profile_on_cluster_skips_what_is_stored(client, folder: Path, tmp_path: Path) -> None:
    requests = requests_for(zoo.load_network(folder / "small.json"))
    with CostStore(tmp_path / "costs.sqlite") as store:
        Profiler(store, 1, 0.002).costs(requests[:5])
        done = profile_on_cluster(client, requests, store, 1, 0.002, chunk_size=3)
        assert (done.cached, done.measured, done.requested) == (5, len(requests) - 5,
                                                                len(requests))
        again = profile_on_cluster(client, requests, store, 1, 0.002)
        assert (again.cached, again.measured) == (len(requests), 0)
        assert store.count(done.fingerprint_id) == store.count() == len(requests)


# -- the Dask backend of the profiler ------------------------------------------------------------
def test_the_dask_backend_measures_what_the_in_process_one_does(client, folder: Path,
                                                                tmp_path: Path) -> None:
    requests = requests_for(zoo.load_network(folder / "small.json"))
    with CostStore(tmp_path / "here.sqlite") as here, \
            CostStore(tmp_path / "there.sqlite") as there:
        local = Profiler(here, 1, 0.002)
        backend = DaskBackend(client, chunk_size=3)
        remote = Profiler(there, 1, 0.002, backend=backend)
        assert isinstance(local.backend, InProcess)
        a, b = local.costs(requests), remote.costs(requests + requests[:4])   # deduped too
        assert set(a) == set(b) == {request_key(r) for r in requests}
        assert {m.source for m in b.values()} == {"measured"}
        assert local.last_stats.measured == remote.last_stats.measured == len(a)
        assert remote.last_stats.unmeasured == 0 and backend.failures == []
        assert len(backend.accepted) == len(backend.workers) == 2
        assert sum(w.measured for w in backend.workers) == len(a)
        assert here.count(local.fingerprint_id) == there.count(remote.fingerprint_id) == len(a)
    assert _keys(tmp_path / "here.sqlite") == _keys(tmp_path / "there.sqlite")


def test_workers_on_another_machine_measure_nothing(client, folder: Path) -> None:
    requests = requests_for(zoo.load_network(folder / "small.json"))[:4]
    here = machine_fingerprint(1)
    elsewhere = {**here, "blas": {**here["blas"], "corename": "Katmai-ish"}}
    backend = DaskBackend(client)
    batches = list(backend.measure(requests, MeasuringJob(1, 0.002, elsewhere)))
    assert batches == []
    assert len(backend.workers) == 2 and backend.accepted == []
    for worker in backend.workers:
        assert worker.measured == 0 and worker.fingerprint_id == fingerprint_id(here)
        assert worker.reasons == [f"blas.corename: {here['blas']['corename']!r} on the worker, "
                                  "'Katmai-ish' here"]
    assert backend.failures == ["4 cost(s) not measured: no worker matches this machine's "
                                "fingerprint"]


def test_a_profiler_whose_cluster_measures_nothing_estimates_and_stores_nothing(
        client, folder: Path, tmp_path: Path) -> None:
    from convplan.profiles.profiler import measuring_deadline

    requests = requests_for(zoo.load_network(folder / "small.json"))
    with CostStore(tmp_path / "costs.sqlite") as store:
        backend = DaskBackend(client)
        profiler = Profiler(store, 1, 0.002, backend=backend)
        with measuring_deadline(time.monotonic()):      # spent before anything was sent
            costs = profiler.costs(requests)
        assert {m.source for m in costs.values()} == {"analytic"} and store.count() == 0
        assert profiler.last_stats.unmeasured == profiler.last_stats.requested == len(costs)
        assert len(backend.accepted) == 2 and backend.failures == []
        assert sum(w.measured for w in backend.workers) == 0


def test_chunks_are_committed_as_they_come_and_an_interruption_keeps_them(
        client, folder: Path, tmp_path: Path) -> None:
    requests = requests_for(zoo.load_network(folder / "medium.json"))
    path = tmp_path / "costs.sqlite"
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int, request) -> None:
        with CostStore(path) as other:      # another connection sees only what is committed
            seen.append((done, other.count()))
        if len(seen) == 2:
            raise KeyboardInterrupt

    with CostStore(path) as store:
        with pytest.raises(KeyboardInterrupt):
            profile_on_cluster(client, requests, store, 1, 0.002, progress, chunk_size=3)
        assert [done for done, _ in seen] == [count for _, count in seen]
        assert 0 < seen[0][0] <= 3 and 0 < seen[1][0] - seen[0][0] <= 3
        assert store.count() == seen[1][0] < len(requests)
        # nothing is left running on the cluster
        deadline = time.monotonic() + 10
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.monotonic() < deadline, "chunks left on the cluster"
            time.sleep(0.1)
        # a rerun measures only the rest
        again = profile_on_cluster(client, requests, store, 1, 0.002, chunk_size=3)
        assert (again.cached, again.measured) == (seen[1][0], len(requests) - seen[1][0])
        assert store.count() == len(requests)


def test_fingerprint_differences_and_a_refusing_chunk(folder: Path) -> None:
    here = machine_fingerprint(1)
    assert fingerprint_differences(here, dict(here)) == []
    there = {**here, "cpu": "Imaginary CPU 9000",
             "blas": {**here["blas"], "corename": "Katmai-ish"}}
    there.pop("numpy")
    lines = fingerprint_differences(here, there)
    assert len(lines) == 3
    assert any(line.startswith("blas.corename: 'Katmai-ish' on the worker") for line in lines)
    assert any(line.startswith("cpu: 'Imaginary CPU 9000' on the worker") for line in lines)
    assert any(line.startswith("numpy: (absent) on the worker") for line in lines)
    # a chunk sent to a machine that is not the expected one measures nothing
    requests = requests_for(zoo.load_network(folder / "small.json"))[:2]
    refused = measure_chunk(requests, 1, 0.002, there)
    assert refused.measurements == [] and len(refused.refused) == 3
    accepted = measure_chunk(requests, 1, 0.002, here)
    assert accepted.refused == [] and len(accepted.measurements) == 2


@pytest.fixture
def mixed_cluster() -> Iterator[str]:
    """Two workers; one loads its OpenBLAS with other kernels (CONVPLAN_BLAS_CORETYPE, which the
    machine fingerprint records as blas.corename), as a worker on another kind of CPU would."""
    from distributed import Nanny, Scheduler, SpecCluster

    mine = blas.info()["corename"]
    other = "Prescott" if mine not in ("Prescott", "Katmai") else "Haswell"
    worker = {"cls": Nanny, "options": {"nthreads": 1}}
    odd = {"cls": Nanny, "options": {"nthreads": 1,
                                     "env": {"CONVPLAN_BLAS_CORETYPE": other}}}
    with environ_kept():
        cluster = SpecCluster(workers={"same": worker, "odd": odd},
                              scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                              silence_logs=logging.ERROR)
        try:
            yield cluster.scheduler_address
        finally:
            cluster.close()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the other BLAS kernels named here are x86 ones")
def test_a_worker_on_another_machine_is_refused(app, mixed_cluster: str, folder: Path,
                                                tmp_path: Path) -> None:
    db = tmp_path / "costs.sqlite"
    result = invoke(app, "profile", folder / "small.json", "--db", db, "--threads", "1",
                    "--budget-seconds", "0.002", "--scheduler", mixed_cluster,
                    "--connect-timeout", "30", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    refused = [w for w in report["workers"] if not w["accepted"]]
    used = [w for w in report["workers"] if w["accepted"]]
    assert len(refused) == 1 and len(used) == 1
    assert refused[0]["measured"] == 0
    assert any(r.startswith("blas.corename:") for r in refused[0]["reasons"])
    assert refused[0]["fingerprint_id"] != report["fingerprint_id"]
    assert f"refused worker {refused[0]['address']}" in result.stderr
    assert "blas.corename" in result.stderr
    assert used[0]["measured"] == report["measured"] == report["requested"]
    with CostStore(db) as store:     # everything is stored under this machine's fingerprint
        assert [f.id for f in store.fingerprints()] == [report["fingerprint_id"]]
