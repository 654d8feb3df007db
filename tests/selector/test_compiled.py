"""Compiled plans (`selector.compiled`): compiled, loaded and run, they give exactly the
outputs of running the plan directly; their weights are read-only views of the mapped file
(file-backed, not the process's own memory); anything wrong with a file is one
CompiledPlanError saying what."""

from __future__ import annotations

import json
import mmap
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convplan.kernels.base import Prepared
from convplan.profiles.fingerprint import machine_fingerprint
from convplan.selector.baselines import lowest_memory_assignment
from convplan.selector.compiled import (
    FORMAT_VERSION,
    MAGIC,
    PAGE,
    compile_network,
    compile_plan,
    is_compiled,
    load_compiled,
    read_header,
)
from convplan.selector.inputs import random_inputs
from convplan.selector.network import (
    CompiledPlanError,
    Network,
    NetworkError,
    description_network,
    load_network,
)
from convplan.selector.runner import run_network, run_session
from convplan.selector.session import Session
from tests.selector.test_session import mixed_assignment
from tests.support.hostile_networks import random_plans

MiB = 2**20
#: The preamble's fields (as `selector.compiled` writes them): magic, version, flags, header
#: bytes, data offset, data bytes, data CRC, header CRC.
PREAMBLE = struct.Struct("<8sIIQQQII")

#: Small, with every kind of array: convolutions with and without bias (3x3, strided,
#: depthwise, 1x1) and a gemm's weights and bias.
SMALL = {"name": "small", "inputs": [{"name": "x", "shape": [1, 4, 12, 12]}],
         "layers": [
             {"name": "c1", "op": "conv", "inputs": ["x"], "out_channels": 8, "kernel": 3,
              "padding": 1},
             {"name": "r1", "op": "relu", "inputs": ["c1"]},
             {"name": "c2", "op": "conv", "inputs": ["r1"], "out_channels": 8, "kernel": 3,
              "stride": 2, "padding": 1, "bias": False},
             {"name": "dw", "op": "conv", "inputs": ["c2"], "out_channels": 8, "kernel": 3,
              "padding": 1, "groups": 8},
             {"name": "c3", "op": "conv", "inputs": ["dw"], "out_channels": 6, "kernel": 1},
             {"name": "add", "op": "add", "inputs": ["c3", "c3"]},
             {"name": "flat", "op": "flatten", "inputs": ["add"]},
             {"name": "fc", "op": "gemm", "inputs": ["flat"], "out_features": 5,
              "trans_b": True}]}


def small() -> Network:
    return description_network(SMALL)


