"""Network descriptions: parsing, shape inference, and one clear error for each bad input."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from convplan.selector.network import Network, NetworkError, check_description, parse_description

X = {"name": "x", "shape": [1, 3, 16, 16]}


def net(*layers: dict, **extra) -> dict:
    return {"name": "t", "inputs": [X], "layers": list(layers), **extra}


def conv(name: str, source: str, m: int = 8, **attrs) -> dict:
    return {"name": name, "op": "conv", "inputs": [source], "out_channels": m, "kernel": 3,
            "padding": 1, **attrs}


def test_shapes_are_inferred_through_the_graph() -> None:
    network = Network.from_description(net(
        conv("a", "x", stride=2), {"name": "r", "op": "relu", "inputs": ["a"]},
        conv("b", "r", 4), conv("c", "r", 6, kernel=1, padding=0),
        {"name": "cat", "op": "concat", "inputs": ["b", "c"], "axis": 1},
        {"name": "p", "op": "maxpool", "inputs": ["cat"], "kernel": 2, "stride": 2,
         "ceil_mode": True}))
    assert network.shapes["a"] == (1, 8, 8, 8)
    assert network.shapes["cat"] == (1, 10, 8, 8)
    assert network.shapes["p"] == (1, 10, 4, 4)
    assert network.outputs == ["p"]
    assert [n.name for n in network.conv_nodes] == ["a", "b", "c"]
    assert network.node("b").weights["weight"].shape == (4, 8, 3, 3)


def test_layers_may_come_in_any_order_and_run_topologically() -> None:
    network = Network.from_description(net(
        {"name": "r", "op": "relu", "inputs": ["a"]}, conv("a", "x"), outputs=["r"]))
    assert [n.name for n in network.nodes] == ["a", "r"]


def test_of_the_ready_layers_the_earliest_declared_runs_first() -> None:
    """Branches keep the order they were written in (so a description already in execution
    order keeps it), whatever their names."""
    network = Network.from_description(net(
        {"name": "z", "op": "relu", "inputs": ["x"]}, {"name": "b", "op": "relu", "inputs": ["m"]},
        {"name": "m", "op": "relu", "inputs": ["x"]}, {"name": "a", "op": "relu", "inputs": ["z"]},
        {"name": "s", "op": "add", "inputs": ["a", "b"]}, outputs=["s"]))
    assert [n.name for n in network.nodes] == ["z", "m", "b", "a", "s"]


def test_a_cycle_is_named_in_data_flow_order() -> None:
    relu = lambda name, source: {"name": name, "op": "relu", "inputs": [source]}  # noqa: E731
    with pytest.raises(NetworkError, match="the layers form a cycle") as caught:
        Network.from_description(net(relu("a", "c"), relu("b", "a"), relu("c", "b"),
                                     outputs=["c"]))
    path = re.findall(r"'(.)'", str(caught.value))
    assert len(path) == 4 and path[0] == path[-1]
    for source, user in itertools.pairwise(path):
        assert {"a": "b", "b": "c", "c": "a"}[source] == user


def test_seeded_weights_are_reproducible_and_given_weights_are_used() -> None:
    d = net(conv("a", "x"))
    w1 = Network.from_description(d).node("a").weights["weight"]
    w2 = Network.from_description(d).node("a").weights["weight"]
    w3 = Network.from_description({**d, "seed": 1}).node("a").weights["weight"]
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, w3)
    given = {"a": {"weight": np.ones((8, 3, 3, 3)), "bias": np.zeros(8)}}
    assert Network.from_description(d, given).node("a").weights["weight"].sum() == 8 * 27


def test_description_round_trips_through_json() -> None:
    network = Network.from_description(net(conv("a", "x", dilation=2, padding=2)))
    text = network.to_description().model_dump_json()
    again = Network.from_description(text)
    assert again.shapes == network.shapes
    assert again.node("a").operator.attrs == network.node("a").operator.attrs


@pytest.mark.parametrize(("description", "message"), [
    ("{", "invalid network description"),
    ('{"inputs": [], "layers": []}', "at least 1 item"),
    (json.dumps(net(conv("a", "x"))).replace('"inputs": [{', '"inputs": [{"extra": 1, '),
     "extra"),
    (net({"name": "a", "op": "warp", "inputs": ["x"]}), "unknown operator 'warp'"),
    (net({"name": "a", "op": "relu", "inputs": ["x", "x"]}), "relu takes 1 input"),
    (net({"name": "a", "op": "add", "inputs": ["x"]}), "add"),
    (net(conv("a", "x"), conv("b", "x", 4),
         {"name": "s", "op": "add", "inputs": ["a", "b"]}), "layer 's'"),
    (net(conv("a", "x", 8, kernel=21, padding=0)), "layer 'a'"),
    (net(conv("a", "nope")), "input 'nope' is neither"),
    (net(conv("a", "x"), conv("a", "x")), "layer name 'a' is used twice"),
    (net({"name": "a", "op": "relu", "inputs": ["b"]},
         {"name": "b", "op": "relu", "inputs": ["a"]}), "cycle"),
    (net(conv("a", "x", groups=3, m=8)), "not divisible by groups"),
    (net(conv("a", "x", stride=0)), "stride"),
    (net(conv("a", "x", colour="red")), "unknown attribute"),
    (net(conv("a", "x"), outputs=["zzz"]), "network output 'zzz'"),
    (net({"name": "f", "op": "flatten", "inputs": ["x"]},
         {"name": "g", "op": "gemm", "inputs": ["f"], "out_features": 4},
         conv("c", "g")), "layer 'c'"),
])
def test_bad_descriptions_give_one_clear_error(description, message: str) -> None:
    with pytest.raises(NetworkError, match=message):
        Network.from_description(description)


def test_wrong_given_weights_are_refused() -> None:
    with pytest.raises(NetworkError, match="weight 'weight' has shape"):
        Network.from_description(net(conv("a", "x")),
                                 {"a": {"weight": np.ones((8, 3, 5, 5)), "bias": np.zeros(8)}})
    with pytest.raises(NetworkError, match="needs"):
        Network.from_description(net(conv("a", "x")), {"a": {"weight": np.ones((8, 3, 3, 3))}})


def test_parse_description_reports_locations() -> None:
    with pytest.raises(NetworkError, match=r"layers\.0\.inputs"):
        parse_description(json.dumps({"inputs": [X], "layers": [{"name": "a", "op": "relu"}]}))


def test_checking_allocates_nothing_and_attaching_draws_the_weights() -> None:
    """Building is two steps: `check_description` (no weight exists) and `attach`."""
    import tracemalloc

    huge = net(conv("a", "x", 4096, kernel=31, padding=15),            # 47 MiB of weights
               conv("b", "a", 4096, kernel=31, padding=15))            # and 63 GB more
    tracemalloc.start()
    try:
        checked = check_description(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert checked.weight_bytes == 4 * (4096 * 3 * 31 * 31 + 4096 + 4096 * 4096 * 31 * 31
                                        + 4096)
    assert peak < 2**20
    assert all(not node.weights for node in checked.nodes)
    small = net(conv("a", "x"), {"name": "r", "op": "relu", "inputs": ["a"]}, conv("b", "r", 4))
    attached = check_description(small).attach()
    built = Network.from_description(small)
    assert [n.name for n in attached.nodes] == [n.name for n in built.nodes]
    for ours, theirs in zip(attached.nodes, built.nodes, strict=True):
        assert ours.weights.keys() == theirs.weights.keys()
        for key in ours.weights:
            np.testing.assert_array_equal(ours.weights[key], theirs.weights[key])
    assert sum(w.nbytes for n in attached.nodes for w in n.weights.values()) == \
        check_description(small).weight_bytes


def test_a_builtin_is_a_new_network_on_every_call() -> None:
    """No cache hands out a network a run has released: the paper networks are drawn again
    from their checked description, the ONNX models are copies sharing the file's arrays, and
    `load_network` imports them afresh (the caller then holds the only references)."""
    from convplan.selector.network import zoo

    first = zoo.builtin("alexnet")
    first.release_conv_weights()
    again = zoo.builtin("alexnet")
    assert again is not first and all(n.weights for n in again.conv_nodes)
    first.restore_weights()
    for a, b in zip(first.nodes, again.nodes, strict=True):
        assert a.weights.keys() == b.weights.keys()
        for key in a.weights:
            np.testing.assert_array_equal(a.weights[key], b.weights[key])   # the same draw
    light = zoo.builtin("onnx:squeezenet")
    light.release_conv_weights()
    shared = zoo.builtin("onnx:squeezenet")
    assert all(n.weights for n in shared.conv_nodes) and not shared.released
    fresh = zoo.load_network("onnx:squeezenet")
    node = shared.conv_nodes[0].name
    assert fresh.node(node).weights["weight"] is not shared.node(node).weights["weight"]
    assert not light.restorable         # the file's weights are not seeded
