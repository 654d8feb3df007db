"""Built-in networks by name, and `load_network`: the one loader of anything a user may name
(a built-in name, a JSON description, an ONNX file).

The paper's networks ``alexnet`` (BVLC AlexNet), ``googlenet`` (Inception v1) and ``resnet50``
have the architectures of the ONNX light models shipped in the ``onnx`` wheel
(``onnx/backend/test/data/light``) and seeded random weights: the light models' own weights are
constants, which makes every output (and so any check of it) nearly uniform. ``vgg16`` is
described here. Every light model is also available unchanged as ``onnx:<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .checking import CheckedNetwork, check_description
from .errors import CompiledPlanError, LimitError, NetworkError
from .graph import Network
from .limits import Limits
from .shapes import InputShapes


def load_onnx(*args: Any, **kwargs: Any) -> Any:
    """`convplan.selector.onnx.load_onnx`, imported when first needed: onnx takes over a
    second to import, which every CLI command (and `--help`) would pay. A `Network`, or with
    ``weights=False`` a `CheckedNetwork`."""
    from convplan.selector.onnx import load_onnx as load

    return load(*args, **kwargs)


#: The paper's networks and the light model behind each (None: described in this module).
PAPER_NETWORKS: dict[str, str | None] = {
    "alexnet": "bvlc_alexnet", "vgg16": None, "googlenet": "inception_v1",
    "resnet50": "resnet50"}


def light_dir() -> Path:
    return Path(str(resources.files("onnx"))) / "backend" / "test" / "data" / "light"


def light_models() -> list[str]:
    """Names of the light ONNX models shipped with the onnx package."""
    return sorted(p.stem.removeprefix("light_") for p in light_dir().glob("light_*.onnx"))


def light_model_path(name: str) -> Path:
    path = light_dir() / f"light_{name}.onnx"
    if not path.exists():
        raise NetworkError(f"unknown ONNX model {name!r}; known: {', '.join(light_models())}")
    return path


def light_model_io(name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The input the onnx test-suite feeds a light model (arange / size, in the input's shape)
    and the expected output shipped beside the model."""
    net = builtin(f"onnx:{name}")
    inputs = {}
    for key, shape in net.inputs.items():
        size = int(np.prod(shape))
        inputs[key] = (np.arange(size).reshape(shape) / size).astype(np.float32)
    from onnx import TensorProto, numpy_helper

    tensor = TensorProto()
    tensor.ParseFromString((light_dir() / f"light_{name}_output_0.pb").read_bytes())
    return inputs, numpy_helper.to_array(tensor)


def names() -> list[str]:
    """Every built-in network name."""
    return list(PAPER_NETWORKS) + [f"onnx:{n}" for n in light_models()]


@cache
def _checked(name: str) -> CheckedNetwork:
    """A paper network's checked description, without weights (cached: cheap to keep)."""
    if name not in PAPER_NETWORKS:
        raise NetworkError(f"unknown network {name!r}; built in: {', '.join(names())}")
    light = PAPER_NETWORKS[name]
    if light is None:
        return check_description(vgg16_description())
    # the light model's layers only: none of its weights is read, seeded ones replace them
    return load_onnx(light_model_path(light), name=name, weights=False)


def _import_light(name: str) -> Network:
    return load_onnx(light_model_path(name.removeprefix("onnx:")), name=name)


@cache
def _imported(name: str) -> Network:
    """An ``onnx:`` model with the file's weights, imported once; handed out only as copies
    (`_handed_out`), never itself."""
    return _import_light(name)


def _handed_out(network: Network) -> Network:
    """A network of its own sharing ``network``'s weight arrays: dropping (releasing) its
    weights leaves ``network`` whole."""
    nodes = [replace(node, weights=dict(node.weights)) for node in network.nodes]
    return replace(network, inputs=dict(network.inputs), nodes=nodes,
                   outputs=list(network.outputs), shapes=dict(network.shapes), released=set())


