"""The static arena: every buffer a program's run writes, at an offset planned offline.

A lowered program knows, before it runs, every buffer it will need and for which steps: the
activations its steps produce, the layout copies its transform steps make and the workspaces of
its convolutions and operators. `buffers` lists them as intervals of step indices, `place` gives
each an offset in one arena so that buffers alive at a common step never share a byte, and
`check_layout` verifies a layout (the compiled-plan loader runs it on offsets it did not plan).

In the arena: every buffer-owning tensor a step produces (views and in-place outputs share their
first input's buffer, which lives until the last tensor holding it is released), every layout
copy and every declared workspace: each named shape of a convolution's or an operator's
`workspace_shapes` (the operator's in the layout its step stores it in), one buffer each, as the
run takes them (``workspace=``).

Outside it: the program's inputs (the caller's arrays); the buffers holding a program output,
allocated afresh each run because the caller keeps them (`output_bytes`); and what no placement
can hold: the ufunc buffers and interpreter objects `run_overhead_bytes` allows for, tap tables,
array objects. Those stay allowances of the memory model.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:       # the executor imports this module to lay out its arena
    from .executor import Program

#: Every arena buffer starts at a multiple of this many bytes (a cache line; what SIMD kernels
#: and BLAS want), and its size is rounded up to one.
ALIGNMENT = 64

#: Local-search rounds `place` spends, at most, when no ordering reached the lower bound.
SEARCH_ITERATIONS = 200
#: And the comparisons with placed buffers the search may make in all (a quarter of a second
#: here): a bound on its time that, unlike a clock, gives the same layout on every machine.
#: Networks rarely come near it (DenseNet-121 with im2col: 0.2 million); dense random
#: interval sets do.
SEARCH_COMPARISONS = 1_000_000


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of `ALIGNMENT`."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def allocation_bytes(size: int) -> int:
    """Bytes allocated for an arena of ``size``: one more `ALIGNMENT`, so that its start can be
    moved to an aligned address (NumPy guarantees only 16)."""
    return size + ALIGNMENT


@dataclass(frozen=True)
class Buffer:
    """One arena buffer: alive from the step that first writes it to the step that last reads
    it, both included (a workspace: one step)."""

    key: str            # the tensor owning it, or f"{step}#{workspace name}"
    nbytes: int         # a multiple of ALIGNMENT
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.nbytes < 0 or self.nbytes % ALIGNMENT:
            raise ValueError(f"buffer {self.key!r}: {self.nbytes} bytes is not a non-negative "
                             f"multiple of {ALIGNMENT}")
        if not 0 <= self.first <= self.last:
            raise ValueError(f"buffer {self.key!r}: steps {self.first}..{self.last} are not an "
                             "interval of step indices")


@dataclass(frozen=True)
class ArenaLayout:
    """Where every buffer lives in an arena of ``size`` bytes."""

    size: int
    #: The largest sum of buffers alive at one step: no placement can be smaller.
    max_live_bytes: int
    offsets: dict[str, int]     # Buffer.key -> offset
    #: The ordering that won ("greedy-size", "greedy-breadth", "lifetime"), "+search" when the
    #: local search improved on it.
    placement: str


# -- what a program needs --------------------------------------------------------------------
@dataclass(frozen=True)
class OutputBuffer:
    """A buffer holding a program output (or a kept tensor), outside the arena: allocated
    afresh by each run at step ``first``, the one that writes it first (an output reached
    through views or in-place steps is written before the step that produces it)."""

    key: str            # the tensor owning it
    nbytes: int         # not aligned: a plain allocation
    first: int


def buffers(program: Program, itemsize: int = 4) -> list[Buffer]:
    """Every arena buffer of ``program``, in the order its steps first write them."""
    return _walk(program, itemsize)[0]


def output_buffers(program: Program, itemsize: int = 4) -> list[OutputBuffer]:
    """The buffers holding the program's outputs, in the order its steps first write them (an
    output that is a view of a program input is the caller's array and has none)."""
    return _walk(program, itemsize)[1]


