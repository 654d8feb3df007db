"""What the process really uses: peak resident growth of convplan vs onnxruntime (and PyTorch).

    python bench/memory.py [--models resnet50,vgg19,inception_v1,squeezenet,densenet121,mobilenetv2]
                           [--batches 1,8] [--repeat 3] [--rounds 2] [--no-profile]

Writes bench/results/memory.md. Every engine runs the same ONNX file (the onnx wheel's light
models at batch 1; at batch 8 the same network exported by convplan with its batch set; the
torchvision export of MobileNetV2 when torch and torchvision are installed), each (engine, model,
batch) in a fresh process, after the engine's imports and one run of a one-layer model of its
own (so the code and the BLAS's first buffers are in the baseline for every engine alike).
Growth is the peak resident set (VmHWM, restarted through /proc/self/clear_refs) over the
resident set just before the model is loaded: loading, preparing, one warm-up run and the timed
runs. Engines:

- convplan: `convplan.Session` with the plan `convplan plan` makes for the file (no cap; costs
  measured on this machine, or the analytic model with --no-profile), planned in another process
  beforehand; its footprint is the promise (`RunReport.footprint_bytes`: the memory model's peak
  plus the stated runtime allowance);
- convplan compiled: the same plan compiled beforehand (`convplan compile`), its weights
  memory-mapped read-only from the file; its growth counts the mapped pages it touches (file
  pages, which processes share), and the anonymous growth (RssAnon) is given beside it;
- convplan lean: the plan under the smallest memory cap any plan meets (the planner states it);
- onnxruntime: a default session, and one with its CPU arena and memory pattern off;
- whole processes (a second table): the compiled plan and onnxruntime's default session in a
  cold process, imports included, loaded and run once;
- PyTorch (when installed): the torchvision model of that architecture, under inference_mode.

Each row is repeated --rounds times (fresh processes each time); the table gives the median and
the spread (min-max) of the growth, and the median time of --repeat runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This folder holds bench/kernels.py, which would shadow the `kernels` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MODELS = ["resnet50", "vgg19", "inception_v1", "squeezenet", "densenet121", "mobilenetv2"]
#: The torchvision model of each architecture, for the PyTorch column.
TORCHVISION = {"resnet50": "resnet50", "vgg19": "vgg19", "inception_v1": "googlenet",
               "squeezenet": "squeezenet1_0", "densenet121": "densenet121",
               "mobilenetv2": "mobilenet_v2"}
ENGINES = ["convplan", "convplan-lean", "convplan-compiled", "onnxruntime", "onnxruntime-lean",
           "pytorch"]
#: Whole processes, imports included (what a deployer's process adds to the machine).
COLD_ENGINES = ["convplan-compiled-cold", "onnxruntime-cold"]
RESULTS = Path(__file__).parent / "results" / "memory.md"
MiB = 2**20


# -- in the child process -------------------------------------------------------------------------
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _restart_peak() -> int:
    """Restart the high-water mark here; the resident set it restarts from."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _timed(run, repeat: int) -> float:
    run()                                   # the warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tiny_onnx(directory: Path) -> Path:
    """A one-convolution ONNX model: every engine's warm-up before its baseline."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [weight])
    path = directory / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def child(engine: str, model: str, path: str, plan: str, threads: int, repeat: int) -> dict:
    """Runs in a fresh process: imports and a warm-up, then the baseline, load, run, time."""
    import numpy as np

    out: dict = {"engine": engine}
    if engine.endswith("-cold"):
        return cold_child(engine, path, plan, threads)
    tiny = _tiny_onnx(Path(tempfile.mkdtemp()))
    if engine.startswith("convplan"):
        import convplan
        from convplan.selector.resident import footprint_of

        with convplan.Session(str(tiny), threads=threads) as warm:
            warm.run(np.ones((1, 3, 16, 16), np.float32))
        del warm
        anonymous = _status("RssAnon")
        before = _restart_peak()
        session = convplan.Session(plan, threads=threads) if engine == "convplan-compiled" \
            else convplan.Session(path, plan=plan, threads=threads)
        feeds = {k: np.ones(s, np.float32) for k, s in session.inputs.items()}
        out["time_s"] = _timed(lambda: session.run(feeds), repeat)
        out["growth_bytes"] = _status("VmHWM") - before
        out["footprint_bytes"] = footprint_of(session.predicted.peak_bytes, threads)
        out["weight_bytes"] = session.predicted.weight_bytes
        out["arena_bytes"] = session.predicted.arena_bytes
        out["anonymous_growth_bytes"] = _status("RssAnon") - anonymous
    elif engine.startswith("onnxruntime"):
        import onnxruntime as ort

        def options() -> ort.SessionOptions:
            made = ort.SessionOptions()
            made.intra_op_num_threads = threads
            made.inter_op_num_threads = 1
            if engine == "onnxruntime-lean":
                made.enable_cpu_mem_arena = False
                made.enable_mem_pattern = False
            return made

        warm = ort.InferenceSession(str(tiny), options(), providers=["CPUExecutionProvider"])
        warm.run(None, {"x": np.ones((1, 3, 16, 16), np.float32)})
        del warm
        before = _restart_peak()
        session = ort.InferenceSession(path, options(), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.ones(i.shape, np.float32) for i in session.get_inputs()}
        out["time_s"] = _timed(lambda: session.run(None, feeds), repeat)
        out["growth_bytes"] = _status("VmHWM") - before
    else:
        import onnx
        import torch

        torchvision = bench_zoo().import_torchvision()
        torch.set_num_threads(threads)
        with torch.inference_mode():
            torch.nn.Conv2d(3, 4, 3)(torch.ones(1, 3, 16, 16))
        graph = onnx.load(path, load_external_data=False).graph
        constants = {t.name for t in graph.initializer}     # old files list them as inputs
        data = next(v for v in graph.input if v.name not in constants)
        shape = [d.dim_value for d in data.type.tensor_type.shape.dim]
        del graph
        before = _restart_peak()
        kwargs = {"aux_logits": False, "init_weights": False} if model == "inception_v1" else {}
        net = getattr(torchvision.models, TORCHVISION[model])(weights=None, **kwargs).eval()
        x = torch.ones(shape)
        with torch.inference_mode():
            out["time_s"] = _timed(lambda: net(x), repeat)
        out["growth_bytes"] = _status("VmHWM") - before
    return out


def cold_child(engine: str, path: str, compiled: str, threads: int) -> dict:
    """A deployer's whole process: from this function's start (the interpreter and the
    bench's own small imports before it), import the engine, load the model, run it once;
    the process's peak resident set (VmHWM, imports included) and the time it took."""
    start = time.perf_counter()
    import numpy as np

    if engine == "convplan-compiled-cold":
        import convplan

        session = convplan.Session(compiled, threads=threads)
        session.run({k: np.ones(s, np.float32) for k, s in session.inputs.items()})
    else:
        import onnxruntime as ort

        made = ort.SessionOptions()
        made.intra_op_num_threads = threads
        made.inter_op_num_threads = 1
        ort_session = ort.InferenceSession(path, made, providers=["CPUExecutionProvider"])
        ort_session.run(None, {i.name: np.ones(i.shape, np.float32)
                               for i in ort_session.get_inputs()})
    return {"engine": engine, "time_s": time.perf_counter() - start,
            "growth_bytes": _status("VmHWM")}


def bench_zoo() -> Any:
    """bench/zoo.py (the exported CNNs), loaded from its file: this folder is not on the path."""
    spec = importlib.util.spec_from_file_location("convplan_bench_zoo",
                                                  Path(__file__).with_name("zoo.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    if not hasattr(module, "CATALOGUE"):
        spec.loader.exec_module(module)
    return module


# -- in the parent --------------------------------------------------------------------------------
def _model_file(model: str, batch: int, directory: Path) -> Path | str:
    """The ONNX file every engine runs for (model, batch), or why there is none."""
    from convplan.selector.network import load_network, zoo
    from convplan.selector.onnx import network_to_onnx

    if model == "mobilenetv2":
        source = directory / "mobilenetv2.onnx"
        if not source.exists():
            zoo = bench_zoo()
            try:
                zoo.import_torchvision()
            except ImportError:
                return "needs torch and torchvision (pip install torch torchvision)"
            zoo.export_one(zoo.BY_NAME["torchvision/mobilenet_v2"], source)
    else:
        source = zoo.light_model_path(model)
    if batch == 1:
        return source
    import onnx

    path = directory / f"{model}-b{batch}.onnx"
    if not path.exists():
        network = load_network(str(source), batch=batch)
        onnx.save(network_to_onnx(network), path)
    return path


def _plan(path: Path, threads: int, profile: bool, directory: Path) -> tuple[Path, Path]:
    """(the plan, the plan compiled with the model) for ``path``, made once."""
    out = directory / f"{path.stem}-t{threads}{'' if profile else '-analytic'}.plan.json"
    compiled = out.with_suffix(".cvplan")
    if not out.exists():
        command = [sys.executable, "-m", "convplan", "plan", str(path), "--threads",
                   str(threads), "--out", str(out), "--budget-seconds", "0.1"]
        if not profile:
            command.append("--no-profile")
        subprocess.run(command, check=True, capture_output=True, text=True)
    if not compiled.exists():
        subprocess.run([sys.executable, "-m", "convplan", "compile", str(path), "--plan",
                        str(out), "-o", str(compiled)], check=True, capture_output=True,
                       text=True)
    return out, compiled


def _lean_plan(path: Path, threads: int, profile: bool, directory: Path) -> Path:
    """The plan under the smallest memory cap any plan meets (the planner states it when
    asked for less), made once: what a deployer who wants the least memory runs."""
    import convplan
    from convplan.selector.planning import Infeasible

    out = directory / f"{path.stem}-t{threads}{'' if profile else '-analytic'}.lean.plan.json"
    if not out.exists():
        try:
            convplan.plan(path, memory_cap=1, threads=threads, measure=profile, budget_s=0.1)
        except Infeasible as error:
            assert error.smallest_bytes is not None, error
            plan = convplan.plan(path, memory_cap=error.smallest_bytes, threads=threads,
                                 measure=profile, budget_s=0.1)
        out.write_text(plan.model_dump_json())
    return out


def arena_rows() -> list[str]:
    """Placed arena over max live bytes (the lower bound of any placement) for every built-in
    and light model under three assignments: the default per layer, im2col everywhere (big
    workspaces) and the lowest-memory one."""
    from convplan.selector.baselines import lowest_memory_assignment, uniform_assignment
    from convplan.selector.lowering import lower
    from convplan.selector.network import zoo

    lines = ["| model | assignment | arena MiB | max live MiB | arena / max live | placement |",
             "|---|---|---:|---:|---:|---|"]
    worst = 0.0
    for name in zoo.names():
        network = zoo.builtin(name)
        for label, assignment in (("default", None),
                                  ("im2col", uniform_assignment(network, "im2col")),
                                  ("lowest memory", lowest_memory_assignment(network))):
            layout = lower(network, assignment).program.arena
            ratio = layout.size / max(layout.max_live_bytes, 1)
            worst = max(worst, ratio)
            lines.append(f"| {name} | {label} | {layout.size / MiB:.2f} | "
                         f"{layout.max_live_bytes / MiB:.2f} | {ratio:.4f} | "
                         f"{layout.placement} |")
    return [*lines, "", f"Worst arena / max live: {worst:.4f} (target <= 1.05)."]


#: The trade-off batch 1 hid: (model, batch) planned under arena caps of these fractions of the
#: im2col-everywhere arena.
TRADEOFF = [("resnet50", 8), ("googlenet", 8), ("vgg16", 1)]
FRACTIONS = (0.5, 0.25, 0.1)


def tradeoff_rows(threads: int, profile: bool, repeat: int) -> list[str]:
    """Per (model, batch) of `TRADEOFF`: the unconstrained plan, then plans under arena caps of
    `FRACTIONS` of im2col's arena (or, where refused, at the smallest achievable arena the
    refusal states), each planned and run here (median of ``repeat`` timed runs)."""
    import numpy as np

    import convplan
    from convplan.selector.planning.ilp import Infeasible

    lines = ["| model | batch | arena cap | arena MiB | footprint MiB | im2col arena / arena | "
             "planned ms | measured ms | time / unconstrained |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for model, batch in TRADEOFF:
        def planned(cap: int | None, model: str = model, batch: int = batch) -> convplan.Plan:
            return convplan.plan(model, arena_cap=cap, threads=threads, measure=profile,
                                 budget_s=0.1, batch=batch)

        free = planned(None)
        im2col = free.baselines["im2col"].arena_bytes
        runs: list[tuple[str, convplan.Plan]] = [("none", free)]
        for fraction in FRACTIONS:
            cap = int(fraction * im2col)
            try:
                runs.append((f"{fraction:.0%} of im2col's", planned(cap)))
            except Infeasible as refused:
                assert refused.smallest_bytes is not None, refused
                runs.append((f"{fraction:.0%} refused: smallest {refused.smallest_bytes / MiB:.2f}"
                             " MiB, planned at it", planned(refused.smallest_bytes)))
        base = None
        for label, plan in runs:
            with convplan.Session(model, plan, threads=threads, batch=batch) as session:
                feeds = {k: np.ones(s, np.float32) for k, s in session.inputs.items()}
                measured = _timed(lambda session=session, feeds=feeds: session.run(feeds),
                                  repeat)
            base = base or measured
            lines.append(f"| {model} | {batch} | {label} | {plan.predicted.arena_bytes / MiB:.2f}"
                         f" | {plan.predicted.peak_bytes / MiB:.1f} | "
                         f"{im2col / max(plan.predicted.arena_bytes, 1):.2f} | "
                         f"{plan.predicted.time_s * 1e3:.1f} | {measured * 1e3:.1f} | "
                         f"{measured / base:.2f} |")
            print(model, batch, label, f"{measured * 1e3:.1f} ms", file=sys.stderr)
    return lines


def _spread(values: list[float]) -> str:
    values = [v / MiB for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true",
                        help="plan from the analytic cost model instead of measured costs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "convplan-bench")
    parser.add_argument("--arena-only", action="store_true",
                        help="only the arena table (no processes, a few seconds)")
    parser.add_argument("--tradeoff-only", action="store_true",
                        help="only the arena-cap trade-off table")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "MODEL", "FILE", "PLAN"))
    args = parser.parse_args()
    if args.child:
        engine, model, path, plan = args.child
        print(json.dumps(child(engine, model, path, plan, args.threads, args.repeat)))
        return

    arena = ["", "## The arena against its lower bound", "",
             "The executor's placement (`kernels.arena.place`: best fit in three orderings, "
             "greedy by size, by breadth and by lifetime, then a bounded local search while "
             "above the bound).", "", *arena_rows()]
    if args.arena_only:
        print("\n".join(arena))
        return
    tradeoff = ["", "## The trade-off: arena caps", "",
                f"{args.threads} thread(s); plans from "
                f"{'analytic' if args.no_profile else 'measured'} costs; measured: median of "
                f"{args.repeat} runs of a `Session` after a warm-up. The anchor (Wen et al. "
                "2020): 2.2x less memory for 15% more time.", "",
                *tradeoff_rows(args.threads, not args.no_profile, args.repeat)]
    if args.tradeoff_only:
        print("\n".join(tradeoff))
        return
    try:
        bench_zoo().import_torchvision()
        engines = ENGINES
    except ImportError:
        engines = [e for e in ENGINES if e != "pytorch"]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            path = _model_file(model, batch, args.work)
            if isinstance(path, str):
                rows.append((model, batch, path, {}))
                continue
            plan, compiled = _plan(Path(path), args.threads, not args.no_profile, args.work)
            lean = _lean_plan(Path(path), args.threads, not args.no_profile, args.work)
            given = {"convplan-lean": lean, "convplan-compiled": compiled,
                     "convplan-compiled-cold": compiled}
            results: dict[str, list[dict]] = {e: [] for e in [*engines, *COLD_ENGINES]}
            for _ in range(args.rounds):        # interleaved: each round runs every engine
                for engine in [*engines, *COLD_ENGINES]:
                    if engine == "pytorch" and model not in TORCHVISION:
                        continue
                    done = subprocess.run(
                        [sys.executable, __file__, "--threads", str(args.threads), "--repeat",
                         str(args.repeat), "--child", engine, model, str(path),
                         str(given.get(engine, plan))],
                        capture_output=True, text=True)
                    if done.returncode != 0:
                        results[engine].append({"error": done.stderr.strip().splitlines()[-1]})
                        continue
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    results[engine].append(result)
                    print(model, batch, engine, f"{result['growth_bytes'] / MiB:.1f} MiB",
                          f"{result['time_s'] * 1e3:.1f} ms", file=sys.stderr)
            rows.append((model, batch, None, results))
    RESULTS.parent.mkdir(exist_ok=True)
    text = _table(rows, engines, args) + "\n".join(arena + tradeoff) + "\n"
    RESULTS.write_text(text)
    print(text)


def _table(rows: list, engines: list[str], args: argparse.Namespace) -> str:
    lines = [
        "# Memory: what the process really uses",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, {args.threads} thread(s). `python bench/memory.py "
        f"--batches {args.batches} --repeat {args.repeat} --rounds {args.rounds}"
        f"{' --no-profile' if args.no_profile else ''}`. Growth: peak resident set over the set "
        "just before loading, in a fresh process per run, median (min-max) over the rounds; "
        "time: median of the runs after a warm-up, ms. convplan's plan has no cap "
        f"({'analytic' if args.no_profile else 'measured'} costs). Footprint: convplan's "
        "promise (memory model's peak + runtime allowance). Ratio: convplan's median growth "
        "over onnxruntime's (default session). convplan lean: the plan under the smallest "
        "memory cap any plan meets, against onnxruntime with its arena and memory pattern off. "
        "Targets: growth <= footprint; ratio <= 0.7 on every row, geometric mean <= 0.5.",
        "",
        "| model | batch | convplan growth MiB | footprint MiB | weights MiB | arena MiB | "
        "lean growth MiB (footprint) | compiled growth MiB (anonymous) | ORT growth MiB | "
        "ORT lean growth MiB | "
        + ("PyTorch growth MiB | " if "pytorch" in engines else "")
        + "ratio to ORT | lean ratio to ORT lean | convplan ms | lean ms | ORT ms | ORT lean ms |"
        + (" PyTorch ms |" if "pytorch" in engines else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if "pytorch" in engines else "")
        + "---:|---:|---:|---:|---:|---:|" + ("---:|" if "pytorch" in engines else ""),
    ]
    cold = ["", "## Whole processes", "",
            "A deployer's process from its start: import the engine, load the model (convplan: "
            "the compiled plan, weights memory-mapped; onnxruntime: the ONNX file, default "
            "session), run once. Peak resident set of the whole process (imports included) "
            "and the time to the first result, median (min-max) over the rounds.", "",
            "| model | batch | convplan compiled peak MiB | ORT peak MiB | ratio | "
            "convplan compiled s | ORT s |", "|---|---:|---:|---:|---:|---:|---:|"]
    ratios, lean_ratios, cold_ratios = [], [], []
    for model, batch, why, results in rows:
        if why:
            lines.append(f"| {model} | {batch} | {why} |")
            continue

        def ok(engine: str, results: dict = results) -> list[dict]:
            return [r for r in results.get(engine, []) if "error" not in r]

        def cell(engine: str, key: str = "growth_bytes", results: dict = results) -> str:
            got = ok(engine)
            if not got:
                errors = [r["error"] for r in results.get(engine, []) if "error" in r]
                return f"failed: {errors[0][:80]}" if errors else "-"
            if key == "time_s":
                return f"{statistics.median(r['time_s'] for r in got) * 1e3:.1f}"
            return _spread([r[key] for r in got])

        def median(engine: str) -> float | None:
            got = ok(engine)
            return statistics.median(r["growth_bytes"] for r in got) if got else None

        ours, ort, lean = median("convplan"), median("onnxruntime"), median("onnxruntime-lean")
        ours_lean = median("convplan-lean")
        ratio = ours / ort if ours and ort else None
        if ratio:
            ratios.append(ratio)
        lean_ratio = ours_lean / lean if ours_lean and lean else None
        if lean_ratio:
            lean_ratios.append(lean_ratio)
        cold_ours, cold_ort = median("convplan-compiled-cold"), median("onnxruntime-cold")
        if cold_ours and cold_ort:
            cold_ratios.append(cold_ours / cold_ort)
        cold.append(f"| {model} | {batch} | {cell('convplan-compiled-cold')} | "
                    f"{cell('onnxruntime-cold')} | "
                    f"{'-' if not (cold_ours and cold_ort) else f'{cold_ours / cold_ort:.2f}'} | "
                    f"{_seconds(ok('convplan-compiled-cold'))} | "
                    f"{_seconds(ok('onnxruntime-cold'))} |")
        first = ok("convplan")[0] if ok("convplan") else {}
        first_lean = ok("convplan-lean")[0] if ok("convplan-lean") else {}
        lines.append(
            f"| {model} | {batch} | {cell('convplan')} | "
            f"{first.get('footprint_bytes', 0) / MiB:.1f} | "
            f"{first.get('weight_bytes', 0) / MiB:.1f} | {first.get('arena_bytes', 0) / MiB:.1f} | "
            f"{cell('convplan-lean')} ({first_lean.get('footprint_bytes', 0) / MiB:.1f}) | "
            f"{cell('convplan-compiled')} "
            f"({cell('convplan-compiled', 'anonymous_growth_bytes')}) | "
            f"{cell('onnxruntime')} | {cell('onnxruntime-lean')} | "
            + (f"{cell('pytorch')} | " if "pytorch" in engines else "")
            + f"{'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{'-' if lean_ratio is None else f'{lean_ratio:.2f}'} | "
            f"{cell('convplan', 'time_s')} | {cell('convplan-lean', 'time_s')} | "
            f"{cell('onnxruntime', 'time_s')} | "
            f"{cell('onnxruntime-lean', 'time_s')} |"
            + (f" {cell('pytorch', 'time_s')} |" if "pytorch" in engines else ""))
    for what, values, into in (("the ratio to onnxruntime", ratios, lines),
                               ("the lean plan's ratio to onnxruntime lean", lean_ratios, lines),
                               ("the whole-process ratio", cold_ratios, cold)):
        if values:
            mean = math.exp(sum(map(math.log, values)) / len(values))
            into += ["", f"Geometric mean of {what}: {mean:.2f} over {len(values)} rows "
                     f"(worst {max(values):.2f})."]
    return "\n".join([*lines, *cold]) + "\n"


def _seconds(results: list[dict]) -> str:
    return f"{statistics.median(r['time_s'] for r in results):.2f}" if results else "-"


if __name__ == "__main__":
    main()
