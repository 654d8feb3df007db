"""Bounded concurrency for the service: heavy requests in worker processes behind an admission
gate, under a deadline each, and profiling jobs in a small job table.

Why processes: the work is CPU-bound Python/NumPy, and memory is measured with `tracemalloc`
and BLAS threads are set with threadpoolctl, both process-global; one task per worker process
keeps each measurement honest. A process can also be killed, which a thread cannot: a task that
overruns its deadline costs its worker (killed and replaced), never the slot. Why a gate: a
saturated server answers 503 with Retry-After at once (or after a short, bounded wait) instead
of growing an unbounded queue.

Every worker limits its own address space (``RLIMIT_AS``) at start, so a request that blows up
gets a MemoryError (answered 422) instead of taking the machine, and dies with the server
(``PR_SET_PDEATHSIG``), so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from convplan.settings import ServiceSettings

from . import work as service
from .schemas import ErrorBody, Job, ProfileResult, Progress
from .work import ServiceError, Source

log = logging.getLogger("convplan.service")
T = TypeVar("T")

#: Seconds a new worker may take to start and import before it counts as failed.
STARTUP_TIMEOUT_S = 60.0
#: Seconds between the supervisor's checks (dead idle workers, stuck kills, start-ups).
SUPERVISE_EVERY_S = 0.5
#: A task's own deadline (handed to it) comes this much before the pool kills it, so it can
#: still answer with what it has.
TASK_MARGIN_S = 0.5
#: What a new worker must be able to allocate under its memory limit before it says ready.
PROBE_BYTES = 64 << 20
#: Seconds before retrying to start a worker after ``n`` failed starts: min(cap, base * 2**n).
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 30.0


class Saturated(Exception):
    """No slot (and no room to wait for one): answer 503 with Retry-After."""


def _spawn() -> Any:
    # fork would copy the server's threads and locks mid-flight; spawn starts clean
    return multiprocessing.get_context("spawn")


# -- inside a worker process ---------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans, even if the server
    itself is killed); exit at once if the parent is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)     # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def limit_memory(limit_bytes: int | None) -> None:
    """Cap this process's address space at ``limit_bytes`` (None or 0: leave it)."""
    if not limit_bytes:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _prepare_worker(parent: int, memory_bytes: int | None) -> None:
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the server decides what happens to its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_memory(memory_bytes)


def _worker_main(conn: Any, parent: int, memory_bytes: int | None) -> None:
    """A worker: say ready, then run one task per message until told to stop (None) or the
    pipe closes. A task that ran out of memory ends the worker after its answer, so the next
    task starts in a clean process."""
    _prepare_worker(parent, memory_bytes)
    try:                                # a limit that leaves no room to work: fail now
        import numpy as np

        probe = np.ones(PROBE_BYTES // 8)
        float(probe[:256] @ probe[:256])
        del probe
    except MemoryError:
        conn.send(("failed", f"a worker cannot allocate {PROBE_BYTES >> 20} MiB under its "
                             f"memory limit of {memory_bytes} bytes (CONVPLAN_WORKER_MEMORY)"))
        return
    conn.send(("ready", service.warm_up()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args, kwargs = message
        recycle = False
        try:
            reply: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except ServiceError as error:
            reply = ("service_error", (error.status, error.code, error.message))
            recycle = error.code == "too_large"
        except MemoryError:
            reply = ("service_error", (422, "too_large", "the request needs more memory than "
                                       "this server allows a request; use a smaller network "
                                       "or input"))
            recycle = True
        except BaseException as error:     # answered as the app's 500
            log.exception("a task failed in a worker")
            reply = ("error", RuntimeError(f"{type(error).__name__} in a worker"))
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("service_error", (422, "too_large", "the answer is too large to send")))
            recycle = True
        except Exception as error:     # an answer that cannot be pickled
            conn.send(("error", RuntimeError(f"unsendable result: {type(error).__name__}")))
        if recycle:
            return


def validate_task(source: Source, settings: ServiceSettings, deadline: float | None = None) -> str:
    """Build the network a request names (as a plan would): its name, or the ServiceError."""
    with service.client_errors():
        return service.load(source, settings).name


# -- the pool ------------------------------------------------------------------------------------
class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context: Any, memory_bytes: int | None) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, name="convplan-worker",
                                       args=(child, os.getpid(), memory_bytes), daemon=True)
        self.process.start()
        child.close()
        self.pid: int = self.process.pid
        self.started = time.monotonic()
        self.state = "starting"         # starting, idle, busy, dead
        self.deadline: float | None = None
        self.killed_at: float | None = None
        self.waiter: asyncio.Future | None = None   # set when its answer is readable

    def alive(self) -> bool:
        return self.state != "dead" and self.process.is_alive()

    def kill(self, grace_s: float) -> None:
        """SIGTERM now, SIGKILL after ``grace_s`` (the supervisor finishes it)."""
        if self.killed_at is None:
            self.killed_at = time.monotonic()
            with contextlib.suppress(OSError, AttributeError):
                self.process.terminate()
        if grace_s <= 0 or time.monotonic() - self.killed_at >= grace_s:
            with contextlib.suppress(OSError, AttributeError):
                self.process.kill()

    def reap(self) -> bool:
        """Whether the process is gone (joined; no zombie left)."""
        self.process.join(timeout=0)
        return self.process.exitcode is not None


