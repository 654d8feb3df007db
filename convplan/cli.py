"""The `convplan` command (`convplan.cli:app`); the commands live in `convplan.api`."""

from convplan.api.cli import app

__all__ = ["app"]
