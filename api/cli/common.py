"""What every `convplan` command shares: the one error path, consoles, the progress bar, byte
formatting, the option declarations several commands take, and the checks behind them.

Why it is light: `convplan --help` imports this module, so it pulls only typer and the standard
library; rich is imported on the first line printed, NumPy, the selector and the profiles by
the commands that need them, when they run.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn
    from rich.table import Table

    from convplan.selector.network import Network
    from convplan.selector.planning import PlanRequest

#: `-h` as well as `--help`, on the app and (inherited through click's context) every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}

#: The registry's algorithm names, for `--algorithm`'s choices without importing the kernels
#: (NumPy) at start-up; tests/api/cli/test_cli_conventions.py checks it against `registry.names()`.
ALGORITHMS = ("direct", "im2col", "im2row", "kn2row", "kn2col", "kn2row-as", "kn2row-aa",
              "kn2row-aa-nhwc", "mec-col", "mec-row", "conv1x1", "conv1x1-nhwc",
              "winograd-2x2-3x3", "winograd-4x4-3x3", "depthwise")
#: `selector.planning.SOLVERS` (PuLP is not imported for `--help`); checked by the same test.
SOLVERS = ("cbc", "highs")
#: uvicorn's log levels.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

NO_MEMORY = "this needs more memory than the machine (or the process's limit) allows"


# -- the one error path ---------------------------------------------------------------------------
def plain_console(**options: object) -> Console:
    """A console that prints text as it is: no rich markup (a name like ``[/x]`` is shown, not
    read as a closing tag) and no emoji codes (``:smile:`` stays text)."""
    from rich.console import Console

    return Console(markup=False, emoji=False, highlight=False, **options)  # type: ignore[arg-type]


class _StdoutConsole:
    """`console`: the plain console on stdout (120 columns when it is not a terminal), made on
    its first use, so a command that prints nothing never imports rich."""

    _made: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            width = None if plain_console().is_terminal else 120
            type(self)._made = plain_console(width=width)
        return getattr(self._made, name)


console: Console = _StdoutConsole()  # type: ignore[assignment]


def _one_line(message: object) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= 2000 else line[:1997] + "..."


def _say(label: str, style: str, message: object) -> None:
    from rich.text import Text

    plain_console(stderr=True, soft_wrap=True).print(
        Text.assemble((label, style), " ", _one_line(message)))


def warn(message: object) -> None:
    """``warning: ...``: one line on stderr, shown literally."""
    _say("warning:", "yellow", message)


def fail(message: object, code: int = 2) -> NoReturn:
    """The one error path of every command: ``error: ...``, one line on stderr (the message is
    never read as markup), then exit ``code`` (2: bad input)."""
    _say("error:", "red", message)
    raise typer.Exit(code)


@contextmanager
def bad_input() -> Iterator[None]:
    """Bad input and a lack of memory end the command as one error line: ValueError is the base
    of NetworkError, PlanError, PlanningError, StoreError and every bad-argument error."""
    try:
        yield
    except ValueError as error:
        fail(str(error))
    except MemoryError:
        fail(NO_MEMORY)


# click's base error class: older typer re-exports click's, newer typer vendors its own
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(TyperGroup):
    """A usage error (a bad number, an unknown option, a missing argument) is one ``error:``
    line too, like every other bad input, instead of click's usage text and boxed message."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's flags (--help, --install-completion ...) default to False, not None:
        typer (0.29) turns a None into a bool through a pydantic adapter, which would import
        pydantic (a tenth of a second) before every subcommand, `plan --help` included."""
        params = super().get_params(ctx)
        for param in params:
            descriptor = getattr(param, "type_descriptor", None)
            if getattr(param, "is_flag", False) and param.default is None \
                    and getattr(descriptor, "annotation", None) is bool:
                param.default = False
        return params

    def main(self, *args: Any, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **extra)
        try:
            result = super().main(*args, standalone_mode=False, **extra)
        except _CLICK_ERROR as error:
            if type(error).__name__ == "NoArgsIsHelpError":      # `convplan`: the help
                if error.format_message():      # (newer typer has printed it already)
                    typer.echo(error.format_message(), err=True)
                sys.exit(error.exit_code)
            ctx = getattr(error, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            try:
                fail(error.format_message() + hint, code=error.exit_code)
            except typer.Exit as exit_:
                sys.exit(exit_.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


# -- output ---------------------------------------------------------------------------------------
def size(n: float | None) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``; empty for None (nothing measured)."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def new_table(title: str, columns: Sequence[str], right: Collection[str] = (),
          overflow: str = "ellipsis") -> Table:
    """A table with these columns (those in ``right`` right-aligned); printed through
    `console`, its cells and title are text, never markup."""
    from rich.table import Table

    made = Table(title=title)
    for column in columns:
        made.add_column(column, justify="right" if column in right else "left",
                        overflow=overflow)  # type: ignore[arg-type]
    return made


def progress_bar(*columns: ProgressColumn | str) -> Progress:
    """A transient progress bar on stderr; nothing at all when stderr is not a terminal (a log
    gets no blank line from it)."""
    from rich.progress import Progress

    err = plain_console(stderr=True)
    return Progress(*columns, console=err, transient=True, disable=not err.is_terminal)


def counting_bar(label: str, show_item: bool = True) -> tuple[Progress, Callable[..., None]]:
    """A ``label`` bar counting done of total, and the callback that drives it: ``(done, total)``
    or ``(done, total, item)``: the item (a text, or a profiler's request) is shown after the
    count. One bar for profiling, planning and cluster work alike."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    columns: list[ProgressColumn] = [TextColumn(label, markup=False), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn()]
    if show_item:
        columns.append(TextColumn("{task.description}", markup=False))
    bar = progress_bar(*columns)
    task = bar.add_task("", total=None)

    def progress(done: int, total: int, item: Any = None) -> None:
        description = (item if isinstance(item, str) or item is None
                       else f"{item.kind} {item.candidate}") or ""
        bar.update(task, completed=done, total=total, description=description)

    return bar, progress


@contextmanager
def store_warnings() -> Iterator[None]:
    """The cost store's warnings (rows it ignored) as ``warning: ...`` lines on stderr, each
    distinct one once, instead of Python's ``file:line: StoreWarning: ...`` form."""
    from convplan.profiles.store import StoreWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        try:
            yield
        finally:
            shown: set[str] = set()
            for warning in caught:
                if not issubclass(warning.category, StoreWarning):
                    warnings.showwarning(warning.message, warning.category, warning.filename,
                                         warning.lineno)
                elif str(warning.message) not in shown:
                    shown.add(str(warning.message))
                    warn(warning.message)


# -- checks ---------------------------------------------------------------------------------------
def check_threads(threads: int | None, *, this_machine: bool = True) -> None:
    """--threads: 1 .. the machine's cores, with a warning above the cores this process may run
    on. ``this_machine=False`` (work done on other machines): only at least 1."""
    if threads is None:
        return
    if not this_machine:
        if threads < 1:
            fail(f"--threads must be at least 1, got {threads}")
        return
    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        fail(f"--threads must be between 1 and {cores} (this machine's cores), got {threads}")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores
    if threads > usable:
        warn(f"--threads {threads} is more than the {usable} core(s) this process may run on; "
             "timings will suffer")


def check_seconds(option: str, value: float) -> None:
    """A duration option: a finite number above 0 (``nan``, ``inf``, 0 and below refused)."""
    if not math.isfinite(value) or value <= 0:
        fail(f"{option} must be a finite number above 0, got {value}")


def check_writable(path: Path, option: str) -> None:
    """Refuse ``path`` before the expensive work whose result it would hold: the file is opened
    for appending (nothing in it changes) and removed again if it was not there before."""
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        with path.open("ab"):
            pass
    except OSError as error:
        fail(f"cannot write {option} {path}: {error.strerror}")
    if not existed:
        path.unlink(missing_ok=True)


def check_cap_holds_weights(request: PlanRequest, network: Network,
                            option: str = "--memory-cap") -> None:
    """A cap below the network's weights cannot be met by any plan (the promise counts every
    weight once, at every step, and a convolution's prepared weights are at least its
    original's): said at once, before any cost is measured or the cost store opened, with
    the weights' size and the smallest achievable peak (from the memory model alone)."""
    from convplan.kernels.executor import held_bytes
    from convplan.selector.network import quoted
    from convplan.selector.planning import smallest_peak

    held = held_bytes(w for node in network.nodes for w in node.weights.values())
    if request.cap is not None and request.cap < held:
        least = smallest_peak(network, request)
        within = " with the arena within --arena-cap" if request.arena_cap is not None else ""
        fail(f"{option} {request.cap} bytes is below the weights of {quoted(network.name)} "
             f"alone ({held} bytes, {size(held)}): the smallest achievable peak{within} is "
             f"{least} bytes ({size(least)}); give at least that")


def load_model(model: str, batch: int | None = None, input_shape: Sequence[str] | None = None
               ) -> Network:
    """MODEL as the commands that plan or run it load it: within this machine's limits, for
    ``--batch`` and ``--input-shape`` (a text that is no shape, an unknown input or a shape
    over the limits is a NetworkError saying so)."""
    from convplan.selector.network import InputShapes, Limits, zoo

    shapes = InputShapes.parse(input_shape or (), batch)
    return zoo.load_network(model, limits=Limits.of_this_machine(), input_shapes=shapes)


# -- option declarations --------------------------------------------------------------------------
def _choice(what: str, names: Sequence[str]) -> dict[str, Any]:
    """An option with a fixed set of values: `--help` lists them, the shell completes them and
    any other value is one ``error: unknown <what> ...`` line (exit 2) naming the choices."""
    def checked(ctx: typer.Context, value: str | None) -> str | None:
        if value is not None and value not in names and not ctx.resilient_parsing:
            fail(f"unknown {what} {value!r}; use one of {', '.join(names)}")
        return value

    def complete(incomplete: str) -> list[str]:
        return [name for name in names if name.startswith(incomplete)]

    return {"metavar": "[" + "|".join(names) + "]", "callback": checked,
            "autocompletion": complete}


def _threads_checked(ctx: typer.Context, value: int | None) -> int | None:
    if not ctx.resilient_parsing:       # (shell completion parses without checking)
        check_threads(value)
    return value


def seconds_checked(ctx: typer.Context, param: typer.CallbackParam, value: float) -> float:
    """The callback of a duration option: `check_seconds` under the option's name."""
    if not ctx.resilient_parsing:
        check_seconds(param.opts[0], value)
    return value


Model = Annotated[str, typer.Argument(
    help="A built-in network (convplan networks), a .json description or an .onnx file.",
    show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ArenaCap = Annotated[str | None, typer.Option(
    "--arena-cap", help="Cap of the arena alone (activations, copies, workspaces: the RAM "
                        "buffer a deployer sizes): bytes, or with kB/MB/GB/KiB/MiB/GiB.")]
Batch = Annotated[int | None, typer.Option(
    "--batch", min=1, help="The batch: the leading dimension of every input (default: the "
                           "network's own).")]
InputShape = Annotated[list[str] | None, typer.Option(
    "--input-shape", metavar="NAME=1x3x224x224",
    help="An input's whole shape; repeat for several inputs. With --batch, its first "
         "dimension must be the batch.")]
Threads = Annotated[int | None, typer.Option(
    help="BLAS threads, 1 .. this machine's cores (default: all cores).",
    callback=_threads_checked)]
Solver = Annotated[str, typer.Option(help="ILP solver.", **_choice("solver", SOLVERS))]
Algorithm = Annotated[str | None, typer.Option(
    help="One algorithm for every convolution (layers it cannot run use the default).",
    **_choice("algorithm", ALGORITHMS))]
LogLevel = Annotated[str, typer.Option(help="uvicorn log level.",
                                       **_choice("log level", LOG_LEVELS))]
TimeLimit = Annotated[float, typer.Option("--time-limit", help="Solver time limit, seconds.",
                                          callback=seconds_checked)]
Budget = Annotated[float, typer.Option("--budget-seconds",
                                       help="Measuring budget per candidate, seconds.",
                                       callback=seconds_checked)]
ConnectTimeout = Annotated[float, typer.Option(
    "--connect-timeout", help="Seconds to wait for the scheduler and its first worker.",
    callback=seconds_checked)]
Db = Annotated[Path | None, typer.Option(
    "--db", help="Cost store (default: $CONVPLAN_DB, else ~/.cache/convplan/costs.sqlite).")]
NoProfile = Annotated[bool, typer.Option(
    "--no-profile", help="Use the analytic cost model for missing costs instead of measuring.")]
LocalCluster = Annotated[int | None, typer.Option(
    "--local-cluster", help="A local Dask cluster of N worker processes for this run.")]
