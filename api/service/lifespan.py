"""The app's life: worker processes and the job table start with the server and stop with it,
bounded (SIGTERM, then SIGKILL after the grace); SIGTERM and SIGINT stop requests in flight at
once instead of holding the shutdown until their deadline."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
from fastapi import FastAPI


@contextmanager
def on_stop_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` (then the handler already installed: uvicorn's) on SIGTERM and SIGINT, so
    requests in flight end at once instead of holding the shutdown until their deadline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    saved = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(stop)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:    # the default: die of it, as without us
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            if signal.getsignal(sig) is not previous:   # leave a handler set since alone
                signal.signal(sig, previous)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the app's pool and job table (``app.state``) on the server's loop; stop both."""
    pool, jobs = app.state.pool, app.state.jobs
    pool.start()
    jobs.start()
    try:
        with on_stop_signals(pool.shut_down):
            yield
    finally:
        pool.stop()         # bounded: SIGTERM, SIGKILL after the grace
        await anyio.to_thread.run_sync(jobs.stop)