class WorkerPool:
    """``slots`` worker processes; at most ``slots`` tasks run, at most ``queue`` requests wait
    (each at most ``wait_s``), everything beyond is refused with `Saturated`. A task gets
    ``timeout_s`` seconds (None: no deadline); a worker that overruns it, dies or exceeds
    ``memory_bytes`` is replaced by a fresh one."""

    def __init__(self, slots: int, queue: int, wait_s: float, *, timeout_s: float | None = None,
                 memory_bytes: int | None = None, grace_s: float = 1.0) -> None:
        self.slots, self.queue, self.wait_s = slots, queue, wait_s
        self.timeout_s, self.memory_bytes, self.grace_s = timeout_s, memory_bytes, grace_s
        self._free = asyncio.Semaphore(slots)
        self.busy = 0
        self.waiting = 0
        self.replaced = 0
        self.start_failures = 0         # consecutive workers that died before ready
        self.last_failure = ""
        self._next_start = 0.0          # no start before this instant (back-off after failures)
        self._workers: list[_Worker] = []
        self._dying: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task | None = None
        self._context = _spawn()
        self.closing = False
        self.started = False

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> WorkerPool:
        """The pool the service's limits describe (CONVPLAN_CONCURRENCY, _QUEUE ...)."""
        return cls(settings.concurrency, settings.queue, settings.queue_timeout,
                   timeout_s=settings.request_timeout, memory_bytes=settings.worker_memory_limit,
                   grace_s=settings.kill_grace)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker now (they import in parallel) and the supervisor; call it on the
        event loop that will use the pool."""
        self._loop = asyncio.get_running_loop()
        self.closing, self.started = False, True
        for _ in range(self.slots):
            self._add_worker()
        self._supervisor = self._loop.create_task(self._supervise())

    def shut_down(self) -> None:
        """Kill every worker now (the server is stopping): running tasks answer 503."""
        self.closing = True
        for worker in list(self._workers):
            self._retire(worker, grace_s=0)

    def stop(self) -> None:
        """Stop the supervisor and every worker, bounded: SIGTERM, SIGKILL after the grace."""
        self.closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        for worker in list(self._workers):
            if worker.state == "idle":
                with contextlib.suppress(OSError, ValueError):
                    worker.conn.send(None)      # a clean exit when it is idle
            self._retire(worker, grace_s=self.grace_s)
        deadline = time.monotonic() + self.grace_s + 2
        while self._dying and time.monotonic() < deadline:
            for worker in list(self._dying):
                worker.kill(self.grace_s)
                if worker.reap():
                    self._dying.remove(worker)
            time.sleep(0.02)
        self.started = False

    # -- workers ---------------------------------------------------------------------------------
    def _start_failed(self) -> None:
        self.start_failures += 1
        self._next_start = time.monotonic() + min(
            BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (self.start_failures - 1))

    def _add_worker(self) -> None:
        if self.closing or time.monotonic() < self._next_start:
            return                      # (the supervisor starts it later)
        assert self._loop is not None
        try:
            worker = _Worker(self._context, self.memory_bytes)
        except Exception as error:      # fork limits, out of memory ...: the supervisor retries
            log.exception("cannot start a worker process")
            self.last_failure = f"cannot start a worker process: {error}"
            self._start_failed()
            return
        self._workers.append(worker)
        self._loop.add_reader(worker.conn.fileno(), self._on_ready, worker)

    def _on_ready(self, worker: _Worker) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(worker.conn.fileno())
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            message = None
        if worker.state != "starting":
            return
        if not message or message[0] != "ready":
            self.last_failure = message[1] if message else (
                f"a worker process died while starting (exit code {worker.process.exitcode})")
            log.error("%s", self.last_failure)
            self._start_failed()
            self._retire(worker, grace_s=0)
            return
        self.start_failures = 0
        worker.state = "idle"
        self._idle.put_nowait(worker)

    def _retire(self, worker: _Worker, grace_s: float) -> None:
        """Take ``worker`` out of service (killing it) and, unless closing, start another."""
        if worker in self._workers:
            self._workers.remove(worker)
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(worker.conn.fileno())
            was_dead = worker.state == "dead"
            worker.state = "dead"
            if worker.waiter is not None and not worker.waiter.done():
                worker.waiter.set_exception(EOFError())     # its task ends now
            if not was_dead:
                worker.kill(grace_s)
                self._dying.append(worker)
            with contextlib.suppress(OSError):
                worker.conn.close()
            if not self.closing:
                self.replaced += 1
                self._add_worker()

    async def _supervise(self) -> None:
        """Replace idle workers that died, finish kills, retry failed start-ups."""
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.state in ("idle", "starting") and not worker.process.is_alive():
                    log.error("worker %s died while %s (exit code %s); replacing it",
                              worker.pid, worker.state, worker.process.exitcode)
                    if worker.state == "starting":
                        self.last_failure = (f"a worker process died while starting (exit "
                                             f"code {worker.process.exitcode})")
                        self._start_failed()
                    self._retire(worker, grace_s=0)
                elif worker.state == "starting" and now - worker.started > STARTUP_TIMEOUT_S:
                    log.error("worker %s did not start within %s s", worker.pid,
                              STARTUP_TIMEOUT_S)
                    self.last_failure = f"a worker did not start within {STARTUP_TIMEOUT_S} s"
                    self._start_failed()
                    self._retire(worker, grace_s=0)
            for worker in list(self._dying):
                worker.kill(self.grace_s)
                if worker.reap():
                    self._dying.remove(worker)
            missing = self.slots - len(self._workers)
            if missing > 0 and not self.closing:
                for _ in range(missing):    # a start that failed outright, retried here
                    self._add_worker()

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> tuple[bool, str, dict[str, int]]:
        """(healthy, why not, counts). Healthy while at least one worker can make progress:
        idle and alive, busy within its deadline, or starting within its start-up time."""
        now = time.monotonic()
        counts = {"idle": 0, "busy": 0, "starting": 0, "overdue": 0, "dead": 0}
        for worker in self._workers:
            alive = worker.process.is_alive()
            if not alive:
                counts["dead"] += 1
            elif worker.state == "busy":
                overdue = worker.deadline is not None and \
                    now > worker.deadline + self.grace_s + 2
                counts["overdue" if overdue else "busy"] += 1
            elif worker.state == "starting":
                late = now - worker.started > STARTUP_TIMEOUT_S
                counts["dead" if late else "starting"] += 1
            else:
                counts["idle"] += 1
        usable = counts["idle"] + counts["busy"] + counts["starting"]
        if not self.started or self.closing:
            return False, "the server is shutting down", counts
        if usable == 0:
            if counts["overdue"]:
                return False, (f"all {counts['overdue']} worker(s) are past their deadline "
                               "and could not be stopped"), counts
            return False, (f"no worker process can serve: the last {self.start_failures} "
                           f"start(s) failed ({self.last_failure})"), counts
        return True, "", counts

    # -- admission -------------------------------------------------------------------------------
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

    async def _take_worker(self) -> _Worker:
        """An idle live worker, waiting for a replacement to start if need be (bounded, and
        not at all while workers fail to start)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.closing:
                raise ServiceError(503, "shutting_down", "the server is shutting down")
            healthy, why, _ = self.health()
            if time.monotonic() > deadline or (not healthy and self.start_failures):
                raise ServiceError(503, "no_worker", f"no worker process is available: {why}")
            try:
                async with asyncio.timeout(SUPERVISE_EVERY_S):
                    worker = await self._idle.get()
            except TimeoutError:
                continue
            if worker.state == "idle" and worker.process.is_alive():
                return worker
            if worker in self._workers:     # died while idle: replace, take the next
                self._retire(worker, grace_s=0)

    async def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None,
                  pass_deadline: bool = False) -> T:
        """``fn(*args)`` in a worker process, within ``timeout_s`` (default: the pool's).
        With ``pass_deadline`` it is called with ``deadline=`` (a `time.monotonic` instant a
        little before the kill) so it can finish early with what it has. The slot is held until
        the task ends or its worker is killed, even if the request that asked goes away."""
        if not self.started:
            raise RuntimeError("the pool is not started")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        await self._acquire()
        self.busy += 1
        try:
            worker = await self._take_worker()
            return await self._run_on(worker, fn, args, timeout, pass_deadline)
        finally:
            self.busy -= 1
            self._free.release()

    async def _run_on(self, worker: _Worker, fn: Callable[..., T], args: tuple,
                      timeout: float | None, pass_deadline: bool) -> T:
        assert self._loop is not None
        now = time.monotonic()
        worker.state = "busy"
        worker.deadline = None if timeout is None else now + timeout
        kwargs = {}
        if pass_deadline and timeout is not None:
            kwargs["deadline"] = now + max(0.0, timeout - TASK_MARGIN_S)
        try:
            reply = await self._exchange(worker, (fn, args, kwargs), timeout)
        except TimeoutError:
            log.error("a %s task overran its deadline of %s s; killing worker %s",
                      getattr(fn, "__name__", "task"), timeout, worker.pid)
            self._retire(worker, self.grace_s)
            raise ServiceError(504, "deadline_exceeded", (
                f"the request did not finish within its deadline of {timeout:g} s "
                "(CONVPLAN_REQUEST_TIMEOUT); ask for less (a smaller network, fewer "
                "repeats, a lower time limit or budget)")) from None
        except (EOFError, OSError):
            if self.closing:
                self._retire(worker, grace_s=0)
                raise ServiceError(503, "shutting_down", "the server is shutting down; the "
                                   "request was stopped") from None
            code = worker.process.exitcode
            if code is None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(worker.process.join, 1)
                code = worker.process.exitcode
            log.error("worker %s died during a task (exit code %s); replacing it",
                      worker.pid, code)
            self._retire(worker, grace_s=0)
            how = f"killed by signal {-code}" if code is not None and code < 0 else \
                f"exit code {code}"
            raise ServiceError(503, "worker_died", (
                f"the worker process handling this request died ({how}); it was replaced: "
                "try again, or a smaller request")) from None
        except BaseException:       # cancelled (server stopping, request gone), unpicklable
            self._retire(worker, grace_s=0)
            raise
        kind, value = reply
        if kind == "service_error" and value[1] == "too_large":
            self._retire(worker, self.grace_s)  # it exits by itself: start a fresh one
        elif worker.state == "busy":
            worker.state, worker.deadline = "idle", None
            self._idle.put_nowait(worker)
        if kind == "ok":
            return value
        if kind == "service_error":
            raise ServiceError(*value)
        raise value

    async def _exchange(self, worker: _Worker, message: tuple, timeout: float | None) -> Any:
        """Send ``message`` to ``worker`` and read its answer within ``timeout`` seconds;
        TimeoutError, or EOFError / OSError when the worker died."""
        assert self._loop is not None
        readable = worker.waiter = self._loop.create_future()
        fd = worker.conn.fileno()
        try:
            async with asyncio.timeout(timeout):
                # The pipe is blocking for the threads that send and receive whole messages;
                # an event loop's reader may make it non-blocking (uvloop does), and then a
                # message larger than the socket buffer (a 500 KB upload) fails half-sent.
                os.set_blocking(fd, True)
                await asyncio.to_thread(worker.conn.send, message)
                self._loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
                await readable
                self._loop.remove_reader(fd)
                os.set_blocking(fd, True)
                return await asyncio.to_thread(worker.conn.recv)
        finally:
            worker.waiter = None
            if worker.state != "dead":      # (a retired worker's fd may be reused already)
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(fd)


