"""The network description users write and the ONNX importer produces, as pydantic models.

Named inputs with shapes, then layers with ``name``, ``op``, ``inputs`` (tensor names),
optional ``outputs`` and the operator's attributes inline (see `kernels.operators` for every op
and its attributes)::

    {"name": "tiny", "inputs": [{"name": "x", "shape": [1, 3, 32, 32]}],
     "layers": [{"name": "conv1", "op": "conv", "inputs": ["x"], "out_channels": 16,
                 "kernel": 3, "padding": 1},
                {"name": "relu1", "op": "relu", "inputs": ["conv1"]}]}

A layer's output tensor is named after the layer unless ``outputs`` names them. This module
checks the form only (types, lengths, nesting); `checking` checks that it is a network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from .errors import MAX_JSON_DEPTH, LimitError, NetworkError, json_depth, load_json, shown

if TYPE_CHECKING:
    from .limits import Limits

Name = Annotated[str, Field(min_length=1, max_length=256)]

#: An attribute value is a number, a bool or a list of them: at most this deep and this long.
MAX_ATTRIBUTE_DEPTH = 2
MAX_ATTRIBUTE_ITEMS = 64
#: No description has more layers than this (a server's own limit is usually far lower).
MAX_LAYERS = 100_000


class InputDescription(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name
    shape: Annotated[list[Annotated[StrictInt, Field(ge=1)]], Field(min_length=1, max_length=8)]
    dtype: Literal["float32"] = "float32"


class LayerDescription(BaseModel):
    """One layer; every key other than name/op/inputs/outputs is an attribute of the op."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: Name
    op: Name
    inputs: Annotated[list[Name], Field(min_length=1, max_length=1024)]
    outputs: Annotated[list[Name], Field(min_length=1, max_length=1024)] | None = None

    @model_validator(mode="after")
    def _plain_attributes(self) -> LayerDescription:
        """Attribute values are small plain JSON (numbers, bools, short lists of them); their
        types are checked against the operator when the network is built."""
        for key, value in (self.model_extra or {}).items():
            if len(key) > 64:
                raise ValueError(f"attribute name {shown(key)} is longer than 64 characters")
            if json_depth(value, MAX_ATTRIBUTE_DEPTH) > MAX_ATTRIBUTE_DEPTH:
                raise ValueError(f"attribute {key!r} nests deeper than {MAX_ATTRIBUTE_DEPTH} "
                                 "levels")
            if isinstance(value, list | dict) and len(value) > MAX_ATTRIBUTE_ITEMS:
                raise ValueError(f"attribute {key!r} has {len(value)} items; at most "
                                 f"{MAX_ATTRIBUTE_ITEMS}")
            if isinstance(value, str) and len(value) > 256:
                raise ValueError(f"attribute {key!r} is a string of {len(value)} characters")
        return self

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NetworkDescription(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name = "network"
    inputs: Annotated[list[InputDescription], Field(min_length=1, max_length=1024)]
    layers: Annotated[list[LayerDescription], Field(min_length=1, max_length=MAX_LAYERS)]
    #: The network's outputs; default: the outputs of the last layer.
    outputs: Annotated[list[Name], Field(max_length=1024)] | None = None
    #: Seed for the weights drawn when the network carries none.
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0


def _validation_message(error: ValidationError) -> str:
    problems = []
    for e in error.errors(include_url=False, include_input=False)[:10]:
        where = ".".join(str(p)[:64] for p in e["loc"]) or "(top level)"
        problems.append(f"{where}: {e['msg'][:200]}")
    more = f" (and {error.error_count() - 10} more)" if error.error_count() > 10 else ""
    return "invalid network description: " + "; ".join(problems) + more


def parse_description(text: str | bytes, limits: Limits | None = None) -> NetworkDescription:
    """A description from JSON text; NetworkError saying what is wrong (with its location)."""
    return description_of(load_json(text, "invalid network description"), limits)


def description_of(data: Any, limits: Limits | None = None) -> NetworkDescription:
    """A description from Python data (parsed JSON, or what the ONNX importer builds);
    ``limits.max_layers`` is checked before the layers are validated."""
    if isinstance(data, NetworkDescription):
        return data
    if not isinstance(data, Mapping):
        raise NetworkError(f"a network description is a JSON object, not {shown(data)}")
    layers = data.get("layers")
    most = MAX_LAYERS if limits is None or limits.max_layers is None else min(
        MAX_LAYERS, limits.max_layers)
    if isinstance(layers, list) and len(layers) > most:     # before anything walks them
        raise LimitError(f"the network has {len(layers)} layers; at most {most} are allowed")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise NetworkError(f"invalid network description: nested deeper than {MAX_JSON_DEPTH} "
                           "levels")
    try:
        return NetworkDescription.model_validate(_plain(data))
    except ValidationError as error:
        raise NetworkError(_validation_message(error)) from None
    except RecursionError:
        raise NetworkError(f"invalid network description: nested deeper than "
                           f"{MAX_JSON_DEPTH} levels") from None


def _plain(value: Any) -> Any:
    """Python data as JSON data: tuples and arrays as lists, NumPy scalars as Python ones
    (what a Python caller such as the ONNX importer may hold; JSON never has them)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
