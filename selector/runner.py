"""Running a network with a choice of algorithms: predict the memory, run, measure, check.

This is what `convplan run` (and the service) call: lower the network, predict its peak with the
memory model, run it once traced (the measured peak: the first run allocates the arena) and then
untraced in the same arena (the time), and compare with the independent reference when asked.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from convplan.kernels import blas
from convplan.kernels.executor import Executor

from .inputs import check_inputs, random_inputs
from .lowering import lower
from .network import Network
from .resident import ResidentPeak, footprint_of

if TYPE_CHECKING:
    from .session import Session

__all__ = ["LayerReport", "RunReport", "degenerate", "run_network", "run_plan", "run_session",
           "softmax_inputs"]


class LayerReport(BaseModel):
    """One executed step: what ran, in which layout, its time and memory."""

    name: str
    op: str
    algorithm: str | None
    layout: str
    time_s: float
    workspace_bytes: int
    live_bytes: int


class RunReport(BaseModel):
    """What a run measured next to what the memory model predicted: the one model of the run
    report (`convplan run --json` dumps it; `/v1/run` answers with it and the output). The
    output arrays are attributes; the document holds only their shapes (``outputs``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    network: str
    threads: int
    time_s: float = Field(description="Median of `repeat` untraced runs.")
    measured_peak_bytes: int = Field(description="tracemalloc's peak of the traced run.")
    predicted_peak_bytes: int = Field(description="The memory model's peak (the promise).")
    peak_step: str = Field(description='The step at the predicted peak, or "preparing '
                           '<layer>" when preparing the weights peaks.')
    prepared_bytes: int = Field(description="The convolutions' prepared weights (counted).")
    constant_bytes: int = Field(description="The other layers' weights, each buffer once "
                                "(counted).")
    input_bytes: int
    weight_bytes: int = Field(description="Every weight the run holds, counted once: "
                              "prepared_bytes + constant_bytes.")
    original_weight_bytes: int = Field(description="The network's weights as loaded.")
    mapped_weight_bytes: int = Field(0, description=(
        "Of weight_bytes, the weights memory-mapped from a compiled plan: file-backed pages "
        "(shared by processes running the same file), not the process's own memory."))
    weights_released: bool = Field(description=(
        "Each convolution's original was dropped once prepared (a network the runner loaded "
        "itself); else the caller's network keeps its arrays, and they are not counted."))
    arena_bytes: int = Field(description=(
        "The static arena every activation, layout copy and workspace of the run lives in, "
        "allocated once (counted in full at every step)."))
    max_live_bytes: int = Field(description=(
        "The most bytes of the arena's buffers alive at one step: the lower bound of any "
        "placement."))
    footprint_bytes: int = Field(description=(
        "The whole footprint the run promises: predicted_peak_bytes plus the runtime "
        "allowance for its threads (selector.resident)."))
    rss_baseline_bytes: int | None = Field(default=None, description=(
        "The process's resident size just before the model was loaded, where measured "
        "(`convplan run`)."))
    rss_peak_growth_bytes: int | None = Field(default=None, description=(
        "The process's peak resident growth over rss_baseline_bytes while loading, preparing "
        "and running (before any check); None where it is not measured or cannot be."))
    notes: list[str]
    max_abs_error: float | None = Field(description="Set by a check against the reference.")
    max_rel_error: float | None
    reference: str | None = Field(description="The reference engine checked against.")
    outputs: dict[str, np.ndarray] = Field(default_factory=dict, description=(
        "Output name -> shape (the arrays stay out of the document)."))
    layers: list[LayerReport]

    @field_serializer("outputs")
    def _output_shapes(self, outputs: dict[str, np.ndarray]) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in outputs.items()}


