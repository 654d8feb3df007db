"""convplan.api.cli: the `convplan` command line, one module per command group (`app` builds
the Typer app; `common` holds what the groups share)."""

from __future__ import annotations

from typing import Any

from convplan.api.cli.app import app

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # `_read_plan`: what `convplan run --plan` reads, under the name it had in this package
    if name == "_read_plan":
        from convplan.api.cli.running import read_plan

        return read_plan
    raise AttributeError(f"module 'convplan.api.cli' has no attribute {name!r}")
