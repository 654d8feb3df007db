"""The `convplan` command line: the Typer app and its command groups, nothing else.

Each group lives in its own module and adds itself with ``register(app)``; what they share
(the error line, consoles, option declarations, checks) is `convplan.api.cli.common`. Nothing
here or there imports NumPy, the selector or the profiles at start-up, so `convplan --help`
stays fast (tests/api/cli/test_cli_conventions.py checks the modules it loads).
"""

from __future__ import annotations

from typing import Annotated

import typer

from convplan.api.cli import batch, catalogue, compiling, planning, profiles, running, serve
from convplan.api.cli.common import CONTEXT, OneLineErrors

# rich_markup_mode=None: click's plain help, which costs a tenth of a second less to start
# than typer's boxed one (that imports rich.markdown), and reads no help text as markup
app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, context_settings=CONTEXT,
                  rich_markup_mode=None,
                  help="Choose GEMM-based convolution algorithms per layer under a memory cap.")


def _show_version(value: bool) -> None:
    if value:
        from convplan import __version__

        print(f"convplan {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_show_version, help="Print the version and exit.")
        ] = False) -> None:
    """Choose GEMM-based convolution algorithms per layer under a memory cap."""


for group in (catalogue, running, compiling, planning, profiles, batch, serve):
    group.register(app)

if __name__ == "__main__":
    app()
