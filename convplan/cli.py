"""The `convplan` command (`convplan.cli:app`); the commands live in `convplan.api`."""

from convplan.api.cli.app import app

__all__ = ["app"]
