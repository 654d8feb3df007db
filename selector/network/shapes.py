"""The shapes a network is loaded for: ``batch`` (the leading dimension of every input) and
whole shapes of named inputs, given on the command line (``--batch 4``, ``--input-shape
data=4x3x224x224``), in a request body or to `load_network`.

`InputShapes` is the one value the CLI, the service and batch pass to `zoo.load_network`;
`InputShapes.resolve` turns it into the shape of every input it changes. Both given, they must
agree: an input named by ``input_shapes`` keeps that shape, and its leading dimension must be
``batch`` (else an error saying so), so neither silently wins. `check_description` applies the
shapes before shape inference, and `batch_reshape` is how a reshape whose literal shape
hard-codes the old batch is rewritten (or refused).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .description import Name
from .errors import NetworkError, quoted, shown

#: No dimension (the batch included) is larger: the shape of a NumPy array must fit an int64
#: product long before that, and the limits refuse far smaller ones by their bytes.
MAX_DIM = 2**31 - 1
#: An input has at most this many dimensions (as in a description).
MAX_RANK = 8

Dim = Annotated[StrictInt, Field(ge=1, le=MAX_DIM)]
ShapeList = Annotated[list[Dim], Field(min_length=1, max_length=MAX_RANK)]
#: ``input_shapes`` of a request: input name -> its whole shape.
ShapeMap = Annotated[dict[Name, ShapeList], Field(max_length=1024)]

_SHAPE_TEXT = re.compile(r"\s*([^=]+?)\s*=\s*([^=]*?)\s*")


class InputShapes(BaseModel):
    """Which shapes to load a network for (nothing given: the shapes it declares)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    batch: Dim | None = Field(None, description="The leading dimension of every input.")
    inputs: ShapeMap = Field(default_factory=dict,
                             description="Input name -> its whole shape.")

    def __init__(self, **values: object) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            problems = []
            for e in error.errors(include_url=False)[:3]:
                where = ".".join(str(p)[:60] for p in e["loc"])
                problems.append(f"{where}: {e['msg']}, got {shown(e.get('input'))}")
            raise NetworkError("invalid input shapes: " + "; ".join(problems)) from None

    @classmethod
    def parse(cls, texts: Sequence[str] = (), batch: int | None = None) -> InputShapes:
        """``NAME=1x3x224x224`` texts (``--input-shape``, repeatable) and ``--batch``; a
        NetworkError naming the text that is not one (``x=1x3xab``, ``=1x2``, ``x=0x3``, a name
        given twice)."""
        inputs: dict[str, list[int]] = {}
        for text in texts:
            match = _SHAPE_TEXT.fullmatch(text)
            dims = match.group(2).lower().split("x") if match else []
            if not match or not all(d.strip().isdigit() for d in dims):
                raise NetworkError(f"cannot read {shown(text)} as an input shape: write "
                                   "NAME=1x3x224x224 (the input's name, then its dimensions "
                                   "joined by x)")
            name, shape = match.group(1), [int(d) for d in dims]
            if name in inputs:
                raise NetworkError(f"input {quoted(name)} is given two shapes")
            if min(shape) < 1 or max(shape) > MAX_DIM or len(shape) > MAX_RANK:
                raise NetworkError(f"the shape {shown(text)} must have 1 to {MAX_RANK} "
                                   f"dimensions, each 1 to {MAX_DIM}")
            inputs[name] = shape
        return cls(batch=batch, inputs=inputs)

    def __bool__(self) -> bool:
        return self.batch is not None or bool(self.inputs)

    def resolve(self, declared: Mapping[str, Sequence[int]], network: str = "the network"
                ) -> dict[str, tuple[int, ...]]:
        """The shape of every input of ``declared`` (name -> shape) these shapes change; a
        NetworkError for an input the network does not have, or a shape whose leading
        dimension is not ``batch``."""
        unknown = [n for n in self.inputs if n not in declared]
        if unknown:
            names = ", ".join(quoted(n) for n in list(declared)[:8])
            raise NetworkError(f"{quoted(unknown[0])} is not an input of {network}; its "
                               f"inputs: {names}")
        out: dict[str, tuple[int, ...]] = {}
        for name, shape in declared.items():
            wanted = tuple(self.inputs.get(name, shape))
            if self.batch is not None:
                if name in self.inputs and wanted[0] != self.batch:
                    raise NetworkError(f"input {quoted(name)}: the shape given "
                                       f"{'x'.join(map(str, wanted))} has batch {wanted[0]}, "
                                       f"but the batch asked for is {self.batch}")
                wanted = (self.batch, *wanted[1:])
            if wanted != tuple(shape):
                out[name] = wanted
        return out

    def text(self) -> str:
        """For a message or a name: ``batch 4, data=4x3x224x224``."""
        parts = [f"batch {self.batch}"] if self.batch is not None else []
        parts += [f"{n}={'x'.join(map(str, s))}" for n, s in self.inputs.items()]
        return ", ".join(parts) or "the declared shapes"


def batch_reshape(layer: str, target: Sequence[int], before: Sequence[int],
                  source: Sequence[int], target_before: Sequence[int]) -> list[int] | None:
    """A reshape's literal ``target`` for its input's new shape ``source`` (it was ``before``,
    where ``target`` gave ``target_before``), or None to keep it. Only a change of the leading
    dimension is rewritten: when the reshape kept it (``target_before[0] == before[0]``, so it
    reshaped each image on its own, as a flatten to ``[1, 2048]`` does), the same per-image
    reshape with the new leading dimension; when it did not (the batch is mixed into other
    dimensions), a NetworkError naming the layer and the constant. Any other change is left to
    the reshape's own check (its shape must still hold the elements)."""
    if not source or not before or source[0] == before[0] or len(source) != len(before):
        return None
    if target_before and target_before[0] == before[0] and \
            math.prod(target_before[1:]) == math.prod(before[1:]):
        return [int(source[0]), *(int(d) for d in target[1:])]
    raise NetworkError(f"layer {quoted(layer)}: its shape {list(target)} was written for an "
                       f"input of shape {list(before)} and does not keep the leading dimension "
                       f"(the batch), so it cannot be rewritten for {list(source)}; load the "
                       "network with its declared batch")
