"""An independent reference for a network's outputs: onnxruntime when installed, else onnx's
own `ReferenceEvaluator`. ONNX-imported networks run their original file; other networks are
exported to ONNX first (`export`)."""

from __future__ import annotations

import numpy as np
import onnx

from convplan.selector.network import Network

from .export import network_to_onnx


def reference_engine() -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnx.reference"
    return "onnxruntime"


def network_model(network: Network) -> onnx.ModelProto:
    """The ONNX model the reference runs: the imported file, or the network exported."""
    if network.source is not None:
        return onnx.load_model_from_string(network.source.read_bytes())
    return network_to_onnx(network)


def inner_tensors(network: Network, names: list[str]) -> list[str]:
    """Those of ``names`` the reference model can also return (values some node of its main
    graph produces: an imported network's own tensor names, not the ones convplan added)."""
    produced = {t for node in network_model(network).graph.node for t in node.output}
    return [t for t in names if t in produced]


def reference_outputs(network: Network, inputs: dict[str, np.ndarray],
                      threads: int | None = None, extra: list[str] | None = None
                      ) -> dict[str, np.ndarray]:
    """The network's outputs (name -> array) computed by the reference engine, and the inner
    tensors ``extra`` (see `inner_tensors`)."""
    model = network_model(network)
    known = {o.name for o in model.graph.output}
    for name in extra or []:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    names = [o.name for o in model.graph.output]
    if reference_engine() == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        values = session.run(names, inputs)
    else:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(model).run(names, inputs)
    return dict(zip(names, (np.asarray(v) for v in values), strict=True))
