"""Planning on a Dask cluster: connecting to one (or starting a local one), and `run_dask`.

A worker is sent each network's bytes (and a name), never a path, and sends back its result row
with the `Plan` (pickled); the client writes every file. `run_dask` gives the same rows as
`convplan.api.batch.local.run_local`. Dask is imported only when a cluster is used.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from convplan.selector.network import InputShapes
from convplan.selector.planning import PlanRequest

from .errors import BatchError
from .inputs import Kind, NetworkInput
from .local import OnResult, plan_in_child, plan_one, result_row, unreadable_row

if TYPE_CHECKING:
    from distributed import Client

#: Network files larger than this are scattered to the cluster once instead of riding in the task.
SCATTER_BYTES = 1 << 20


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


def _plan_on_worker(name: str, kind: Kind, data: bytes, request: PlanRequest,
                    timeout_s: float | None = None, shapes: InputShapes | None = None
                    ) -> dict[str, Any]:
    """`plan_one` on a Dask worker (in a child process under ``timeout_s``, if given), saying
    which worker it was."""
    from distributed import get_worker

    row = plan_one(name, kind, data, request, shapes) if timeout_s is None else \
        plan_in_child(name, kind, data, request, timeout_s, shapes)
    row["worker"] = get_worker().address
    return row


def run_dask(inputs: Sequence[NetworkInput], request: PlanRequest, client: Client,
             on_result: OnResult | None = None, timeout_s: float | None = None,
             shapes: InputShapes | None = None) -> list[dict[str, Any]]:
    """Plan every input on the Dask cluster behind ``client`` (the bytes travel, not paths,
    and the ``shapes`` to load each for);
    rows in input order. A task that fails on the cluster (a worker lost, say) becomes an error
    row like any bad network; with ``timeout_s`` each network is planned in a child process of
    its worker, killed after that many seconds."""
    from distributed import as_completed

    rows: list[dict[str, Any] | None] = [None] * len(inputs)
    futures = {}
    for i, item in enumerate(inputs):
        if item.error:
            rows[i] = {**unreadable_row(item), "source": item.source}
            if on_result is not None:
                on_result(rows[i])
            continue
        data: Any = item.data
        if len(data) > SCATTER_BYTES:   # large files go to the cluster once, outside the graph
            data = client.scatter(data, hash=False)
        future = client.submit(_plan_on_worker, item.name, item.kind, data, request, timeout_s,
                               shapes, key=f"convplan-plan-{item.name}-{uuid.uuid4().hex[:8]}",
                               pure=False, retries=0)
        futures[future] = i
    try:
        for future in as_completed(list(futures)):
            i = futures[future]
            try:
                row = future.result()
            except Exception as error:      # reported as this network's error
                row = result_row(inputs[i].name, "error",
                                 error=f"failed on the cluster: {type(error).__name__}: {error}")
            row["source"] = inputs[i].source
            rows[i] = row
            if on_result is not None:
                on_result(row)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return [r for r in rows if r is not None]
