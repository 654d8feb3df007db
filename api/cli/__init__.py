"""convplan.api.cli: the `convplan` command line, one module per command group."""

from convplan.api.cli.app import app

__all__ = ["app"]
