"""Planning networks on the machine that runs this code: the batch itself, or a Dask worker.

`plan_one` turns one network into one result row and never raises for a bad network (one broken
file must not stop a batch). `plan_in_child` runs it in a child process under a deadline, killed
with everything it started when it overruns (a thread could not be stopped), so one network that
takes too long fails alone. `run_local` plans a list of inputs one after another and gives the
same rows as `convplan.api.batch.cluster.run_dask`.
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from convplan.selector.network import InputShapes, Limits, Network, zoo
from convplan.selector.planning import Plan, PlanRequest, plan_network

from .inputs import Kind, NetworkInput

#: ``on_result(row)`` after each network is done (drives a progress bar, writes its plan).
OnResult = Callable[[dict[str, Any]], None]
#: Seconds between SIGTERM and SIGKILL for a planning process past its deadline.
KILL_GRACE_S = 1.0


def parse_network(name: str, kind: Kind, data: bytes, shapes: InputShapes | None = None
                  ) -> Network:
    """The network in ``data`` within this machine's limits, for ``shapes`` if given, as
    `convplan plan` loads one (NetworkError when it is not one, or is too large)."""
    limits = Limits.of_this_machine()
    if kind == "builtin":
        if shapes:
            return zoo.load_network(data.decode(), limits, input_shapes=shapes)
        return zoo.check_limits(zoo.builtin(data.decode()), limits)
    if kind == "json":
        return zoo.description_network(data, limits, shapes)
    return zoo.onnx_network(data, limits, name=name, input_shapes=shapes)


def result_row(name: str, status: str, *, error: str | None = None,
               plan: Plan | None = None, seconds: float = 0.0) -> dict[str, Any]:
    """One network's row of the summary, the same wherever it was planned."""
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


def unreadable_row(item: NetworkInput) -> dict[str, Any]:
    """The row of an input whose file could not be read."""
    return result_row(item.name, "error", error=item.error)


def plan_one(name: str, kind: Kind, data: bytes, request: PlanRequest,
             shapes: InputShapes | None = None) -> dict[str, Any]:
    """Parse (for ``shapes``, if given) and plan one network (here, or on a worker): a result
    row with its `Plan` under ``"plan"``, or status "error" and the message. Never raises for
    a bad network or an infeasible cap; the cost store is ``request.db`` or this process's
    default."""
    started = time.perf_counter()
    try:
        network = parse_network(name, kind, data, shapes)
        plan = plan_network(network, request)
    except ValueError as error:     # NetworkError, PlanningError, a bad store
        message = str(error)
    except sqlite3.Error as error:
        message = f"cost store: {error}"
    except Exception as error:      # one network's bug must not end the batch
        message = f"{type(error).__name__}: {error}"
    else:
        return result_row(name, "planned", plan=plan, seconds=time.perf_counter() - started)
    return result_row(name, "error", error=message, seconds=time.perf_counter() - started)


def _child_main() -> None:
    """The planning child process of `plan_in_child`: the job from stdin (pickled), the row
    to the file named by argv[1] (pickled), nothing else on stdout."""
    name, kind, data, request, shapes = pickle.load(sys.stdin.buffer)
    row = plan_one(name, kind, data, request, shapes)
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
                  timeout_s: float, shapes: InputShapes | None = None) -> dict[str, Any]:
    """`plan_one` in a child process (a new Python, not a fork: it works inside a daemonic
    Dask worker too) that is killed, with everything it started, after ``timeout_s`` seconds:
    then the row says the network timed out."""
    started = time.perf_counter()
    handle, result = tempfile.mkstemp(prefix="convplan-batch-", suffix=".pickle")
    os.close(handle)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c",
             "from convplan.api.batch.local import _child_main; _child_main()", result],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            assert process.stdin is not None
            try:
                process.stdin.write(pickle.dumps((name, kind, data, request, shapes)))
                process.stdin.close()
            except BrokenPipeError:
                pass
            process.wait(timeout=max(0.0, timeout_s - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            _stop_group(process)
            return result_row(name, "error",
                              error=f"timed out: not planned within {timeout_s:g} s "
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
            return result_row(name, "error", error=f"the planning process died ({how})",
                              seconds=time.perf_counter() - started)
        return row
    finally:
        Path(result).unlink(missing_ok=True)


def run_local(inputs: Sequence[NetworkInput], request: PlanRequest,
              on_result: OnResult | None = None, timeout_s: float | None = None,
              shapes: InputShapes | None = None) -> list[dict[str, Any]]:
    """Plan every input on this machine, one after another, each for ``shapes`` if given;
    rows in input order. With ``timeout_s``, each in a child process killed after that many
    seconds (its row then says it timed out); without, in this process."""
    rows = []
    for item in inputs:
        if item.error:
            row = unreadable_row(item)
        elif timeout_s is None:
            row = plan_one(item.name, item.kind, item.data, request, shapes)
        else:
            row = plan_in_child(item.name, item.kind, item.data, request, timeout_s, shapes)
        row["source"] = item.source
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows
