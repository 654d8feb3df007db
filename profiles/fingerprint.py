"""Which machine a measurement belongs to.

Measured times are only comparable on the same CPU, BLAS build and kernels, thread count and
software versions; the cost store keys every row by a hash of exactly these facts, so a number
measured elsewhere (or before an upgrade) is never mistaken for one measured here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import re
from typing import Any

import numpy as np

from convplan.kernels import blas


def _cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith(("model name", "Hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _convplan_version() -> str:
    try:
        return importlib.metadata.version("convplan")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def kernels_digest() -> str:
    """A hash of the kernels' source: a changed algorithm or operator makes earlier timings
    stale even when the version number did not move (between releases, in development)."""
    from convplan import kernels

    root = pathlib.Path(kernels.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _blas() -> dict[str, str]:
    """Library, version and the kernel family it picked (not its current thread count: the
    fingerprint's own ``threads`` says under how many threads a measurement ran)."""
    found = blas.info()
    match = re.search(r"OpenBLAS\s+(\S+)", found["config"])
    return {"name": found["library"], "version": match.group(1) if match else found["config"],
            "corename": found["corename"]}


def machine_fingerprint(threads: int) -> dict[str, Any]:
    """The facts a measurement under ``threads`` BLAS threads depends on (JSON-able)."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "blas": _blas(),
        "threads": threads,
        "convplan": _convplan_version(),
        "kernels": kernels_digest(),
        "numpy": np.__version__,
    }


def canonical_json(fp: dict[str, Any]) -> str:
    """One spelling per fingerprint: sorted keys, no spaces."""
    return json.dumps(fp, sort_keys=True, separators=(",", ":"))


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short stable name of ``fp``: the first 16 hex digits of its canonical JSON's SHA-256."""
    return hashlib.sha256(canonical_json(fp).encode()).hexdigest()[:16]