def builtin(name: str, *, fresh: bool = False) -> Network:
    """A built-in network, a new `Network` on every call, so a caller may drop its weights.

    A paper network's description is checked once per process and its seeded weights drawn
    anew on every call (0.4 s for ResNet-50). An ``onnx:`` model is imported once and its
    arrays shared between calls (do not write into them), or imported again with ``fresh``,
    so that the caller holds the only references to its weights.
    """
    if name.startswith("onnx:"):
        return _import_light(name) if fresh else _handed_out(_imported(name))
    return _checked(name).attach()


def input_shapes_of(batch: int | None = None,
                    input_shapes: InputShapes | Mapping[str, Any] | None = None) -> InputShapes:
    """``batch`` and ``input_shapes`` (name -> shape, or an `InputShapes`) as one
    `InputShapes`; a NetworkError for a bad value."""
    if isinstance(input_shapes, InputShapes):
        if batch is None or batch == input_shapes.batch:
            return input_shapes
        if input_shapes.batch is not None:
            raise NetworkError(f"two batches given: {batch} and {input_shapes.batch}")
        return InputShapes(batch=batch, inputs=input_shapes.inputs)
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        raise NetworkError("input_shapes maps input names to shapes (lists of ints)")
    return InputShapes(batch=batch, inputs={
        k: list(v) if isinstance(v, tuple | list) else v for k, v in (input_shapes or {}).items()})


def load_network(source: str | Path, limits: Limits | None = None, *, batch: int | None = None,
                 input_shapes: InputShapes | Mapping[str, Any] | None = None) -> Network:
    """A built-in name, a JSON description file, or an ONNX file; ``limits`` are checked
    before any weight is drawn (a built-in network is checked once built). The network is
    the caller's alone: nothing else holds its weights, so a runner it is handed to may drop
    each original once prepared.

    ``batch`` sets the leading dimension of every input, ``input_shapes`` (input name ->
    shape) whole shapes; both given, a named input's shape must start with ``batch``. The
    limits hold for these shapes, checked before anything is allocated (`check_description`;
    `load_onnx` for an ONNX file, whose symbolic dimensions they set)."""
    shapes = input_shapes_of(batch, input_shapes)
    text = str(source)
    if text in PAPER_NETWORKS or text.startswith("onnx:"):
        if text in PAPER_NETWORKS and shapes:
            return check_description(_checked(text).description, limits=limits,
                                     input_shapes=shapes).attach()
        if shapes:
            return onnx_network(light_model_path(text.removeprefix("onnx:")), limits,
                                name=text, input_shapes=shapes)
        return check_limits(builtin(text, fresh=True), limits)
    path = Path(text)
    if not path.exists():
        raise NetworkError(f"{text[:200]!r} is neither a built-in network "
                           f"({', '.join(names())}) nor a file")
    from convplan.selector.compiled import is_compiled

    if is_compiled(path):
        raise CompiledPlanError(f"{path} is a compiled plan: it runs as it is (convplan run "
                                f"{path.name}, or convplan.Session); plan, profile or compile "
                                "the model it was compiled from instead")
    if path.suffix.lower() == ".json":
        try:
            data = path.read_bytes()
        except OSError as error:
            raise NetworkError(f"cannot read {path}: {error.strerror}") from None
        return description_network(data, limits, shapes)
    return onnx_network(path, limits, input_shapes=shapes)


def network_of(model: Network | str | Path, *, batch: int | None = None,
               input_shapes: InputShapes | Mapping[str, Any] | None = None
               ) -> tuple[Network, bool]:
    """(the network, whether it was loaded here): a `Network` as given (the caller's: to be
    left unchanged; ``batch`` and ``input_shapes`` then are an error, as they are
    `load_network`'s to apply), or a name or path loaded for them (`load_network`), which
    nothing else holds, so a run may take ownership of its weights."""
    if not isinstance(model, Network):
        return load_network(model, batch=batch, input_shapes=input_shapes), True
    if batch is not None or input_shapes:
        raise ValueError("batch and input_shapes are for a network given by name or path; "
                         "load a Network with convplan.load_network(model, batch=..., "
                         "input_shapes=...)")
    return model, False


