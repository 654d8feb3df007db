"""What several test modules share: networks and strategies to draw, hostile inputs, running the
CLI and a real server as child processes. Tests import it as `tests.support`."""

from pathlib import Path

#: The repository's root (the README, pyproject.toml, docker/, .venv).
ROOT = Path(__file__).resolve().parents[2]
#: Files the tests read: the pinned plan, the PyTorch exports.
DATA = ROOT / "tests" / "data"
