"""Networks: what users describe, how it is checked, and the one loader.

A description (JSON, or what the ONNX importer builds) is checked in full, shapes and limits
included, before a single weight is drawn; then it becomes a `Network`. One module per job:

- `errors`: NetworkError, LimitError, how messages echo values, depth-bounded JSON;
- `description`: the description's pydantic models;
- `attributes`: the JSON type of every operator attribute;
- `limits`: Limits, and what this machine can hold;
- `checking`: every check of a description (`check_description`, `CheckedNetwork.attach`);
- `graph`: Network and Node;
- `weights`: given or seeded weights;
- `shapes`: InputShapes, the batch and input shapes a network is loaded for;
- `zoo`: built-in networks and `load_network` (a name, a JSON file or an ONNX file);
- `paper_layers`: the paper's benchmark convolutions as `ConvSpec`s.
"""

from .attributes import ATTRIBUTE_TYPES, attribute_types, make_operator
from .checking import CheckedNetwork, check_description
from .description import (
    MAX_ATTRIBUTE_DEPTH,
    MAX_ATTRIBUTE_ITEMS,
    MAX_LAYERS,
    InputDescription,
    LayerDescription,
    Name,
    NetworkDescription,
    description_of,
    parse_description,
)
from .errors import (
    MAX_JSON_DEPTH,
    SHOWN_CHARS,
    CompiledPlanError,
    LimitError,
    NetworkError,
    json_depth,
    load_json,
    quoted,
    shown,
)
from .graph import Network, Node
from .limits import CLI_MAX_BYTES, Limits, machine_memory_bytes
from .paper_layers import paper_layer, paper_layers
from .shapes import MAX_DIM, InputShapes, ShapeList, ShapeMap, batch_reshape
from .zoo import check_limits, description_network, load_network, network_of, onnx_network

__all__ = [
    "ATTRIBUTE_TYPES", "CLI_MAX_BYTES", "MAX_ATTRIBUTE_DEPTH", "MAX_ATTRIBUTE_ITEMS",
    "MAX_DIM", "MAX_JSON_DEPTH", "MAX_LAYERS", "SHOWN_CHARS", "CheckedNetwork",
    "CompiledPlanError",
    "InputDescription", "InputShapes", "LayerDescription", "LimitError", "Limits", "Name",
    "Network", "NetworkDescription", "NetworkError", "Node", "ShapeList", "ShapeMap",
    "attribute_types", "batch_reshape", "check_description", "check_limits",
    "description_network", "description_of", "json_depth", "load_json", "load_network",
    "machine_memory_bytes", "make_operator", "network_of", "onnx_network", "paper_layer",
    "paper_layers", "parse_description", "quoted", "shown",
]
