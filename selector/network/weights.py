"""A network's weights: those given, as float32, or seeded random ones when the description
carries none (He-scaled, so activations of a deep random network stay in a sane range)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np

from convplan.kernels.operators import Operator, Shape

from .graph import Node


def weights_for(node: Node, wanted: dict[str, Shape],
                given: Mapping[str, np.ndarray] | None, seed: int) -> dict[str, np.ndarray]:
    """The node's weights of the ``wanted`` shapes: ``given`` ones (already checked against
    them) as contiguous float32, else drawn from ``seed`` and the node's name, so a layer's
    weights do not change when other layers are added."""
    if given is not None:
        return {key: np.ascontiguousarray(given[key], dtype=np.float32) for key in wanted}
    rng = np.random.default_rng([seed, zlib.crc32(node.name.encode())])
    return {key: _draw(rng, node.operator, key, shape) for key, shape in wanted.items()}


def _draw(rng: np.random.Generator, operator: Operator, key: str, shape: Shape) -> np.ndarray:
    """Weights that keep activations of a deep random network in a sane range, drawn straight
    into float32 and scaled in place (no float64 intermediate twice their size)."""
    if key == "weight" or (operator.op == "gemm" and key == "b"):
        if key == "weight":
            fan_in = math.prod(shape[1:])
        else:
            fan_in = shape[1] if operator.attrs.get("trans_b") else shape[0]
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(math.sqrt(2.0 / max(fan_in, 1)))
        return out
    low, high = (0.5, 1.5) if key in ("scale", "constant") else (-0.1, 0.1)
    out = rng.random(shape, dtype=np.float32)
    out *= np.float32(high - low)
    out += np.float32(low)
    return out