def run_network(network: Network, inputs: Mapping[str, np.ndarray] | None = None, *,
                assignment: Mapping[str, str] | None = None, algorithm: str | None = None,
                layouts: Mapping[str, str] | None = None, strict: bool = False,
                threads: int | None = None, repeat: int = 1, check: bool = False,
                made_for: str | None = None, made_for_inputs: Mapping[str, Any] | None = None,
                owned: bool = False, resident: ResidentPeak | None = None) -> RunReport:
    """Run ``network`` once traced (memory) and ``repeat`` times untraced (time: the median).

    ``assignment`` (layer -> algorithm; ``strict`` for plans, checked with `check_plan`, made
    for the network named ``made_for`` and the input shapes ``made_for_inputs`` if given) or one
    ``algorithm`` for every convolution;
    neither: the default per layer. ``layouts``: the layout each other layer runs in (a
    plan's choice). ``check`` compares with the reference.

    ``owned``: the caller hands the network over (it loaded it for this run alone, as
    `load_network` does, and keeps no other reference to its arrays): each convolution's
    original weights are dropped once the layer is prepared, so the process holds every
    weight once, and the network is spent afterwards. Without it (a `Network` a caller passes
    in) the network is never changed, and its originals stay alive beside any prepared copy.

    ``resident``: a process-level measurement the caller started (before loading the
    network), stopped here once the runs are done, before the check, into the report's
    ``rss_peak_growth_bytes``.

    The work is a `Session`'s, made to prepare in the traced first run (so the measured peak
    includes preparing) and closed afterwards.
    """
    from .session import Session

    if strict and assignment is not None:
        from .incoming import check_plan

        check_plan(network, assignment, layouts, made_for=made_for, inputs=made_for_inputs)
    feeds = check_inputs(network, inputs if inputs is not None else random_inputs(network))
    kept = owned and check and not _recoverable(network)
    session = Session.from_network(network, assignment, algorithm=algorithm, layouts=layouts,
                                   strict=strict, owned=owned and not kept, threads=threads,
                                   prepare=False)
    try:
        report = run_session(session, feeds, repeat=repeat)
        if resident is not None:
            report.rss_peak_growth_bytes = resident.stop()
            report.rss_baseline_bytes = resident.baseline_bytes
        if kept:
            report.notes.append("weights kept: the check needs the originals, which cannot be "
                                "drawn again or read from a file")
        if check:
            _check(report, network, feeds, session.executor, assignment, algorithm, strict,
                   layouts, threads)
    finally:
        session.close()
    return report


def run_session(session: Session, inputs: Mapping[str, np.ndarray] | None = None, *,
                repeat: int = 1) -> RunReport:
    """Run ``session`` once traced (memory) and ``repeat`` times untraced (time: the median)
    on ``inputs`` (seeded random ones if None), all in one turn of it (no run of another
    thread between them): the report `run_network` gives. A session not prepared yet
    (`Session.from_network(prepare=False)`) prepares in the traced run, which then measures
    preparing too; one prepared before holds its weights and arena from before the trace,
    counted as held."""
    feeds = check_inputs(session.inputs, inputs if inputs is not None
                         else random_inputs(session.inputs))
    with session._running() as executor:
        n_threads = blas.get_threads()
        traced = executor.run(feeds, trace=True)
        runs = [executor.run(feeds) for _ in range(max(1, repeat))]
        program = executor.program
    profile = session.predicted
    median = statistics.median(r.seconds for r in runs)
    timed = min(runs, key=lambda r: abs(r.seconds - median))
    layers = []
    for step, seconds, memory in zip(program.steps, timed.step_seconds, profile.steps,
                                     strict=True):
        layers.append(LayerReport(
            name=step.name, op="conv" if step.kind == "conv" else
            ("transform" if step.kind == "transform" else step.operator.op),  # type: ignore
            algorithm=step.algorithm.name if step.algorithm else None,
            layout=(f"{step.src_layout}->{step.layout}" if step.kind == "transform"
                    else step.layout if step.kind != "conv"
                    else f"{step.layout}->{step.output_layout}"),
            time_s=seconds, workspace_bytes=memory.workspace_bytes,
            live_bytes=memory.total_bytes))
    assert traced.measured_peak_bytes is not None
    return RunReport(
        network=session.name, threads=n_threads, time_s=median,
        measured_peak_bytes=traced.measured_peak_bytes, predicted_peak_bytes=profile.peak_bytes,
        peak_step=profile.peak_step, prepared_bytes=profile.prepared_bytes,
        constant_bytes=profile.constant_bytes, input_bytes=profile.input_bytes,
        weight_bytes=profile.weight_bytes, original_weight_bytes=session.original_weight_bytes,
        mapped_weight_bytes=session.mapped_weight_bytes,
        weights_released=program.owns_weights, arena_bytes=profile.arena_bytes,
        max_live_bytes=profile.max_live_bytes,
        footprint_bytes=footprint_of(profile.peak_bytes, n_threads), layers=layers,
        outputs=session.outputs_of(traced), notes=list(session.notes),
        max_abs_error=None, max_rel_error=None, reference=None)


def _recoverable(network: Network) -> bool:
    """Whether the reference check can have the originals after they are released: the
    ONNX file it runs, or seeded weights drawn again."""
    return network.source is not None or \
        {n.name for n in network.conv_nodes} <= network.seeded


