"""Planning many networks at once, in this process or on a Dask cluster, and profiling on one.

Why the shapes of these functions: a Dask worker may run on another machine, so it is sent the
network file's bytes (and a name), never a path, and it sends back the `Plan` (pickled); the
client writes every file. `plan_one` turns one network into one result row and never raises for
a bad network (one broken file must not stop a batch); `plan_in_child` runs it in a child
process under a deadline, killed when it overruns (a thread could not be stopped), so one network
that takes too long fails alone; `run_local` and `run_dask` run a list of inputs one way or the
other and give the same rows, and `write_plan` writes each plan as soon as it comes.
`profile_on_cluster` spreads measurements over the workers whose machine fingerprint is this
machine's (see `profiles.remote`) and stores them here. Dask is imported only when a cluster
is used.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from convplan.profiles.fingerprint import fingerprint_id, machine_fingerprint
from convplan.profiles.profiler import request_key
from convplan.profiles.remote import (
    ChunkResult,
    fingerprint_differences,
    measure_chunk,
    worker_fingerprint,
)
from convplan.profiles.requests import CostRequest
from convplan.profiles.store import CostKey, CostStore
from convplan.selector.network import Limits, Network, zoo
from convplan.selector.planning import SOLVERS, Plan, PlanRequest, plan_network

if TYPE_CHECKING:
    from distributed import Client

Kind = Literal["json", "onnx", "builtin"]
#: Where `collect_inputs` looks inside a folder.
NETWORK_SUFFIXES = (".json", ".onnx")
#: Written next to the plans; never collected as a network (nor are the plans themselves).
SUMMARY_FILE = "batch-summary.json"
PLAN_SUFFIX = ".plan.json"
#: Network files larger than this are scattered to the cluster once instead of riding in the task.
SCATTER_BYTES = 1 << 20
#: Requests per profiling task: the unit of load balancing and of one store transaction.
CHUNK_SIZE = 8

#: ``on_result(row)`` after each network is done (drives a progress bar, writes its plan).
OnResult = Callable[[dict[str, Any]], None]
#: Seconds between SIGTERM and SIGKILL for a planning process past its deadline.
KILL_GRACE_S = 1.0


class BatchError(ValueError):
    """Bad arguments or an unusable cluster: nothing was planned."""


# -- inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkInput:
    """One network to plan: a unique file-name-safe ``name`` (the plan is ``<name>.plan.json``),
    what the user named (``source``, for messages only), and the bytes a worker will parse."""

    name: str
    source: str
    kind: Kind
    data: bytes                 # the file's bytes; a built-in network's name for "builtin"
    error: str | None = None    # found before planning (an unreadable file)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "network"


def _is_builtin(text: str) -> bool:
    return text in zoo.PAPER_NETWORKS or text.startswith("onnx:")


def _files_in(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.name
        if path.suffix.lower() not in NETWORK_SUFFIXES or name.startswith("."):
            continue
        if name.endswith(PLAN_SUFFIX) or name == SUMMARY_FILE or not path.is_file():
            continue     # a previous batch's output inside the input folder
        found.append(path)
    return found


def collect_inputs(sources: Sequence[str | os.PathLike[str]]) -> list[NetworkInput]:
    """The networks named by ``sources``: built-in names, files (``.json`` descriptions, anything
    else read as ONNX) and folders (searched recursively for ``*.json`` and ``*.onnx``). Each file
    is read once here. BatchError for no sources, a source that does not exist, or a folder with
    no network files; an unreadable file becomes an input carrying its error."""
    if not sources:
        raise BatchError("no networks given: name files, folders or built-in networks")
    entries: list[tuple[str, str, Kind, Path | None]] = []
    seen: set[Path] = set()
    for source in sources:
        text = str(source)
        if _is_builtin(text):
            entries.append((text, text, "builtin", None))
            continue
        path = Path(text)
        if path.is_dir():
            files = _files_in(path)
            if not files:
                raise BatchError(f"no .json or .onnx files in folder {text}")
        elif path.exists():
            files = [path]
        else:
            raise BatchError(f"{text!r} is neither a built-in network "
                             f"({', '.join(zoo.PAPER_NETWORKS)}, onnx:NAME), a file nor a folder")
        for file in files:
            resolved = file.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            kind: Kind = "json" if file.suffix.lower() == ".json" else "onnx"
            entries.append((file.stem, str(file), kind, file))
    inputs, taken = [], set()
    for stem, source, kind, file in entries:
        name = base = _safe_name(stem)
        n = 1
        while name.lower() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        if file is None:
            inputs.append(NetworkInput(name, source, kind, source.encode()))
            continue
        try:
            inputs.append(NetworkInput(name, source, kind, file.read_bytes()))
        except OSError as error:
            inputs.append(NetworkInput(name, source, kind, b"",
                                       f"cannot read {source}: {error.strerror}"))
    return inputs


def check_request(request: PlanRequest) -> None:
    """Refuse options that would make every network fail, before any work is sent anywhere."""
    if request.solver not in SOLVERS:
        raise BatchError(f"unknown solver {request.solver!r}; use one of {', '.join(SOLVERS)}")
    if request.threads is not None and request.threads < 1:
        raise BatchError(f"--threads must be at least 1, got {request.threads}")
    if not request.budget_s > 0:
        raise BatchError(f"--budget-seconds must be positive, got {request.budget_s}")
    if not request.time_limit_s > 0:
        raise BatchError(f"--time-limit must be positive, got {request.time_limit_s}")


# -- one network ---------------------------------------------------------------------------------
def parse_network(name: str, kind: Kind, data: bytes) -> Network:
    """The network in ``data`` within this machine's limits, as `convplan plan` loads one
    (NetworkError when it is not one, or is too large)."""
    limits = Limits.of_this_machine()
    if kind == "builtin":
        return zoo.check_limits(zoo.builtin(data.decode()), limits)
    if kind == "json":
        return zoo.description_network(data, limits)
    return zoo.onnx_network(data, limits, name=name)


def _row(name: str, status: str, *, error: str | None = None,
         plan: Plan | None = None, seconds: float = 0.0) -> dict[str, Any]:
    row: dict[str, Any] = {"network": name, "status": status, "error": error,
                           "predicted_time_s": None, "peak_bytes": None,
                           "memory_cap_bytes": None, "solve_seconds": None, "solver_status": None,
                           "costs": None, "seconds": round(seconds, 3), "worker": None,
                           "plan": plan}
    if plan is not None:
        row.update(predicted_time_s=plan.predicted.time_s,
                   peak_bytes=plan.predicted.peak_bytes,
                   memory_cap_bytes=plan.memory_cap_bytes,
                   solve_seconds=plan.solver.solve_seconds,
                   solver_status=plan.solver.status, costs=plan.costs)
    return row


def plan_one(name: str, kind: Kind, data: bytes, request: PlanRequest) -> dict[str, Any]:
    """Parse and plan one network (here, or on a worker): a result row with its `Plan`
    under ``"plan"``, or status "error" and the message. Never raises for a bad network or an
    infeasible cap; the cost store is ``request.db`` or this process's default."""
    started = time.perf_counter()
    try:
        network = parse_network(name, kind, data)
        plan = plan_network(network, request)
    except ValueError as error:     # NetworkError, PlanningError, a bad store
        message = str(error)
    except sqlite3.Error as error:
        message = f"cost store: {error}"
    except Exception as error:      # one network's bug must not end the batch
        message = f"{type(error).__name__}: {error}"
    else:
        return _row(name, "planned", plan=plan, seconds=time.perf_counter() - started)
    return _row(name, "error", error=message, seconds=time.perf_counter() - started)


