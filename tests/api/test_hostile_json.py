"""Hostile JSON: descriptions and plans built to crash, coerce, blow up or flood, each through
`Network.from_description` / `check_plan`, the real CLI and a real server. Every one must be a
short message (CLI: exit 2, one line, no traceback, bounded memory; service: a JSON 4xx), and
nothing is allocated before the limit that guards it is checked."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from convplan.kernels import operators
from convplan.selector.network import (
    ATTRIBUTE_TYPES,
    LimitError,
    Limits,
    Network,
    NetworkError,
)
from convplan.selector.planning import PlanError, check_plan, plan_spec
from tests.support.processes import run_convplan
from tests.support.service_server import TINY, assert_json_error, running_server

X = {"name": "x", "shape": [1, 3, 8, 8]}
MiB = 1 << 20


def net(*layers: dict, **extra: object) -> dict:
    return {"name": "t", "inputs": [X], "layers": list(layers), **extra}


def conv(name: str = "c", source: str = "x", **attrs: object) -> dict:
    return {"name": name, "op": "conv", "inputs": [source], "out_channels": 4, "kernel": 3,
            "padding": 1, **attrs}


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def refused(description: object, match: str | None = None, error: type = NetworkError,
            **kwargs: object) -> str:
    """The message of the one error building ``description`` gives (also as JSON text)."""
    messages = []
    try:
        forms = [description, json.dumps(description)]
    except RecursionError:          # too deep for Python's encoder: the Python form alone
        forms = [description]
    for form in forms:
        with pytest.raises(error) as caught:
            Network.from_description(form, **kwargs)  # type: ignore[arg-type]
        message = str(caught.value)
        assert len(message) < 500, message[:600]
        assert " at 0x" not in message and "Traceback" not in message
        if match is not None:
            assert match in message, message
        messages.append(message)
    return messages[0]


# -- generators ---------------------------------------------------------------------------------
#: For each kind of attribute: JSON values of another type (the old build coerced most).
WRONG = {
    "int": [True, False, 3.5, "3", [3], None, {"a": 1}],
    "ints": [True, 3, "3,3", [True, 1], [1.5], {"a": 1}, [[1]]],
    "int or ints": [True, 3.5, "33", [True, True], [2.0, 2.0], {"k": 3}, None],
    "number": [True, "0.5", [0.5], {"v": 1}],
    "bool": ["no", "yes", 0, 1, 1.0, [True], None],
    "string": [True, 0, 0.5, ["none"], None, {"a": "none"}],
    "numbers": [True, 2.0, "2,2", [True, 2.0], ["2"], [float("inf"), 1.0], {"a": 1}, [[2.0]]],
}


def hostile_attributes():
    """(op, attribute, wrong value) for every attribute of every operator."""
    for op, kinds in ATTRIBUTE_TYPES.items():
        for attribute, kind in kinds.items():
            for value in WRONG[kind.removesuffix("?")]:
                if value is None and kind.endswith("?"):
                    continue
                yield op, attribute, value


#: A layer of each operator that builds on x (1, 3, 8, 8), to put the wrong value into.
VALID = {
    "conv": conv(), "clip": {"op": "clip", "min": 0.0}, "hardsigmoid": {"op": "hardsigmoid"},
    "add": {"op": "add", "constant_shape": [1]}, "mul": {"op": "mul", "constant_shape": [1]},
    "sub": {"op": "sub", "constant_shape": [1]}, "div": {"op": "div", "constant_shape": [1]},
    "gemm": {"op": "gemm", "out_features": 4}, "matmul": {"op": "matmul", "constant_shape": [8, 2]},
    "lrn": {"op": "lrn", "size": 3}, "maxpool": {"op": "maxpool", "kernel": 2},
    "avgpool": {"op": "avgpool", "kernel": 2}, "softmax": {"op": "softmax"},
    "concat": {"op": "concat", "axis": 1}, "flatten": {"op": "flatten"},
    "split": {"op": "split", "axis": 1, "sizes": [1, 2]},
    "reshape": {"op": "reshape", "shape": [1, -1]}, "transpose": {"op": "transpose"},
    "slice": {"op": "slice", "starts": [0], "ends": [2]},
    "prelu": {"op": "prelu", "slope_shape": [3, 1, 1]},
    "pow": {"op": "pow", "exponent": 2.0}, "pad": {"op": "pad", "pads": [0, 0, 1, 1] * 2},
    "resize": {"op": "resize", "scales": [2.0, 2.0]},
    "convtranspose": {"op": "convtranspose", "out_channels": 4, "kernel": 3, "stride": 2},
}


def test_the_attribute_table_covers_every_operator_exactly() -> None:
    assert set(ATTRIBUTE_TYPES) == set(operators.names())
    for op, kinds in ATTRIBUTE_TYPES.items():
        assert set(kinds) == set(operators.operator_class(op).attribute_defaults()), op


def test_every_wrong_attribute_type_is_refused_not_coerced() -> None:
    cases = list(hostile_attributes())
    assert len(cases) > 150
    for op, attribute, value in cases:
        layer = {**VALID.get(op, {"op": op}), "name": "l", "inputs": ["x"], attribute: value}
        message = refused(net(layer))
        assert attribute in message and "layer 'l'" in message, (op, attribute, value, message)


def test_the_valid_layers_of_the_generator_build() -> None:
    for op, layer in VALID.items():
        if op in ("gemm", "matmul"):
            layers = [{"name": "f", "op": "flatten", "inputs": ["x"]},
                      {**layer, "name": "l", "inputs": ["f"]}]
            if op == "matmul":
                layers[1]["constant_shape"] = [192, 2]
        else:
            layers = [{**layer, "name": "l", "inputs": ["x"]}]
            if op == "split":
                layers[0]["outputs"] = ["l0", "l1"]
        if op == "concat":
            layers[0]["inputs"] = ["x", "x"]
        Network.from_description(net(*layers))


@pytest.mark.parametrize("name", ["self", "cls", "__class__", "__init__", "attrs", "op ", ""])
def test_reserved_and_odd_attribute_names_are_unknown_attributes(name: str) -> None:
    refused(net({"name": "r", "op": "relu", "inputs": ["x"], name: 1}), "unknown attribute")


def test_description_fields_are_strict() -> None:
    refused({**net(conv()), "seed": "3"}, "seed")
    refused({**net(conv()), "seed": 1.0}, "seed")
    refused({**net(conv()), "seed": True}, "seed")
    refused({"name": "t", "inputs": [{"name": "x", "shape": [1, "3", 8, 8]}],
             "layers": [conv()]}, "shape")
    refused({"name": "t", "inputs": [{"name": "x", "shape": [1, True, 8, 8]}],
             "layers": [conv()]}, "shape")
    refused(net({**conv(), "inputs": "x"}), "inputs")
    refused({**net(conv()), "name": 7}, "name")


@pytest.mark.parametrize("depth", [3, 40, 900, 20_000])
def test_deep_nesting_anywhere_is_one_short_error(depth: int) -> None:
    refused(net(conv(kernel=nested(depth))))
    refused({**net(conv()), "outputs": nested(depth, "c")})
    refused({"name": "t", "inputs": [{"name": "x", "shape": nested(depth)}], "layers": [conv()]})
    with pytest.raises(NetworkError, match=r"nested deeper|not valid JSON|is a JSON object"):
        Network.from_description("[" * depth + "]" * depth)


def test_huge_values_are_not_echoed_and_objects_not_shown_by_address() -> None:
    huge = "k" * 600_000
    for layer in (conv(kernel=huge), {**conv(), huge: 1}, {**conv(), "name": huge},
                  {**conv(), "inputs": [huge]}, conv(kernel=list(range(100_000)))):
        refused(net(layer))
    with pytest.raises(NetworkError) as caught:
        Network.from_description(net(conv(kernel=object())))
    assert " at 0x" not in str(caught.value) and len(str(caught.value)) < 300


def test_nan_and_infinity_are_not_json() -> None:
    for text in ('{"inputs": [{"name": "x", "shape": [1, 4]}], "layers": [{"name": "c", '
                 '"op": "clip", "inputs": ["x"], "min": NaN}]}',
                 '{"inputs": [{"name": "x", "shape": [1, 4]}], "layers": [{"name": "c", '
                 '"op": "clip", "inputs": ["x"], "max": Infinity}]}'):
        with pytest.raises(NetworkError, match="not valid JSON"):
            Network.from_description(text)


# -- sizes --------------------------------------------------------------------------------------
def test_huge_declared_shapes_are_refused_by_the_limits_before_allocating() -> None:
    limits = Limits(max_tensor_bytes=64 * MiB, max_weight_bytes=64 * MiB,
                    max_total_bytes=96 * MiB)
    tracemalloc.start()
    try:
        refused({"inputs": [{"name": "x", "shape": [1_000_000, 1_000_000]}],
                 "layers": [{"name": "r", "op": "relu", "inputs": ["x"]}]},
                "tensor 'x'", LimitError, limits=limits)
        refused(net(conv(out_channels=10**6, kernel=8, padding=0)), "weights reach", LimitError,
                limits=limits)
        refused(net(conv(out_channels=4, kernel=1, padding=10**6)), "tensor 'c'", LimitError,
                limits=limits)
        # many layers each under every per-tensor bound, too much together
        chain = [{"name": f"r{i}", "op": "relu", "inputs": [f"r{i - 1}" if i else "x"]}
                 for i in range(8)]
        refused({"inputs": [{"name": "x", "shape": [4, 1024, 1024]}], "layers": chain},
                "needs up to", LimitError, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, peak


def test_weights_at_the_limit_are_drawn_and_one_byte_over_is_refused_first() -> None:
    """gemm 4096 x 4096 (bias 4096): exactly 64 MiB + 16 KiB of weights."""
    description = {"inputs": [{"name": "x", "shape": [1, 4096]}],
                   "layers": [{"name": "fc", "op": "gemm", "inputs": ["x"],
                               "out_features": 4096}]}
    exact = 4 * (4096 * 4096 + 4096)
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="weights reach"):
            Network.from_description(description, limits=Limits(max_weight_bytes=exact - 1))
        _, refused_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        network = Network.from_description(description, limits=Limits(max_weight_bytes=exact))
        _, built_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert network.weight_bytes == exact
    assert refused_peak < exact / 50, refused_peak
    # drawn straight into float32: no float64 intermediate twice the weights' size
    assert exact <= built_peak < 1.2 * exact, built_peak


def test_many_layers_are_refused_before_they_are_validated() -> None:
    layers = [{"name": f"r{i}", "op": "relu", "inputs": ["x"]} for i in range(1_000_000)]
    description = {"inputs": [{"name": "x", "shape": [1, 4]}], "layers": layers}
    started = time.perf_counter()
    with pytest.raises(LimitError, match="1000000 layers"):
        Network.from_description(description, limits=Limits(max_layers=1000))
    with pytest.raises(NetworkError, match="at most 100000"):
        Network.from_description(description)
    assert time.perf_counter() - started < 3


# -- plans --------------------------------------------------------------------------------------
TWO_CONVS = net(conv("a"), {"name": "r", "op": "relu", "inputs": ["a"]},
                conv("b", "r", kernel=1, padding=0))


@pytest.mark.parametrize(("plan", "match"), [
    ({"assignment": {"a": "im2col"}}, "no algorithm to convolution(s) 'b'"),
    ({"assignment": {"a": "im2col", "b": "conv1x1", "zz": "im2col"}}, "does not have: 'zz'"),
    ({"assignment": {"a": "im2col", "b": "conv1x1", "r": "im2col"}}, "not convolutions: 'r'"),
    ({"assignment": {"a": "im2col", "b": "fft"}}, "unknown algorithm 'fft'"),
    ({"assignment": {"a": "im2col", "b": "conv1x1"}, "layouts": {"zz": "NCHW"}}, "'zz'"),
    ({"assignment": {"a": "im2col", "b": "conv1x1"}, "layouts": {"a": "NHWC"}},
     "convolution 'a'"),
    ({"assignment": {"a": "im2col", "b": "conv1x1"}, "network": "resnet50"},
     "made for network 'resnet50', not 't'"),
])
def test_plans_that_do_not_fit_the_network_are_refused(plan: dict, match: str) -> None:
    network = Network.from_description(TWO_CONVS)
    spec = plan_spec(json.dumps(plan))
    with pytest.raises(PlanError, match=match.replace("(", r"\(").replace(")", r"\)")):
        check_plan(network, spec.assignment, spec.layouts, made_for=spec.network)


@pytest.mark.parametrize("plan", [
    {"layouts": {}}, {"assignment": ["a", "im2col"]}, {"assignment": {"a": 1}},
    {"assignment": {"a": True}}, {"assignment": {}, "threads": "2"},
    {"assignment": {}, "threads": True}, {"assignment": {}, "threads": 0},
    {"assignment": {}, "layouts": {"r": "nchw"}}, {"assignment": {}, "network": 5},
    {"assignment": {"a" * 600_000: "im2col"}}, {"assignment": {}, "machine": nested(900)}, 7,
])
def test_malformed_plan_documents_are_one_short_error(plan: object) -> None:
    with pytest.raises(PlanError) as caught:
        plan_spec(json.dumps(plan))
    assert len(str(caught.value)) < 800 and " at 0x" not in str(caught.value)


def test_a_whole_plan_document_is_a_plan() -> None:
    network = Network.from_description(TWO_CONVS)
    spec = plan_spec(json.dumps({"network": "t", "machine": {"cpu": "x"}, "threads": 1,
                                 "assignment": {"a": "im2col", "b": "conv1x1"},
                                 "layouts": {"r": "NHWC"}, "layers": []}))
    check_plan(network, spec.assignment, spec.layouts, made_for=spec.network)


# -- the CLI ------------------------------------------------------------------------------------
def convplan(*args: str, cwd: Path) -> tuple[int, str, float]:
    """(exit status, stderr, peak RSS MiB) of one real `convplan` process (60 s at most)."""
    try:
        status, stderr, peak = run_convplan(args, cwd=cwd, timeout_s=60,
                                            env={"CONVPLAN_DB": str(cwd / "c.sqlite")})
    except subprocess.TimeoutExpired:
        pytest.fail(f"convplan {args} did not finish in 60 s")
    return status, stderr, peak / 2**20


def _npy_with_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 64


CLI_CASES = {
    "bias 'no'": (["plan", "d.json", "--no-profile"], net(conv(bias="no")), None, "bias"),
    "an attribute named self": (["plan", "d.json", "--no-profile"],
                                net({"name": "r", "op": "relu", "inputs": ["x"], "self": 1}),
                                None, "unknown attribute"),
    "900-deep attribute": (["plan", "d.json", "--no-profile"], net(conv(kernel=nested(900))),
                           None, "invalid network description"),
    "markup in a name": (["plan", "d.json", "--no-profile"],
                         net(conv(name="[bold red]x[/]", kernel=True)), None, "[bold red]x[/]"),
    "a [1000000, 1000000] input": (
        ["run", "d.json"], {"inputs": [{"name": "x", "shape": [1_000_000, 1_000_000]}],
                            "layers": [{"name": "r", "op": "relu", "inputs": ["x"]}]},
        None, "tensor 'x'"),
    "absurd weights (plan)": (["plan", "d.json", "--no-profile"],
                              net(conv(out_channels=10**7, kernel=8, padding=0)), None,
                              "weights reach"),
    "a plan for another network": (["run", "d.json", "--plan", "p.json"], TWO_CONVS,
                                   {"network": "other", "assignment": {"a": "im2col",
                                                                       "b": "conv1x1"}},
                                   "made for network 'other', not 't'"),
    "a deeply nested plan": (["run", "d.json", "--plan", "p.json"], TWO_CONVS,
                             "[" * 50_000 + "]" * 50_000, "plan p.json"),
    "--budget-seconds nan": (["plan", "d.json", "--no-profile", "--budget-seconds", "nan"],
                             TWO_CONVS, None, "--budget-seconds"),
    "--time-limit nan": (["plan", "d.json", "--no-profile", "--time-limit", "nan"], TWO_CONVS,
                         None, "--time-limit"),
    "--threads 99": (["run", "d.json", "--threads", "99"], TWO_CONVS, None, "--threads"),
    "an .npy declaring [100000, 100000]": (["run", "d.json", "--input", "x.npy"], TWO_CONVS,
                                           _npy_with_header((100_000, 100_000)), "shape"),
    "compare an absurd layer": (["compare", "c=100000,h=100000,w=100000,m=100000,k=3"], None,
                                None, "needs about"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_cli_refuses_hostile_input_in_one_line(tmp_path: Path, case: str) -> None:
    args, description, extra, match = CLI_CASES[case]
    if description is not None:
        (tmp_path / "d.json").write_text(json.dumps(description))
    if isinstance(extra, bytes):
        (tmp_path / "x.npy").write_bytes(extra)
    elif extra is not None:
        (tmp_path / "p.json").write_text(extra if isinstance(extra, str) else json.dumps(extra))
    status, stderr, rss_mib = convplan(*args, cwd=tmp_path)
    assert status == 2, (status, stderr[-2000:])
    assert "Traceback" not in stderr and stderr.startswith("error: "), stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and len(stderr) < 1000, stderr[:2000]
    assert match in stderr, stderr
    assert rss_mib < 600, rss_mib          # nothing of the declared size was allocated


# -- the service --------------------------------------------------------------------------------
LIMITED = {"CONVPLAN_MAX_LAYERS": "50", "CONVPLAN_MAX_TENSOR_BYTES": "8MiB",
           "CONVPLAN_MAX_WEIGHT_BYTES": "8MiB", "CONVPLAN_CONCURRENCY": "1"}


def _tiny(**change: object) -> dict:
    layers = [dict(layer) for layer in TINY["layers"]]
    layers[0].update(change)
    return {**TINY, "layers": layers}


def _b64_npy(data: bytes) -> str:
    return base64.b64encode(data).decode()


SERVICE_CASES = {
    "bias 'no'": ("/v1/plan", {"network": _tiny(bias="no"), "measure": False}, 400),
    "kernel true": ("/v1/plan", {"network": _tiny(kernel=True), "measure": False}, 400),
    "self": ("/v1/plan", {"network": _tiny(self=1), "measure": False}, 400),
    "900-deep attribute": ("/v1/plan", {"network": _tiny(kernel=nested(900)),
                                        "measure": False}, 422),
    "600 KB attribute": ("/v1/plan", {"network": _tiny(kernel="k" * 600_000),
                                      "measure": False}, 422),
    "threads as a string": ("/v1/plan", {"network": TINY, "threads": "1"}, 422),
    "a huge input": ("/v1/plan", {"network": {
        "inputs": [{"name": "x", "shape": [1_000_000, 1_000_000]}],
        "layers": [{"name": "r", "op": "relu", "inputs": ["x"]}]}, "measure": False}, 422),
    "weights over the limit at the last layer": ("/v1/plan", {"network": {
        **TINY, "layers": [*TINY["layers"][:-1], {"name": "fc", "op": "gemm",
                                                  "inputs": ["flat"],
                                                  "out_features": 300_000}]},
        "measure": False}, 422),
    "too much together": ("/v1/plan", {"network": {
        "inputs": [{"name": "x", "shape": [1, 1, 1024, 1024]}],
        "layers": [{"name": f"r{i}", "op": "relu", "inputs": [f"r{i - 1}" if i else "x"]}
                   for i in range(20)]}, "measure": False}, 422),
    "51 layers": ("/v1/plan", {"network": {
        "inputs": [{"name": "x", "shape": [1, 4]}],
        "layers": [{"name": f"r{i}", "op": "relu", "inputs": ["x"]} for i in range(51)]},
        "measure": False}, 422),
    "a plan missing a convolution": ("/v1/run", {"network": TINY, "plan": {
        "assignment": {"conv1": "im2col"}}}, 400),
    "a layout for a convolution": ("/v1/run", {"network": TINY, "plan": {
        "assignment": {"conv1": "im2col", "conv2": "conv1x1"}, "layouts": {"conv1": "NCHW"}}},
        400),
    "an .npy declaring [100000, 100000]": ("/v1/run", {
        "network": TINY, "algorithm": "im2col",
        "input": _b64_npy(_npy_with_header((100_000, 100_000)))}, 400),
}


def test_the_service_answers_hostile_json_with_json_4xx(tmp_path: Path) -> None:
    with running_server(tmp_path, LIMITED) as server, server.client() as client:
        for case, (path, body, status) in SERVICE_CASES.items():
            response = client.post(path, json=body)
            answer = assert_json_error(response, status)
            assert len(response.text) < 5000, (case, response.text[:300])
            assert answer["error"] != "internal_error", case
        deep = b'{"network": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert_json_error(client.post("/v1/plan", content=deep,
                                      headers={"content-type": "application/json"}), 400, 422)
        assert client.get("/healthz").json()["status"] == "ok"
        good = client.post("/v1/plan", json={"network": TINY, "measure": False})
        assert good.status_code == 200, good.text[:500]
        assert "Traceback" not in server.log_text()