# -- jobs ----------------------------------------------------------------------------------------
#: What a profiling job measures: the network, the threads (None: all cores), the budget.
ProfilePayload = tuple[Source, int | None, float]


def _profile_main(payload: ProfilePayload, settings: ServiceSettings,
                  messages: Any, parent: int, deadline: float | None) -> None:
    """A job's own process: measure, reporting progress and the outcome through ``messages``."""
    _prepare_worker(parent, settings.worker_memory_limit)
    source, threads, budget_s = payload
    try:
        result = service.profile_task(source, threads, budget_s, settings,
                                      lambda done, total: messages.put(("progress", done, total)),
                                      deadline=deadline)
    except ServiceError as error:
        messages.put(("error", ErrorBody(error=error.code, detail=error.message)))
    except MemoryError:
        messages.put(("error", ErrorBody(error="too_large", detail="the job ran out of memory")))
    except Exception:
        logging.getLogger("convplan.service").exception("profile job failed")
        messages.put(("error", ErrorBody(error="internal_error", detail="the job failed")))
    else:
        messages.put(("done", result))


class JobTable:
    """A bounded table of profiling jobs (their `Job` documents), run one at a time, each in a
    fresh process (so a shutdown or the job deadline can stop it; the cost store keeps every
    finished batch)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, ProfilePayload] | None] = queue.Queue()
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
            process.join(timeout=self.settings.kill_grace)
            if process.is_alive():
                process.kill()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.kill_grace + 3)

    def check_room(self) -> None:
        """Saturated if a job submitted now would be refused for the pending bound."""
        with self._lock:
            pending = sum(j.pending for j in self._jobs.values())
        if pending >= self.settings.max_pending_jobs:
            raise Saturated

    def submit(self, payload: ProfilePayload) -> Job:
        """Queue a profiling job: a copy of its `Job` (Saturated if the table is full)."""
        with self._lock:
            pending = sum(j.pending for j in self._jobs.values())
            if pending >= self.settings.max_pending_jobs:
                raise Saturated
            while len(self._jobs) >= self.settings.max_jobs:
                finished = next((k for k, j in self._jobs.items() if not j.pending), None)
                if finished is None:
                    raise Saturated
                del self._jobs[finished]        # the oldest finished job makes room
            job = Job(id=uuid.uuid4().hex, kind="profile")
            self._jobs[job.id] = job
            created = job.model_copy(deep=True)
        self._queue.put((job.id, payload))
        return created

    def get(self, job_id: str) -> Job | None:
        """A copy of the job's document as it is now (None: no such job, or dropped)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy(deep=True) if job is not None else None

    def _update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            queued = self._queue.get()
            if queued is None:
                return
            job_id, payload = queued
            with self._lock:
                job = self._jobs.get(job_id)
            if job is not None:
                self._run(job, payload)

    def _run(self, job: Job, payload: ProfilePayload) -> None:
        context = _spawn()
        messages = context.Queue()
        timeout = self.settings.job_timeout
        started = time.monotonic()
        deadline = started + timeout
        process = context.Process(target=_profile_main, name="convplan-job",
                                  args=(payload, self.settings, messages, os.getpid(),
                                        deadline - max(1.0, 0.05 * timeout)), daemon=True)
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
                elif time.monotonic() > deadline:
                    log.error("profile job %s overran its deadline of %s s; killing it",
                              job.id, timeout)
                    process.terminate()
                    outcome = ("error", ErrorBody(error="deadline_exceeded", detail=(
                        f"the job did not finish within {timeout:g} s (CONVPLAN_JOB_TIMEOUT); "
                        "what it measured is kept in the cost store")))
                elif not process.is_alive():
                    with contextlib.suppress(queue.Empty):
                        message = messages.get(timeout=0.5)
                        if message[0] != "progress":
                            outcome = message
                            continue
                    outcome = ("error", ErrorBody(error="worker_died",
                                                  detail="the profiling process died (exit "
                                                         f"code {process.exitcode})"))
                continue
            if message[0] == "progress":
                self._update(job, progress=Progress(done=message[1], total=message[2]))
            else:
                outcome = message
        process.join(timeout=self.settings.kill_grace)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        self._current = None
        now = time.time()
        if outcome[0] == "done":
            result: ProfileResult = outcome[1]
            self._update(job, status="succeeded", result=result, finished_at=now,
                         progress=Progress(done=result.measured,
                                           total=result.measured + result.unmeasured))
        elif outcome[0] == "cancelled":
            self._update(job, status="cancelled", finished_at=now,
                         error=ErrorBody(error="cancelled", detail="the server shut down"))
        else:
            self._update(job, status="failed", error=outcome[1], finished_at=now)