def _unreadable(item: NetworkInput) -> dict[str, Any]:
    return _row(item.name, "error", error=item.error)


def _child_main() -> None:
    """The planning child process of `plan_in_child`: the job from stdin (pickled), the row
    to the file named by argv[1] (pickled), nothing else on stdout."""
    name, kind, data, request = pickle.load(sys.stdin.buffer)
    row = plan_one(name, kind, data, request)
    with open(sys.argv[1], "wb") as out:
        pickle.dump(row, out)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the child's process group (the child and its solver), SIGKILL after a grace."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # what the child started (a solver) goes too


def plan_in_child(name: str, kind: Kind, data: bytes, request: PlanRequest,
                  timeout_s: float) -> dict[str, Any]:
    """`plan_one` in a child process (a new Python, not a fork: it works inside a daemonic
    Dask worker too) that is killed, with everything it started, after ``timeout_s`` seconds:
    then the row says the network timed out."""
    started = time.perf_counter()
    handle, result = tempfile.mkstemp(prefix="convplan-batch-", suffix=".pickle")
    os.close(handle)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c",
             "from convplan.api.batch import _child_main; _child_main()", result],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            assert process.stdin is not None
            try:
                process.stdin.write(pickle.dumps((name, kind, data, request)))
                process.stdin.close()
            except BrokenPipeError:
                pass
            process.wait(timeout=max(0.0, timeout_s - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            _stop_group(process)
            return _row(name, "error", error=f"timed out: not planned within {timeout_s:g} s "
                        "(--timeout-seconds)", seconds=time.perf_counter() - started)
        except BaseException:           # interrupted: the child must not outlive us
            _stop_group(process)
            raise
        _stop_group(process)            # its solver, if one is left
        try:
            with open(result, "rb") as handle_in:
                row = pickle.load(handle_in)
        except (OSError, EOFError, pickle.UnpicklingError):
            code = process.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            return _row(name, "error", error=f"the planning process died ({how})",
                        seconds=time.perf_counter() - started)
        return row
    finally:
        Path(result).unlink(missing_ok=True)


def run_local(inputs: Sequence[NetworkInput], request: PlanRequest,
              on_result: OnResult | None = None, timeout_s: float | None = None
              ) -> list[dict[str, Any]]:
    """Plan every input on this machine, one after another; rows in input order. With
    ``timeout_s``, each in a child process killed after that many seconds (its row then says
    it timed out); without, in this process."""
    rows = []
    for item in inputs:
        if item.error:
            row = _unreadable(item)
        elif timeout_s is None:
            row = plan_one(item.name, item.kind, item.data, request)
        else:
            row = plan_in_child(item.name, item.kind, item.data, request, timeout_s)
        row["source"] = item.source
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows


def _plan_on_worker(name: str, kind: Kind, data: bytes, request: PlanRequest,
                    timeout_s: float | None = None) -> dict[str, Any]:
    """`plan_one` on a Dask worker (in a child process under ``timeout_s``, if given), saying
    which worker it was."""
    from distributed import get_worker

    row = plan_one(name, kind, data, request) if timeout_s is None else \
        plan_in_child(name, kind, data, request, timeout_s)
    row["worker"] = get_worker().address
    return row


def _task_key(what: str, name: str) -> str:
    return f"convplan-{what}-{name}-{uuid.uuid4().hex[:8]}"


def run_dask(inputs: Sequence[NetworkInput], request: PlanRequest, client: Client,
             on_result: OnResult | None = None, timeout_s: float | None = None
             ) -> list[dict[str, Any]]:
    """Plan every input on the Dask cluster behind ``client`` (the bytes travel, not paths);
    rows in input order. A task that fails on the cluster (a worker lost, say) becomes an error
    row like any bad network; with ``timeout_s`` each network is planned in a child process of
    its worker, killed after that many seconds."""
    from distributed import as_completed

    rows: list[dict[str, Any] | None] = [None] * len(inputs)
    futures = {}
    for i, item in enumerate(inputs):
        if item.error:
            rows[i] = {**_unreadable(item), "source": item.source}
            if on_result is not None:
                on_result(rows[i])
            continue
        data: Any = item.data
        if len(data) > SCATTER_BYTES:   # large files go to the cluster once, outside the graph
            data = client.scatter(data, hash=False)
        future = client.submit(_plan_on_worker, item.name, item.kind, data, request, timeout_s,
                               key=_task_key("plan", item.name), pure=False, retries=0)
        futures[future] = i
    try:
        for future in as_completed(list(futures)):
            i = futures[future]
            try:
                row = future.result()
            except Exception as error:      # reported as this network's error
                row = _row(inputs[i].name, "error",
                           error=f"failed on the cluster: {type(error).__name__}: {error}")
            row["source"] = inputs[i].source
            rows[i] = row
            if on_result is not None:
                on_result(row)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return [r for r in rows if r is not None]


# -- outputs -------------------------------------------------------------------------------------
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


# -- the cluster ---------------------------------------------------------------------------------
@contextmanager
def environ_kept() -> Iterator[None]:
    """Put this process's environment back afterwards: Dask's nanny sets ``OMP_NUM_THREADS=1``,
    ``OPENBLAS_NUM_THREADS=1``, ``PYTHONHASHSEED`` ... in the *parent's* environment before it
    spawns a worker, and a long-lived caller (a service, a test session) would pass them on to
    every process it starts later."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != saved:
            os.environ.clear()
            os.environ.update(saved)


@contextmanager
def dask_client(scheduler: str | None = None, local_workers: int | None = None,
                timeout_s: float = 10.0) -> Iterator[Client]:
    """A Dask client to ``scheduler`` (``tcp://host:port``), or to a `LocalCluster` of
    ``local_workers`` worker processes with one thread each, started and closed here. Waits up
    to ``timeout_s`` for the connection and for at least one worker (BatchError otherwise)."""
    import logging

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BatchError("running on a Dask cluster needs Dask: pip install "
                         "'convplan[dask]' (or 'dask[distributed]')") from None
    if (scheduler is None) == (local_workers is None):
        raise BatchError("give either --scheduler or --local-cluster")
    if local_workers is not None and local_workers < 1:
        raise BatchError(f"--local-cluster needs at least 1 worker, got {local_workers}")
    if not timeout_s > 0:
        raise BatchError(f"--connect-timeout must be positive, got {timeout_s}")
    if local_workers is not None:
        with environ_kept():    # a worker restarted during the run sets them again
            try:
                with environ_kept():
                    cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
            except (OSError, RuntimeError, TimeoutError) as error:
                raise BatchError(f"cannot start a local Dask cluster: {error}") from None
            with cluster, Client(cluster, timeout=timeout_s) as client:
                yield client
        return
    assert scheduler is not None
    try:
        client = Client(scheduler, timeout=timeout_s)
    except (OSError, TimeoutError, ValueError) as error:
        raise BatchError(f"cannot reach the Dask scheduler at {scheduler} within "
                         f"{timeout_s:g} s: {error}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout_s)
        except (OSError, TimeoutError) as error:
            raise BatchError(f"the Dask scheduler at {scheduler} has no workers "
                             f"(waited {timeout_s:g} s): {error}") from None
        yield client


# -- profiling on a cluster ----------------------------------------------------------------------
@dataclass
class WorkerReport:
    """One worker of a distributed profile: used, or refused and why."""

    address: str
    fingerprint_id: str | None
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    measured: int = 0


@dataclass
class ClusterProfile:
    """What `profile_on_cluster` did."""

    fingerprint_id: str
    requested: int
    cached: int
    measured: int
    seconds: float
    workers: list[WorkerReport]
    #: Chunks that could not be measured (a refusal at run time, a lost worker), with the reason.
    failures: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[WorkerReport]:
        return [w for w in self.workers if w.accepted]

    def as_dict(self) -> dict[str, Any]:
        return {"workers": [asdict(w) for w in self.workers], "failures": list(self.failures)}


def _measure_on_worker(requests: list[CostRequest], threads: int, budget_s: float,
                       expected: dict[str, Any]) -> tuple[str, ChunkResult]:
    """`measure_chunk` on a Dask worker, saying which worker it was."""
    from distributed import get_worker

    return get_worker().address, measure_chunk(requests, threads, budget_s, expected)


def check_workers(client: Client, here: Mapping[str, Any], threads: int) -> list[WorkerReport]:
    """Every worker's fingerprint under ``threads``, compared with this machine's ``here``."""
    found = client.run(worker_fingerprint, threads, on_error="return")
    reports = []
    for address, fp in sorted(found.items()):
        if isinstance(fp, BaseException):
            reports.append(WorkerReport(address, None, False,
                                        [f"cannot compute its fingerprint: {fp}"]))
            continue
        reasons = fingerprint_differences(here, fp)
        reports.append(WorkerReport(address, fingerprint_id(fp), not reasons, reasons))
    return reports


def profile_on_cluster(client: Client, requests: Sequence[CostRequest], store: CostStore,
                       threads: int, budget_s: float,
                       progress: Callable[[int, int], None] | None = None,
                       chunk_size: int = CHUNK_SIZE) -> ClusterProfile:
    """Measure what ``store`` lacks of ``requests`` (for this machine under ``threads``) on the
    workers whose fingerprint equals this machine's, and store it here under this machine's
    fingerprint, one transaction per chunk as chunks come back (an interruption keeps them).
    Workers that differ are refused and measure nothing. ``progress(done, total)``."""
    from distributed import as_completed

    started = time.perf_counter()
    here = machine_fingerprint(threads)
    here_id = fingerprint_id(here)
    unique: dict[CostKey, CostRequest] = {}
    for request in requests:
        unique.setdefault(request_key(request), request)
    known = store.get_many(here_id, list(unique))
    missing = [r for k, r in unique.items() if k not in known]
    workers = check_workers(client, here, threads)
    by_address = {w.address: w for w in workers}
    result = ClusterProfile(here_id, len(unique), len(known), 0, 0.0, workers)
    accepted = [w.address for w in result.accepted]
    if not missing or not accepted:
        if missing:
            result.failures.append(f"{len(missing)} cost(s) not measured: no worker matches "
                                   "this machine's fingerprint")
        result.seconds = time.perf_counter() - started
        return result
    chunks = [missing[i:i + chunk_size] for i in range(0, len(missing), chunk_size)]
    futures = {client.submit(_measure_on_worker, chunk, threads, budget_s, here,
                             workers=accepted, allow_other_workers=False, pure=False,
                             key=_task_key("profile", str(i))): chunk
               for i, chunk in enumerate(chunks)}
    if progress is not None:
        progress(0, len(missing))
    try:
        for future in as_completed(list(futures)):
            chunk = futures[future]
            try:
                address, done = future.result()
            except Exception as error:      # the other chunks still count
                result.failures.append(f"{len(chunk)} cost(s) not measured: "
                                       f"{type(error).__name__}: {error}")
                continue
            if done.refused:    # its fingerprint changed since the check
                worker = by_address.setdefault(address, WorkerReport(address, None, False))
                worker.accepted, worker.reasons = False, done.refused
                worker.fingerprint_id = done.fingerprint_id
                result.failures.append(f"{len(chunk)} cost(s) not measured: {address} no "
                                       "longer matches this machine")
                continue
            store.put_many(here, [(*key, m) for key, m in done.measurements])
            by_address[address].measured += len(done.measurements)
            result.measured += len(done.measurements)
            if progress is not None:
                progress(result.measured, len(missing))
    finally:
        client.cancel([f for f in futures if not f.done()])
    result.workers = sorted(by_address.values(), key=lambda w: w.address)
    result.seconds = time.perf_counter() - started
    return result