def output_bytes(program: Program, itemsize: int = 4) -> int:
    """Bytes of the buffers holding the program's outputs: allocated per run, outside the
    arena."""
    return sum(b.nbytes for b in output_buffers(program, itemsize))


def _walk(program: Program, itemsize: int) -> tuple[list[Buffer], list[OutputBuffer]]:
    shapes = program.shapes
    root: dict[str, str | None] = dict.fromkeys(program.inputs)   # tensor -> buffer it is in
    raw: dict[str, int] = {}           # buffer key -> unaligned bytes
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    unreleased: dict[str, int] = {}    # buffer key -> tensors holding it not yet released

    def add(key: str, nbytes: int, step: int) -> None:
        if key in raw:
            raise ValueError(f"two arena buffers are named {key!r}: a tensor and a workspace "
                             "(\"step#name\")")
        raw[key], first[key], last[key], unreleased[key] = nbytes, step, step, 0

    for i, step in enumerate(program.steps):
        for t in step.outputs:
            if step.aliases_input:
                root[t] = root[step.inputs[0]]
            else:
                root[t] = t
                add(t, int(np.prod(shapes[t], dtype=np.int64)) * itemsize, i)
            if root[t] is not None:
                unreleased[root[t]] += 1
        for name, nbytes in _workspaces(program, i, itemsize).items():
            add(f"{step.name}#{name}", nbytes, i)
        for t in step.release:
            key = root[t]
            if key is not None:
                unreleased[key] -= 1
                last[key] = i
    end = len(program.steps) - 1
    for key, holders in unreleased.items():
        if holders:                     # never released: the executor holds it to the end
            last[key] = end
    kept = {root[t] for t in program.outputs} - {None}
    arena = [Buffer(key, aligned(nbytes), first[key], last[key])
             for key, nbytes in raw.items() if key not in kept]
    outputs = [OutputBuffer(key, nbytes, first[key]) for key, nbytes in raw.items()
               if key in kept]
    return arena, outputs


def _workspaces(program: Program, i: int, itemsize: int) -> dict[str, int]:
    """The arena workspaces of step ``i``: name -> unaligned bytes."""
    step = program.steps[i]
    if step.kind == "conv":
        assert step.spec is not None
        itemsize = step.spec.itemsize
    return {name: int(np.prod(shape, dtype=np.int64)) * itemsize
            for name, shape in step.workspace_shapes(program.shapes).items()}


def live_bytes(buffers: Sequence[Buffer]) -> list[int]:
    """The sum of buffers alive at each step index, 0 up to the last buffer's last step."""
    steps = max((b.last for b in buffers), default=-1) + 1
    change = np.zeros(steps + 1, dtype=np.int64)
    for b in buffers:
        change[b.first] += b.nbytes
        change[b.last + 1] -= b.nbytes
    return [int(v) for v in np.cumsum(change[:steps])]


# -- placement -------------------------------------------------------------------------------
def _conflicts(buffers: Sequence[Buffer]) -> list[list[int]]:
    """For each buffer, the non-empty buffers alive at one of its steps (a sweep: every
    overlapping pair has one buffer alive at the other's first step)."""
    conflicts: list[list[int]] = [[] for _ in buffers]
    alive: list[tuple[int, int]] = []               # heap of (last, index)
    for i in sorted(range(len(buffers)), key=lambda i: buffers[i].first):
        b = buffers[i]
        while alive and alive[0][0] < b.first:
            heapq.heappop(alive)
        if not b.nbytes:
            continue
        for _, j in alive:
            conflicts[i].append(j)
            conflicts[j].append(i)
        heapq.heappush(alive, (b.last, i))
    return conflicts


