"""Limits: the bounds a network must keep, checked before anything the size of a tensor is
allocated (`checking` applies them to a description's inferred shapes, `zoo.check_limits` to a
network built elsewhere), and what this machine can hold."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds a network must keep, all checked on the inferred shapes before any weight is
    drawn (None: no bound)."""

    max_layers: int | None = None
    #: One activation or input tensor.
    max_tensor_bytes: int | None = None
    #: All weights together.
    max_weight_bytes: int | None = None
    #: Weights plus every activation and input (an upper bound of what a run holds at once).
    max_total_bytes: int | None = None

    @classmethod
    def of_this_machine(cls) -> Limits:
        """What this process could sensibly hold: no tensor, and not all the weights, larger
        than `CLI_MAX_BYTES` or a quarter of its memory (physical memory, or a lower
        address-space limit), nor
        weights and activations together larger than half of it. A quarter, because building
        a constant (an ONNX Tile, say) and preparing weights briefly need a few times the bytes
        they keep: a tiny file must not take the machine down before a limit says no."""
        memory = machine_memory_bytes()
        return cls(max_tensor_bytes=min(memory // 4, CLI_MAX_BYTES),
                   max_weight_bytes=min(memory // 4, CLI_MAX_BYTES),
                   max_total_bytes=memory // 2)


#: The CLI's bound on one tensor and on all weights (what any CNN convplan plans needs: VGG's
#: largest weight is 411 MB), whatever the machine's memory.
CLI_MAX_BYTES = 2 << 30


def machine_memory_bytes() -> int:
    """Physical memory, or the process's address-space limit when that is lower."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 1 << 40
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and 0 < soft < memory:
            memory = soft
    except (ImportError, OSError, ValueError):
        pass
    return int(memory)


def size_text(n: int) -> str:
    """A byte count for a message: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
