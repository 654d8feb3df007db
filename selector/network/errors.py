"""What goes wrong with an untrusted network, and how a message shows what came in.

`NetworkError` says where and why a description (or a file) cannot be a network; `LimitError` is
a valid one larger than a limit allows. Every message echoes values through `shown` or `quoted`
(short, no heap address), and JSON that comes in is read by `load_json`, which bounds its
nesting (descriptions and plans alike).
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

#: JSON that comes in (descriptions, plans) nests at most this deep; a description needs 4.
MAX_JSON_DEPTH = 32
#: Echoed values are cut to this many characters.
SHOWN_CHARS = 100


class NetworkError(ValueError):
    """A description that cannot be a network: the message says where and why."""


class LimitError(NetworkError):
    """A valid description that is larger than a limit allows (refused before allocating)."""


class CompiledPlanError(NetworkError):
    """A compiled plan (`selector.compiled`) that cannot be run: truncated, damaged, of
    another kind or a newer format, or not fitting the network it describes."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` for a message: JSON-like, never a repr with a heap address, at most ``limit``
    characters (longer ones end in ``...``)."""
    if isinstance(value, str):
        text = json.dumps(value[:limit + 1])
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    elif isinstance(value, list | tuple | dict) and json_depth(value, 3) <= 3:
        try:
            text = json.dumps(value, default=lambda o: type(o).__name__)
        except (TypeError, ValueError):
            text = f"a {type(value).__name__}"
    elif isinstance(value, list | tuple | dict):
        text = f"a {type(value).__name__} nested deeper than 3 levels"
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quoted(name: str) -> str:
    """A name for a message (quoted, cut to a readable length)."""
    return repr(name) if len(name) <= 60 else repr(name[:57]) + "..."


def json_depth(value: Any, stop: int = MAX_JSON_DEPTH) -> int:
    """How deep lists and dicts nest in ``value`` (a scalar: 0), without recursion; counting
    stops past ``stop`` (then the answer is ``stop + 1``)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop:
            return stop + 1
        stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json(data: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text as Python data, or a NetworkError starting with ``what``: not JSON,
    NaN/Infinity, nested deeper than ``max_depth`` (the parser itself stops at a fixed depth,
    so nothing recurses without bound)."""
    try:
        value = pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as error:
        raise NetworkError(f"{what}: not valid JSON ({str(error)[:200]})") from None
    if json_depth(value, max_depth) > max_depth:
        raise NetworkError(f"{what}: nested deeper than {max_depth} levels")
    return value