class _Placer:
    """Best-fit placement of the buffers in a given order; offsets are by buffer index."""

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.nbytes = [b.nbytes for b in buffers]
        self.conflicts = _conflicts(buffers)

    def place(self, order: Sequence[int], offsets: Sequence[int] = (), start: int = 0
              ) -> list[int]:
        """Each buffer of ``order`` takes the smallest gap it fits in between the buffers placed
        before it that it shares a step with, or goes above them all. Buffers before position
        ``start`` keep their ``offsets``: their placement does not depend on what follows."""
        result = list(offsets) if start else [-1] * len(order)
        for i in order[start:]:
            result[i] = -1
        nbytes = self.nbytes
        for i in order[start:]:
            busy = sorted((result[j], result[j] + nbytes[j])
                          for j in self.conflicts[i] if result[j] >= 0)
            best, best_gap, reach = -1, -1, 0
            for begin, end in busy:
                gap = begin - reach
                if gap >= nbytes[i] and (best < 0 or gap < best_gap):
                    best, best_gap = reach, gap
                reach = max(reach, end)
            result[i] = reach if best < 0 else best
        return result

    def size(self, offsets: Sequence[int]) -> int:
        return max((o + n for o, n in zip(offsets, self.nbytes, strict=True)), default=0)


def _orderings(buffers: Sequence[Buffer], live: Sequence[int]) -> dict[str, list[int]]:
    """The orders `place` tries, by name. Ties are broken by key, so the layout does not depend
    on the order the buffers come in."""
    def by_size(i: int) -> tuple[int, int, str]:
        return -buffers[i].nbytes, buffers[i].first, buffers[i].key

    # Breadth: the busiest step's buffers first (largest first), then the next busiest's: a
    # buffer goes with the busiest step of its lifetime (the earliest of equally busy ones).
    steps = np.asarray(live, dtype=np.int64)
    busiest = [b.first + int(np.argmax(steps[b.first:b.last + 1])) for b in buffers]
    indices = range(len(buffers))
    return {
        "greedy-size": sorted(indices, key=by_size),
        "greedy-breadth": sorted(indices, key=lambda i: (-live[busiest[i]], busiest[i],
                                                         *by_size(i))),
        "lifetime": sorted(indices, key=lambda i: (buffers[i].first - buffers[i].last,
                                                   *by_size(i))),
    }


def place(buffers: Sequence[Buffer], *, search_iterations: int = SEARCH_ITERATIONS,
          seed: int = 0) -> ArenaLayout:
    """Offsets for ``buffers`` in the smallest arena found: best-fit placement in each of the
    `_orderings`, then, only while above `max_live_bytes`, a seeded local search on the best
    order. Deterministic: the search is bounded by ``search_iterations`` and by a count of work
    (`SEARCH_COMPARISONS`), not by time, so the same buffers give the same layout anywhere."""
    _check_unique(buffers)
    live = live_bytes(buffers)
    bound = max(live, default=0)
    placer = _Placer(buffers)
    placement, order, offsets, size = "", [], [], -1
    for name, candidate in _orderings(buffers, live).items():
        placed = placer.place(candidate)
        if size < 0 or placer.size(placed) < size:
            placement, order, offsets, size = name, candidate, placed, placer.size(placed)
    if size > bound and search_iterations > 0:
        offsets, improved = _search(placer, order, offsets, size, bound, search_iterations,
                                    random.Random(seed))
        if improved < size:
            placement, size = f"{placement}+search", improved
    return ArenaLayout(size, bound, {b.key: offsets[i] for i, b in enumerate(buffers)},
                       placement)


def _search(placer: _Placer, order: list[int], offsets: list[int], size: int, bound: int,
            iterations: int, rng: random.Random) -> tuple[list[int], int]:
    """Perturb the order (three swaps of a random buffer with the next one in the order that
    shares a step with it: swapping buffers that do not changes nothing) and place again from
    the first swapped position; keep an order that gives a smaller arena."""
    n = len(order)
    comparisons = [len(c) for c in placer.conflicts]
    budget = SEARCH_COMPARISONS
    for _ in range(iterations):
        candidate = list(order)
        position = {i: p for p, i in enumerate(candidate)}
        start = n
        for _ in range(3):
            p = rng.randrange(n)
            later = [position[j] for j in placer.conflicts[candidate[p]] if position[j] > p]
            if not later:
                continue
            q = min(later)
            candidate[p], candidate[q] = candidate[q], candidate[p]
            position[candidate[p]], position[candidate[q]] = p, q
            start = min(start, p)
        if start == n:
            continue
        budget -= sum(comparisons[i] for i in candidate[start:])
        if budget < 0:
            break
        placed = placer.place(candidate, offsets, start)
        if placer.size(placed) < size:
            order, offsets, size = candidate, placed, placer.size(placed)
            if size == bound:
                break
    return offsets, size


