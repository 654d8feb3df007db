"""The machine's measuring lock: one process measures at a time.

Two measurements at once on one machine time each other's load (two service workers, a
service beside `convplan profile`), so the profiler holds an exclusive ``fcntl.flock`` on a
lock file beside the cost store (``<db>.measuring.lock``) while it measures. flock is released
by the kernel when its holder dies, so a killed run never leaves the lock held. The file stays
(deleting a lock file races with its next holder). Where there is no ``fcntl`` the lock is a
no-op.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

#: How often a waiter with a deadline tries again.
POLL_S = 0.02


def lock_path(db: str | os.PathLike[str]) -> Path:
    """The measuring lock file of the cost store ``db``."""
    db = Path(db)
    return db.with_name(db.name + ".measuring.lock")


@contextlib.contextmanager
def measuring_lock(db: str | os.PathLike[str], deadline: float | None = None
                   ) -> Iterator[bool]:
    """Hold the measuring lock of the cost store ``db`` within the block: yields True once it
    is held, or False (not held) if ``deadline`` (a `time.monotonic` instant; None: wait as
    long as it takes) came first. OSError if the lock file cannot be opened."""
    try:
        import fcntl
    except ImportError:         # not POSIX: nothing to lock with
        yield True
        return
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        yield False
                        return
                    time.sleep(min(POLL_S, left))
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
