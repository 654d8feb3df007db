"""ONNX: a real model file as a convplan `Network`, a network back as a model, and the
independent reference that runs it.

Import (`load_onnx`). Everything that only depends on constants (weights made by
ConstantOfShape, Shape of a tensor whose shape is known, the arithmetic on such shapes) is folded
at import, by convplan's own NumPy code for a fixed list of operators, each output's size
computed and checked against the limits before it is allocated; what is left must be an operator
convplan runs. Batch-norm (and a per-channel Mul/Add by constants) after a convolution is folded
into the convolution's weights.

A file is untrusted: every node is checked against its operator's ONNX schema (input and output
counts, required attributes, attribute types) before it is read; sparse tensors, subgraphs
(If, Loop, Scan) and tensors that refer to external data files are refused before anything could
read them (a model must never make convplan read other files); every failure is one short
`NetworkError` that names the node.

One module per job:

- `reading`: the file and its protobuf, bounded and checked (size, external data, opset,
  each node's schema); the file memory-mapped and its initializers' payloads left out of the
  protobuf, each read once into its array (an import holds a file's weights once);
- `importer`: the walk over the graph, and `load_onnx` (``weights=False``: the checked
  description and the weights' shapes only);
- `converters`: each ONNX operator as convplan layers (where an operator's import goes);
- `folding`: the operators computed at import from constants;
- `shapes`: what ONNX's axis and shape arguments mean, shared by the two above;
- `weights`: the import's limits, initializers decoded within them, batch-norm folded into
  convolutions;
- `messages`: how messages name nodes and values;
- `export`: a layer or a network as ONNX nodes (opset 17);
- `reference`: a network's outputs computed by onnxruntime (or onnx's reference evaluator).
"""

from .export import IR_VERSION, OPSET, layer_to_onnx, network_to_onnx, single_layer_model
from .importer import load_onnx
from .reading import MAX_ONNX_BYTES
from .reference import inner_tensors, network_model, reference_engine, reference_outputs
from .weights import MAX_RANK, MAX_TENSOR_BYTES, MAX_WEIGHT_BYTES

__all__ = [
    "IR_VERSION", "MAX_ONNX_BYTES", "MAX_RANK", "MAX_TENSOR_BYTES", "MAX_WEIGHT_BYTES", "OPSET",
    "inner_tensors", "layer_to_onnx", "load_onnx", "network_model", "network_to_onnx",
    "reference_engine", "reference_outputs", "single_layer_model",
]
