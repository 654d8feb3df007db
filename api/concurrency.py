"""Bounded concurrency for the service: heavy requests in worker processes behind an admission
gate, and profiling jobs in a small job table.

Why processes: the work is CPU-bound Python/NumPy, and memory is measured with `tracemalloc`
and BLAS threads are set with threadpoolctl, both process-global; one task per worker process
keeps each measurement honest. Why a gate: a saturated server answers 503 with Retry-After at
once (or after a short, bounded wait) instead of growing an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import service
from .service import ServiceError, Settings, Source

log = logging.getLogger("convplan.service")
T = TypeVar("T")


class Saturated(Exception):
    """No slot (and no room to wait for one): answer 503 with Retry-After."""


def _spawn() -> Any:
    # fork would copy the server's threads and locks mid-flight; spawn starts clean
    return multiprocessing.get_context("spawn")


class WorkerPool:
    """``slots`` worker processes; at most ``slots`` tasks run, at most ``queue`` requests wait
    (each at most ``wait_s``), everything beyond is refused with `Saturated`."""

    def __init__(self, slots: int, queue: int, wait_s: float) -> None:
        self.slots, self.queue, self.wait_s = slots, queue, wait_s
        self._free = asyncio.Semaphore(slots)
        self.busy = 0
        self.waiting = 0
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ProcessPoolExecutor(self.slots, mp_context=_spawn())
        for _ in range(self.slots):     # start and import in every worker now, not on demand
            self._executor.submit(service.warm_up)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def _acquire(self) -> None:
        if not self._free.locked():
            await self._free.acquire()
            return
        if self.waiting >= self.queue:
            raise Saturated
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait_s):
                await self._free.acquire()
        except TimeoutError:
            raise Saturated from None
        finally:
            self.waiting -= 1

    def _release(self) -> None:
        self.busy -= 1
        self._free.release()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process. The slot is held until the task really ends, even
        if the request that asked for it goes away."""
        assert self._executor is not None, "the pool is not started"
        await self._acquire()
        self.busy += 1
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            log.error("a worker process died; starting a new pool")
            old, self._executor = self._executor, None
            if old is not None:
                old.shutdown(wait=False, cancel_futures=True)
            self.start()
            raise ServiceError(503, "worker_lost", "the worker process handling this request "
                               "died (out of memory?); try again, or a smaller request") from None


# -- jobs ----------------------------------------------------------------------------------------
@dataclass
class Job:
    id: str
    kind: str
    payload: tuple[Source, int | None, float]
    status: str = "queued"
    done: int = 0
    total: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status,
                "progress": {"done": self.done, "total": self.total},
                "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "result": self.result, "error": self.error}


def _profile_main(payload: tuple[Source, int | None, float], settings: Settings,
                  messages: Any) -> None:
    """A job's own process: measure, reporting progress and the outcome through ``messages``."""
    source, threads, budget_s = payload
    try:
        result = service.profile_task(source, threads, budget_s, settings,
                                      lambda done, total: messages.put(("progress", done, total)))
    except ServiceError as error:
        messages.put(("error", {"error": error.code, "detail": error.message}))
    except Exception:
        logging.getLogger("convplan.service").exception("profile job failed")
        messages.put(("error", {"error": "internal_error", "detail": "the job failed"}))
    else:
        messages.put(("done", result))


class JobTable:
    """A bounded table of profiling jobs, run one at a time, each in a fresh process (so a
    shutdown can stop it; the cost store keeps every finished batch)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._current: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="convplan-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        process = self._current
        if process is not None and process.is_alive():
            process.terminate()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, kind: str, payload: tuple[Source, int | None, float]) -> Job:
        with self._lock:
            pending = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if pending >= self.settings.max_pending_jobs:
                raise Saturated
            while len(self._jobs) >= self.settings.max_jobs:
                finished = next((k for k, j in self._jobs.items()
                                 if j.status not in ("queued", "running")), None)
                if finished is None:
                    raise Saturated
                del self._jobs[finished]        # the oldest finished job makes room
            job = Job(uuid.uuid4().hex, kind, payload)
            self._jobs[job.id] = job
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.view() if job is not None else None

    def _update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs.get(job_id)
            if job is not None:
                self._run(job)

    def _run(self, job: Job) -> None:
        context = _spawn()
        messages = context.Queue()
        process = context.Process(target=_profile_main, args=(job.payload, self.settings,
                                                              messages), daemon=True)
        self._update(job, status="running", started_at=time.time())
        self._current = process
        process.start()
        outcome: tuple | None = None
        while outcome is None:
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    process.terminate()
                    outcome = ("cancelled",)
                elif not process.is_alive():
                    with contextlib.suppress(queue.Empty):
                        message = messages.get(timeout=0.5)
                        if message[0] != "progress":
                            outcome = message
                            continue
                    outcome = ("error", {"error": "worker_lost",
                                         "detail": "the profiling process died"})
                continue
            if message[0] == "progress":
                self._update(job, done=message[1], total=message[2])
            else:
                outcome = message
        process.join(timeout=10)
        self._current = None
        now = time.time()
        if outcome[0] == "done":
            measured = outcome[1]["measured"]
            self._update(job, status="succeeded", result=outcome[1], finished_at=now,
                         done=measured, total=measured)
        elif outcome[0] == "cancelled":
            self._update(job, status="cancelled", finished_at=now,
                         error={"error": "cancelled", "detail": "the server shut down"})
        else:
            self._update(job, status="failed", error=outcome[1], finished_at=now)
