"""`python -m convplan`: the same command line as the `convplan` script."""

from convplan.cli import app

app(prog_name="convplan")
