"""Runs of a lowered program in the executor's static arena against a run in which every step
allocates its own arrays: the checks the random-network tests make of the arena."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from convplan.kernels.executor import Executor, Prepared, Program
from convplan.kernels.layout import convert


def fresh_outputs(program: Program, prepared: Mapping[str, Prepared],
                  inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The program's outputs with every step writing into new arrays (no arena, no workspace
    given, nothing overwritten in place): the same kernels, so the same bits."""
    live = dict(inputs)
    for step in program.steps:
        xs = [live[t] for t in step.inputs]
        if step.kind == "conv":
            ys = [step.algorithm.run(xs[0], prepared[step.name], step.spec)]
        elif step.kind == "transform":
            ys = [convert(xs[0], step.src_layout, step.layout)]
        else:
            ys = step.operator.run(xs, step.weights, step.layout)
        live.update(zip(step.outputs, ys, strict=True))
    return {t: live[t] for t in program.outputs}


def check_arena_runs(program: Program, first: Mapping[str, np.ndarray],
                     second: Mapping[str, np.ndarray]) -> None:
    """Run ``program`` on ``first``, ``second`` and ``first`` again with one executor: each
    run equals a run that allocates everything, bit for bit, the third equals the first, the
    outputs of a run are not changed by the runs after it, and the inputs are never written.
    The second inputs differ, so an output left in the arena would show."""
    pristine = [{k: v.copy() for k, v in feeds.items()} for feeds in (first, second)]
    executor = Executor(program)
    runs = [executor.run(dict(feeds)).outputs for feeds in (first, second, first)]
    expected = [fresh_outputs(program, executor.prepared, feeds) for feeds in pristine]
    for feeds, kept in zip((first, second), pristine, strict=True):
        for name, x in feeds.items():
            np.testing.assert_array_equal(x, kept[name], err_msg=f"input {name} was written")
    for name in program.outputs:
        np.testing.assert_array_equal(runs[0][name], expected[0][name], err_msg=name)
        np.testing.assert_array_equal(runs[1][name], expected[1][name], err_msg=name)
        np.testing.assert_array_equal(runs[2][name], expected[0][name], err_msg=name)
        mine = [y for y in (runs[0][name], runs[1][name])
                if not any(np.shares_memory(y, x) for x in first.values())]
        assert len(mine) < 2 or not np.shares_memory(*mine), f"two runs share output {name}"