def description_network(description: Mapping[str, Any] | str | bytes,
                        limits: Limits | None = None, input_shapes: InputShapes | None = None
                        ) -> Network:
    """A network description (parsed data, or JSON text) with ``limits``, for
    ``input_shapes`` if given: checked in full before the first weight is drawn
    (`check_description`, then `attach`)."""
    return check_description(description, limits=limits, input_shapes=input_shapes).attach()


def onnx_network(source: str | Path | bytes, limits: Limits | None = None,
                 name: str | None = None, input_shapes: InputShapes | None = None) -> Network:
    """An ONNX model with ``limits``, for ``input_shapes`` if given: passed to the importer
    (so it refuses before allocating), and checked on the imported network in any case.
    ``name``: the network's name when the file's graph has none worth keeping (batch names
    networks by file)."""
    bounds: dict[str, Any] = {} if limits is None else {
        "max_tensor_bytes": limits.max_tensor_bytes, "max_weight_bytes": limits.max_weight_bytes}
    network = load_onnx(source, name=name, input_shapes=input_shapes, **bounds)
    return check_limits(network, limits)


def check_limits(network: Network, limits: Limits | None) -> Network:
    """``network`` if it keeps ``limits``, else LimitError (for networks built elsewhere)."""
    if limits is None:
        return network
    if limits.max_layers is not None and len(network.nodes) > limits.max_layers:
        raise LimitError(f"the network has {len(network.nodes)} layers; at most "
                         f"{limits.max_layers} are allowed")
    total = 0
    for name, shape in network.shapes.items():
        size = network.tensor_bytes(name)
        total += size
        if limits.max_tensor_bytes is not None and size > limits.max_tensor_bytes:
            raise LimitError(f"tensor {name[:60]!r} of shape {list(shape)} takes {size} bytes; "
                             f"at most {limits.max_tensor_bytes} per tensor are allowed")
    weights = network.weight_bytes
    if limits.max_weight_bytes is not None and weights > limits.max_weight_bytes:
        raise LimitError(f"the weights take {weights} bytes; at most {limits.max_weight_bytes} "
                         "are allowed")
    if limits.max_total_bytes is not None and weights + total > limits.max_total_bytes:
        raise LimitError(f"the network needs up to {weights + total} bytes (weights {weights} + "
                         f"activations and inputs {total}); at most {limits.max_total_bytes} "
                         "are allowed")
    return network


def vgg16_description() -> dict[str, Any]:
    """VGG-16 (configuration D), 224 x 224 input, as a network description."""
    layers: list[dict[str, Any]] = []
    previous = "data"
    stages = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    for stage, (channels, count) in enumerate(stages, start=1):
        for i in range(1, count + 1):
            name = f"conv{stage}_{i}"
            layers.append({"name": name, "op": "conv", "inputs": [previous],
                           "out_channels": channels, "kernel": 3, "padding": 1})
            layers.append({"name": f"relu{stage}_{i}", "op": "relu", "inputs": [name]})
            previous = f"relu{stage}_{i}"
        layers.append({"name": f"pool{stage}", "op": "maxpool", "inputs": [previous],
                       "kernel": 2, "stride": 2})
        previous = f"pool{stage}"
    layers.append({"name": "flatten", "op": "flatten", "inputs": [previous]})
    previous = "flatten"
    for i, features in enumerate((4096, 4096, 1000), start=6):
        layers.append({"name": f"fc{i}", "op": "gemm", "inputs": [previous],
                       "out_features": features, "trans_b": True})
        previous = f"fc{i}"
        if features != 1000:
            layers.append({"name": f"relu{i}", "op": "relu", "inputs": [previous]})
            previous = f"relu{i}"
    layers.append({"name": "prob", "op": "softmax", "inputs": [previous], "axis": 1})
    return {"name": "vgg16", "inputs": [{"name": "data", "shape": [1, 3, 224, 224]}],
            "layers": layers}
