"""Damaging a cost store by hand, as a crash or a careless user might."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def spoil_a_row(db: Path) -> tuple[str, str]:
    """Overwrite one convolution row's time with text, by hand; its (key, candidate)."""
    raw = sqlite3.connect(db)
    [(key, candidate)] = raw.execute("SELECT key, candidate FROM costs WHERE kind = 'conv' "
                                     "LIMIT 1").fetchall()
    raw.execute("UPDATE costs SET time_s = 'garbage' WHERE key = ? AND candidate = ?",
                (key, candidate))
    raw.commit()
    raw.close()
    return key, candidate
