"""The paper's benchmark layers (AlexNet, VGG-16, GoogLeNet convolutions) as `ConvSpec`s."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from convplan.kernels import ConvSpec


@cache
def paper_layers() -> dict[str, ConvSpec]:
    """``{"vgg16:conv3_1": ConvSpec, ...}``, batch 1, float32, in the file's order."""
    data = resources.files("convplan.selector.network").joinpath("data/paper_layers.json")
    text = data.read_text()
    layers = {}
    for row in json.loads(text)["layers"]:
        layers[f"{row['network']}:{row['layer']}"] = ConvSpec(
            n=1, c=row["c"], h=row["h"], w=row["w"], m=row["m"], kh=row["kh"], kw=row["kw"],
            stride=row["stride"], padding=row["pad"], groups=row["groups"])
    return layers


def paper_layer(name: str) -> ConvSpec:
    layers = paper_layers()
    if name not in layers:
        raise ValueError(f"unknown layer {name!r}; known: {', '.join(layers)}")
    return layers[name]
