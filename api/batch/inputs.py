"""What a batch plans: the networks named on the command line, each read once here, and the
options checked before any work is sent anywhere.

A Dask worker may run on another machine, so an input carries the network file's bytes (and a
file-name-safe name), never a path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from convplan.selector.network import zoo

from .errors import BatchError
from .outputs import PLAN_SUFFIX, SUMMARY_FILE

Kind = Literal["json", "onnx", "builtin"]
#: Where `collect_inputs` looks inside a folder.
NETWORK_SUFFIXES = (".json", ".onnx")


@dataclass(frozen=True)
class NetworkInput:
    """One network to plan: a unique file-name-safe ``name`` (the plan is ``<name>.plan.json``),
    what the user named (``source``, for messages only), and the bytes a worker will parse."""

    name: str
    source: str
    kind: Kind
    data: bytes                 # the file's bytes; a built-in network's name for "builtin"
    error: str | None = None    # found before planning (an unreadable file)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "network"


def _is_builtin(text: str) -> bool:
    return text in zoo.PAPER_NETWORKS or text.startswith("onnx:")


def _files_in(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.name
        if path.suffix.lower() not in NETWORK_SUFFIXES or name.startswith("."):
            continue
        if name.endswith(PLAN_SUFFIX) or name == SUMMARY_FILE or not path.is_file():
            continue     # a previous batch's output inside the input folder
        found.append(path)
    return found


def collect_inputs(sources: Sequence[str | os.PathLike[str]]) -> list[NetworkInput]:
    """The networks named by ``sources``: built-in names, files (``.json`` descriptions, anything
    else read as ONNX) and folders (searched recursively for ``*.json`` and ``*.onnx``). Each file
    is read once here. BatchError for no sources, a source that does not exist, or a folder with
    no network files; an unreadable file becomes an input carrying its error."""
    if not sources:
        raise BatchError("no networks given: name files, folders or built-in networks")
    entries: list[tuple[str, str, Kind, Path | None]] = []
    seen: set[Path] = set()
    for source in sources:
        text = str(source)
        if _is_builtin(text):
            entries.append((text, text, "builtin", None))
            continue
        path = Path(text)
        if path.is_dir():
            files = _files_in(path)
            if not files:
                raise BatchError(f"no .json or .onnx files in folder {text}")
        elif path.exists():
            files = [path]
        else:
            raise BatchError(f"{text!r} is neither a built-in network "
                             f"({', '.join(zoo.PAPER_NETWORKS)}, onnx:NAME), a file nor a folder")
        for file in files:
            resolved = file.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            kind: Kind = "json" if file.suffix.lower() == ".json" else "onnx"
            entries.append((file.stem, str(file), kind, file))
    inputs, taken = [], set()
    for stem, source, kind, file in entries:
        name = base = _safe_name(stem)
        n = 1
        while name.lower() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        if file is None:
            inputs.append(NetworkInput(name, source, kind, source.encode()))
            continue
        try:
            inputs.append(NetworkInput(name, source, kind, file.read_bytes()))
        except OSError as error:
            inputs.append(NetworkInput(name, source, kind, b"",
                                       f"cannot read {source}: {error.strerror}"))
    return inputs