# -- checking --------------------------------------------------------------------------------
def check_layout(buffers: Sequence[Buffer], layout: ArenaLayout) -> None:
    """ValueError unless ``layout`` places exactly ``buffers``, each at an aligned offset inside
    the arena, no two alive at a common step sharing a byte, with the right lower bound.

    A sweep in step order: O(n log n) plus the moves in a sorted list of the live buffers; its
    cost does not depend on the step indices, so untrusted ones cannot make it large."""
    _check_unique(buffers)
    for what, value in (("arena size", layout.size), ("max_live_bytes", layout.max_live_bytes)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"the layout's {what} {value!r} is not a byte count")
    keys = {b.key for b in buffers}
    unknown = [k for k in layout.offsets if k not in keys]
    if unknown:
        raise ValueError(f"the layout places {unknown[0]!r}, which is no buffer of the program")
    offsets: dict[str, int] = {}
    for b in buffers:
        if b.key not in layout.offsets:
            raise ValueError(f"the layout has no offset for buffer {b.key!r}")
        offset = layout.offsets[b.key]
        if not _is_int(offset) or offset < 0 or offset % ALIGNMENT:
            raise ValueError(f"buffer {b.key!r}: offset {offset!r} is not a non-negative "
                             f"multiple of {ALIGNMENT}")
        if offset + b.nbytes > layout.size:
            raise ValueError(f"buffer {b.key!r}: bytes {offset}..{offset + b.nbytes} end "
                             f"beyond the arena's {layout.size}")
        offsets[b.key] = int(offset)

    # Sweep by first step. `alive` holds the non-empty buffers alive at the current step, sorted
    # by offset and pairwise disjoint, so a new buffer overlaps one of them exactly when it
    # overlaps its neighbour below or above. The live sum peaks at some buffer's first step.
    alive: list[tuple[int, int, str]] = []          # (offset, end, key)
    expiry: list[tuple[int, int, int, str]] = []    # heap of (last, offset, end, key)
    live = bound = 0
    for b in sorted((b for b in buffers if b.nbytes), key=lambda b: b.first):
        while expiry and expiry[0][0] < b.first:
            _, offset, end, key = heapq.heappop(expiry)
            del alive[bisect_left(alive, (offset, end, key))]
            live -= end - offset
        start = offsets[b.key]
        entry = (start, start + b.nbytes, b.key)
        at = bisect_left(alive, entry)
        for other in alive[max(at - 1, 0):at + 1]:
            if other[0] < entry[1] and entry[0] < other[1]:
                raise ValueError(f"buffers {other[2]!r} and {b.key!r} are alive at step "
                                 f"{b.first} and share bytes {max(other[0], entry[0])}.."
                                 f"{min(other[1], entry[1])}")
        alive.insert(at, entry)
        heapq.heappush(expiry, (b.last, *entry))
        live += b.nbytes
        bound = max(bound, live)
    if layout.max_live_bytes != bound:
        raise ValueError(f"the layout states max_live_bytes {layout.max_live_bytes!r}; its "
                         f"buffers have {bound}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_unique(buffers: Sequence[Buffer]) -> None:
    seen: set[str] = set()
    for b in buffers:
        if b.key in seen:
            raise ValueError(f"two buffers are named {b.key!r}")
        seen.add(b.key)


__all__ = ["ALIGNMENT", "ArenaLayout", "Buffer", "OutputBuffer", "aligned", "allocation_bytes",
           "buffers", "check_layout", "live_bytes", "output_buffers", "output_bytes", "place"]
