"""How an import's messages name what a file holds: values short and without heap addresses,
nodes as 'name' (OpType), every message one line."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx

#: Values and names echoed in a message are cut to this many characters.
ECHO_CHARS = 100
_ADDRESS = re.compile(r"\s*(object )?at 0x[0-9a-fA-F]+")


def short(value: Any) -> str:
    """``value`` for a message: its repr (a string as it is), no heap address, at most
    ECHO_CHARS characters."""
    if isinstance(value, np.ndarray):
        text = f"array of shape {list(value.shape)}"
    else:
        text = value if isinstance(value, str) else repr(value)
    text = _ADDRESS.sub("", text)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 3] + "..."


def quote(name: str) -> str:
    """A tensor's or node's name for a message: `short`, quoted."""
    return repr(short(name))


def label(node: onnx.NodeProto) -> str:
    """How a message names a node: 'name' (OpType)."""
    name = node.name or (node.output[0] if len(node.output) else "") or "?"
    return f"{quote(name)} ({short(node.op_type)})"


def type_name(enum: Any, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return f"type {value}"


def one_line(message: str) -> str:
    """One line, no heap address, at most ~300 characters."""
    message = _ADDRESS.sub("", " ".join(message.split()))
    return message if len(message) <= 300 else message[:297] + "..."