def plain_run(network: Network, x: dict[str, np.ndarray], assignment: dict[str, str] | None,
              layouts: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    return run_network(network, x, assignment=assignment, layouts=layouts,
                       strict=assignment is not None, threads=1).outputs


def file_backed(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a memory-mapped file (NumPy wraps the map in a memoryview)."""
    root: object = a
    while isinstance(root, np.ndarray):
        root = root.base
    return isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap)


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, y in expected.items():
        np.testing.assert_array_equal(got[name], y)


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "kind"), [("alexnet", None), ("googlenet", "mixed"),
                                             ("onnx:squeezenet", "lowest")])
def test_a_compiled_plan_runs_as_the_plan_does(tmp_path: Path, model: str,
                                               kind: str | None) -> None:
    network = load_network(model)
    assignment = None if kind is None else (
        mixed_assignment if kind == "mixed" else lowest_memory_assignment)(network)
    x = random_inputs(network, seed=3)
    expected = plain_run(network, x, assignment)
    path = tmp_path / "model.cvplan"
    compile_network(network, path, assignment=assignment, strict=True, owned=True)
    assert network.released           # owned: each original went once written
    with Session(path, threads=1) as session:
        assert session.name == model and session.notes == []
        assert_same(session.run(x), expected)
        report = run_session(session, x)
        assert_same(report.outputs, expected)
        assert report.measured_peak_bytes <= report.predicted_peak_bytes
        # every weight the run holds comes from the file, once
        assert report.mapped_weight_bytes == report.weight_bytes > 0
        assert report.weights_released
        header = read_header(path)
        assert session.assignment == header.assignment
        assert session.predicted.arena_bytes == header.arena.size


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_any_plan_of_a_small_network_round_trips(tmp_path_factory: pytest.TempPathFactory,
                                                 data: st.DataObject, seed: int) -> None:
    """Any algorithm per convolution and any layout per other layer (NHWC copies included):
    the compiled file gives the direct run's outputs bit for bit."""
    network = small()
    assignment, layouts = data.draw(random_plans(network))
    x = random_inputs(network, seed=seed)
    expected = plain_run(network, x, assignment, layouts)
    path = tmp_path_factory.mktemp("plans") / "small.cvplan"
    compile_plan(network, path, {"network": "small", "assignment": assignment,
                                 "layouts": layouts})
    with Session(path, threads=1) as session:
        assert_same(session.run(x), expected)
        assert session.assignment == assignment


def test_a_batch_and_an_onnx_model_compile_for_their_shapes(tmp_path: Path) -> None:
    network = load_network("onnx:squeezenet", batch=2)
    x = random_inputs(network, seed=1)
    expected = plain_run(network, x, None)
    path = tmp_path / "sq.cvplan"
    compile_network(network, path)
    with Session(path, threads=1) as session:
        assert next(iter(session.inputs.values()))[0] == 2
        assert_same(session.run(x), expected)


# -- what is mapped --------------------------------------------------------------------------
def test_the_weights_are_read_only_views_of_the_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "small.cvplan"
    compile_network(small(), path)
    compiled = load_compiled(path)
    program = compiled.lowered.program
    arrays = [a for p in compiled.prepared.values() for a in (p.weights, p.bias)
              if a is not None] + program.constants()
    assert len(arrays) == 4 + 3 + 2        # 4 convolutions' weights, 3 biases, the gemm's b, bias
    assert all(file_backed(a) and not a.flags.writeable for a in arrays)
    assert compiled.mapped_bytes == sum(a.nbytes for a in arrays)
    assert all(a.ctypes.data % 64 == 0 for a in arrays)            # aligned
    with pytest.raises(ValueError, match="read-only"):
        arrays[0][...] = 0
    assert not any(s.weights for s in program.steps if s.kind == "conv")   # no originals


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_a_fresh_process_maps_the_weights_instead_of_holding_them(tmp_path: Path) -> None:
    """AlexNet's 233 MiB of weights: running the compiled file grows the process's own
    (anonymous) memory by far less than the weights, which are file-backed pages instead; and
    neither ONNX, the planner, its solvers, the cost store nor the service is imported (each
    costs the process megabytes before the model does)."""
    path = tmp_path / "alexnet.cvplan"
    compile_network(load_network("alexnet"), path, owned=True)
    script = """
import json, sys
import numpy as np
import convplan

def status(key):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ':'))

with convplan.Session(sys.argv[1], threads=1) as warm:        # imports, BLAS buffers
    warm.run(np.zeros((1, 3, 224, 224), np.float32))
heavy = {'onnx', 'onnxruntime', 'google', 'pulp', 'highspy', 'networkx', 'sqlite3',
         'pydantic_settings', 'fastapi', 'uvicorn', 'dask', 'distributed', 'typer', 'rich'}
anon, files = status('RssAnon'), status('RssFile')
with convplan.Session(sys.argv[1], threads=1) as session:
    session.run(np.zeros((1, 3, 224, 224), np.float32))
    print(json.dumps({"anon": status('RssAnon') - anon, "file": status('RssFile'),
                      "mapped": session.mapped_weight_bytes,
                      "heavy": sorted(m for m in sys.modules if m.split('.')[0] in heavy
                                      or m.startswith(('convplan.selector.planning',
                                                       'convplan.profiles.store',
                                                       'convplan.api', 'convplan.settings')))}))
"""
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["mapped"] > 200 * MiB
    assert result["anon"] < 32 * MiB, result["anon"] / MiB
    assert result["file"] > result["mapped"]
    assert result["heavy"] == []


# -- refusals --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("small") / "small.cvplan"
    compile_network(small(), path)
    return path.read_bytes()


def fields(data: bytes) -> list[Any]:
    return list(PREAMBLE.unpack_from(data, 0))


def with_preamble(data: bytes, **changes: int | bytes) -> bytes:
    """``data`` with preamble fields changed, the header's CRC made right again."""
    names = ["magic", "version", "flags", "header", "offset", "length", "data_crc", "crc"]
    values = dict(zip(names, fields(data), strict=True)) | changes
    head = PREAMBLE.pack(*values.values())[:-4]
    text = data[64:64 + values["header"]]
    crc = zlib.crc32(text, zlib.crc32(head))
    return head + struct.pack("<I", crc) + data[PREAMBLE.size:]


def with_header(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """``data`` with its JSON header changed by ``change``, every CRC right again: damage no
    checksum can see, which the loader must still refuse."""
    *_, header_bytes, offset, _, _, _ = fields(data)
    header = json.loads(data[64:64 + header_bytes])
    change(header)
    text = json.dumps(header).encode()
    assert 64 + len(text) <= offset
    body = data[:64] + text + bytes(offset - 64 - len(text)) + data[offset:]
    return with_preamble(body, header=len(text))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def header_of(data: bytes) -> dict[str, Any]:
    return json.loads(data[64:64 + fields(data)[3]])


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda d: b"", "shorter than the 64-byte preamble"),
    "cut in the preamble": (lambda d: d[:40], "shorter than the 64-byte preamble"),
    "cut in the header": (lambda d: d[:200], "does not fit in its 200 bytes"),
    "cut in the weights": (lambda d: d[:-100], "truncated or damaged"),
    "one byte more": (lambda d: d + b"\0", "truncated or damaged"),
    "flipped header byte": (lambda d: flip(d, 80), "header is damaged \\(CRC mismatch\\)"),
    "flipped preamble byte": (lambda d: flip(d, 33), "CRC mismatch|truncated"),
    "flipped reserved byte": (lambda d: flip(d, 60), "padding around its header"),
    "flipped padding byte": (lambda d: flip(d, fields(d)[4] - 1), "padding around its header"),
    "flipped weight byte": (lambda d: flip(d, len(d) - 7),
                            "weights are damaged \\(CRC mismatch\\)"),
    "wrong magic": (lambda d: b"PK\x03\x04" + d[4:], "does not start with the compiled-plan "
                                                      "magic"),
    "a text file": (lambda d: b'{"assignment": {}}\n' * 10, "magic"),
    "future version": (lambda d: with_preamble(d, version=FORMAT_VERSION + 1),
                       f"format version {FORMAT_VERSION + 1} is newer than the "
                       f"{FORMAT_VERSION} this convplan reads"),
    "flags": (lambda d: with_preamble(d, flags=1), "flags 1"),
    "another format": (lambda d: with_header(d, lambda h: h.update(format="zip")),
                       "header is not one this convplan reads: format"),
    "unknown key": (lambda d: with_header(d, lambda h: h.update(extra=1)), "extra"),
    "changed prepared form": (
        lambda d: with_header(d, lambda h: h["prepared"]["c1"].update(form="axes [0]")),
        "keeps its weights as .* the file as axes \\[0\\]; compile it again"),
    "another algorithm": (
        lambda d: with_header(d, lambda h: h["assignment"].update(c1="direct")),
        "no weights prepared for direct for layer 'c1'"),
    "wrong shape": (
        lambda d: with_header(d, lambda h: h["arrays"][0].update(shape=[1, 8, 36])),
        "needs prepared weights of shape"),
    "array outside the data": (
        lambda d: with_header(d, lambda h: h["arrays"][0].update(offset=1 << 40)),
        "lies outside the data"),
    "overlapping arena": (
        lambda d: with_header(d, lambda h: h["arena"]["offsets"].update(
            dict.fromkeys(h["arena"]["offsets"], 0))),
        "arena layout does not fit the program"),
    "missing constant": (
        lambda d: with_header(d, lambda h: h.update(arrays=[
            a for a in h["arrays"] if a["kind"] != "constant"])),
        "layer 'fc' needs constants"),
    "broken network": (
        lambda d: with_header(d, lambda h: h["network"]["layers"][0].update(op="nope")),
        "nope"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_file_is_one_clear_error(tmp_path: Path, compiled_file: bytes,
                                                      damage: str) -> None:
    change, message = DAMAGE[damage]
    path = tmp_path / "bad.cvplan"
    path.write_bytes(change(compiled_file))
    with pytest.raises(CompiledPlanError, match=message) as raised:
        Session(path)
    assert isinstance(raised.value, NetworkError)
    assert str(path) in str(raised.value)


def test_the_file_starts_with_the_magic_and_its_data_on_a_page(compiled_file: bytes) -> None:
    magic, version, flags, _, offset, length, *_ = fields(compiled_file)
    assert (magic, version, flags) == (MAGIC, FORMAT_VERSION, 0)
    assert offset % PAGE == 0 and offset + length == len(compiled_file)
    header = header_of(compiled_file)
    assert header["format"] == "convplan compiled plan"
    assert {a["kind"] for a in header["arrays"]} == {"prepared", "constant"}
    assert all(a["offset"] % 64 == 0 for a in header["arrays"])
    assert "weight" not in json.dumps(header["network"])       # no weights in the description


def test_a_compiled_plan_is_not_a_model_to_load_or_plan(tmp_path: Path) -> None:
    path = tmp_path / "small.cvplan"
    compile_network(small(), path)
    renamed = tmp_path / "small.bin"
    renamed.write_bytes(path.read_bytes())
    assert is_compiled(path) and is_compiled(renamed)
    assert not is_compiled(tmp_path / "missing.onnx")
    for named in (path, renamed):
        with pytest.raises(CompiledPlanError, match="is a compiled plan: it runs as it is"):
            load_network(named)
    with pytest.raises(CompiledPlanError, match="carries its plan and input shapes"):
        Session(path, plan={"assignment": {}})
    with pytest.raises(CompiledPlanError, match="carries its plan"):
        Session(str(path), batch=2)
    with Session(renamed, threads=1) as session:      # recognised by its magic
        assert session.outputs == {"fc": (1, 5)}
    with pytest.raises(CompiledPlanError, match="cannot read"):
        Session.from_compiled(tmp_path / "missing.cvplan")


# -- where it was planned --------------------------------------------------------------------
def test_a_plan_from_another_machine_runs_with_a_note(tmp_path: Path) -> None:
    """The plan's machine is recorded; here the same machine: no note. Another CPU: the file
    runs, with the same outputs, and a note naming what differs."""
    network = small()
    x = random_inputs(network, seed=2)
    expected = plain_run(network, x, None)
    assignment = {n.name: "im2col" for n in network.conv_nodes if n.name != "dw"} | {
        "dw": "depthwise"}
    here = machine_fingerprint(1)
    elsewhere = here | {"cpu": "Some Other CPU", "logical_cores": 64}
    for machine, note in ((here, None), (elsewhere, "cpu, logical_cores differ")):
        path = tmp_path / "small.cvplan"
        header = compile_plan(small(), path, {
            "network": "small", "assignment": assignment, "machine": machine, "threads": 1,
            "memory_cap_bytes": 10 * MiB, "inputs": {"x": [1, 4, 12, 12]}})
        assert header.planned_on == machine and header.plan["memory_cap_bytes"] == 10 * MiB
        with Session(path) as session:
            assert session.threads == 1                    # the plan's
            got = session.run(x)
            if note is None:
                assert session.notes == []
            else:
                assert len(session.notes) == 1 and note in session.notes[0]
                assert "planned on another machine" in session.notes[0]
        assert_same(got, plain_run(small(), x, assignment))
    assert list(expected) == list(got)


def test_a_plan_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "small.cvplan"
    with pytest.raises(NetworkError, match="made for network 'other'"):
        compile_plan(small(), path, {"network": "other", "assignment": {}})
    with pytest.raises(NetworkError, match="assigns no algorithm"):
        compile_plan(small(), path, {"assignment": {"c1": "im2col"}})
    spent = small()
    spent.release_conv_weights()
    with pytest.raises(ValueError, match="'c1' were released"):
        compile_network(spent, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_prepared_arrays_given_to_a_session_stay_the_files(tmp_path: Path) -> None:
    path = tmp_path / "small.cvplan"
    compile_network(small(), path)
    with Session(path, threads=1) as session:
        prepared: dict[str, Prepared] = session.executor.prepared
        assert prepared and all(file_backed(p.weights) for p in prepared.values())
        assert session.mapped_weight_bytes == load_compiled(path).mapped_bytes


def test_the_python_api_compiles_and_runs_a_file(tmp_path: Path) -> None:
    """`convplan.compile` then `convplan.run` of the file: the outputs of `convplan.run` of
    the plan; a `Network` given to compile is left whole."""
    import convplan

    network = small()
    plan = {"network": "small", "assignment": {"c1": "winograd-2x2-3x3", "c2": "mec-row",
                                               "dw": "depthwise", "c3": "conv1x1-nhwc"}}
    x = random_inputs(network, seed=4)
    path = tmp_path / "small.cvplan"
    header = convplan.compile(network, path, plan)
    assert not network.released and all(n.weights for n in network.nodes if n.op == "conv")
    assert header.assignment == plan["assignment"]
    report = convplan.run(path, inputs=x, threads=1)
    assert report.mapped_weight_bytes == report.weight_bytes
    assert_same(report.outputs, convplan.run(network, plan, x, threads=1).outputs)
    with pytest.raises(CompiledPlanError, match="carries its plan"):
        convplan.run(path, plan)


def test_verify_false_skips_only_the_weights_crc(tmp_path: Path, compiled_file: bytes) -> None:
    """For a deployer who checked the file once: the header's CRC is still checked, the
    data's is not (a flipped weight byte then goes unseen, as documented)."""
    path = tmp_path / "small.cvplan"
    damaged = flip(compiled_file, len(compiled_file) - 7)
    path.write_bytes(damaged)
    with pytest.raises(CompiledPlanError, match="weights are damaged"):
        Session.from_compiled(path)
    Session.from_compiled(path, verify=False).close()
    path.write_bytes(flip(damaged, 80))
    with pytest.raises(CompiledPlanError, match="header is damaged"):
        Session.from_compiled(path, verify=False)