def run_plan(network: Network, plan: Any, inputs: Mapping[str, np.ndarray] | None = None, *,
             threads: int | None = None, repeat: int = 1, check: bool = False,
             owned: bool = False, resident: ResidentPeak | None = None) -> RunReport:
    """Run a `Plan` (or a plan document, its `PlanSpec`, or its JSON text) on ``network``:
    refused unless it fits the network exactly and, when it names one, was made for it.
    ``threads``: given, else the thread count the plan's costs were measured with, at most
    this machine's cores. ``owned`` and ``resident``: as for `run_network`."""
    from .incoming import plan_spec

    spec = plan_spec(plan)
    return run_network(network, inputs, assignment=spec.assignment, layouts=spec.layouts,
                       strict=True, threads=spec.run_threads(threads), repeat=repeat, check=check,
                       made_for=spec.network, made_for_inputs=spec.inputs, owned=owned,
                       resident=resident)


def softmax_inputs(network: Network) -> dict[str, str]:
    """Network output -> the input of the softmax it comes from (through views only).

    A softmax hides what a check should see: where random weights saturate it, the output is
    one-hot or constant whatever the error in the logits, and where logits are huge and tied
    (constant weights), one rounding step flips it. So `--check` compares the logits."""
    producer = {t: node for node in network.nodes for t in node.outputs}
    out = {}
    for name in network.outputs:
        node = producer.get(name)
        while node is not None and node.operator.view:
            node = producer.get(node.inputs[0])
        if node is not None and node.op == "softmax":
            out[name] = node.inputs[0]
    return out


def degenerate(values: np.ndarray) -> str | None:
    """Why comparing ``values`` proves little (constant, or one-hot), or None."""
    flat = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1) \
        if values.ndim else np.asarray(values, dtype=np.float64).reshape(1, 1)
    spread = float(np.ptp(flat))
    if flat.size > 1 and spread <= 1e-6 * max(float(np.abs(flat).max()), 1e-30):
        return "constant"
    rows = flat.shape[1] > 1 and np.all(flat >= 0) and \
        np.allclose(flat.sum(axis=1), 1.0, atol=1e-3) and bool(np.all(flat.max(axis=1) > 0.999))
    return "one-hot" if rows else None


def _check(report: RunReport, network: Network, feeds: dict[str, np.ndarray],
           executor: Executor, assignment: Mapping[str, str] | None, algorithm: str | None,
           strict: bool, layouts: Mapping[str, str] | None, threads: int | None) -> None:
    """Compare with the reference: the outputs, or the logits before a final softmax.

    The logits come from one more (untraced) run of a program that also returns them, with
    the run's own prepared weights (the same steps and algorithms: nothing is prepared
    again), once ``executor`` is closed (its arena freed). Released weights come back first
    where the reference needs them (a network without a file: exported with its seeded
    weights)."""
    from .onnx import inner_tensors, reference_engine, reference_outputs

    if network.released and network.source is None:
        network.restore_weights()
    logits = softmax_inputs(network)
    usable = set(inner_tensors(network, sorted(set(logits.values())))) if logits else set()
    compared = {out: logits[out] if logits.get(out) in usable else out
                for out in network.outputs}
    inner = sorted({t for out, t in compared.items() if t != out})
    ours = dict(report.outputs)
    if inner:
        lowered = lower(network, assignment, algorithm=algorithm, strict=strict,
                        layouts=layouts, keep=inner)  # type: ignore[arg-type]
        keeping = Executor(lowered.program, prepared=executor.prepared)
        executor.close()        # its arena goes before the other program allocates one
        with blas.threads(threads):
            result = keeping.run(feeds)
        ours.update({t: result.outputs[lowered.outputs[t]] for t in inner})
        del result, keeping
    executor.close()
    expected = reference_outputs(network, feeds, threads=threads, extra=inner)
    abs_err, rel_err = 0.0, 0.0
    for out, tensor in compared.items():
        y = ours[tensor]
        ref = expected[tensor].reshape(y.shape)
        diff = float(np.abs(y.astype(np.float64) - ref).max())
        abs_err = max(abs_err, diff)
        rel_err = max(rel_err, diff / max(float(np.abs(ref).max()), 1e-30))
        if tensor != out:
            report.notes.append(f"check: compared {tensor!r}, the input of the softmax that "
                                f"gives output {out!r}")
        why = degenerate(ref)
        if why:
            report.notes.append(f"check: the compared tensor {tensor!r} is {why} in the "
                                "reference, so agreeing with it proves little")
    report.max_abs_error, report.max_rel_error = abs_err, rel_err
    report.reference = reference_engine()
