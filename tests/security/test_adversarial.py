"""Hostile input, at the command line where it makes sense: pickled code in weights, broken
and lying ONNX files, external data that points out of the model's folder, recipes with
Python tags, corrupt datasets, and run directories that must not be touched.

Every case expects exit code 2, one line on stderr (no traceback) and nothing created or
overwritten. External-data cases run twice: with onnx installed, and without it (the
device case), where edgekd reads the model's protobuf itself.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from clitools import cli, refused
from edgekd.errors import ModelFileError
from edgekd.io import onnxfile
from edgekd.io.onnxfile import check_onnx_file
from edgekd.runtime.session import make_session, optimized_op_counts

REPO = Path(__file__).resolve().parents[2]
FAST_BENCH = ["--runs", "2", "--warmup", "0", "--min-seconds", "0"]
W = np.arange(4, dtype=np.float32)  # the external tensor of every model here: 16 bytes
# `python -c` entry point that hides onnx, as on a device with only onnxruntime installed
NO_ONNX_MAIN = "import sys; sys.modules['onnx'] = None; from edgekd.cli import main; main(prog_name='edgekd')"


def snapshot(folder: Path) -> dict:
    """Every path under `folder` (the folder included) -> (bytes or None, mtime_ns)."""
    entries = {".": (None, folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        entries[str(path.relative_to(folder))] = (path.read_bytes() if path.is_file() else None, st.st_mtime_ns)
    return entries


@pytest.fixture(params=["onnx", "no-onnx"])
def reader(request, monkeypatch):
    """Run a test with onnx, then as on a device without it (edgekd's own protobuf reader)."""
    if request.param == "no-onnx":
        monkeypatch.setattr(onnxfile, "_onnx", lambda: None)
    return request.param


# --------------------------------------------------------------------------------------
# Weights: pickles must never run, broken files are bad input


class RunsCommand:
    """Unpickling this runs a shell command (here: create the canary file)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_the_pickle_payload_is_live(tmp_path):
    """Control: the payload used below really runs its command when unpickled."""
    canary = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(RunsCommand(f"touch '{canary}'")))
    assert canary.exists()


def _weights(kind: str, canary: Path) -> tuple[str, bytes]:
    import torch

    evil = RunsCommand(f"touch '{canary}'")
    good = _torch_bytes({"w": torch.zeros(3)})
    safetensors_header = b'{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}'
    good_st = struct.pack("<Q", len(safetensors_header)) + safetensors_header + bytes(12)
    return {
        "pickle-object.pt": ("evil.pt", _torch_bytes(evil)),
        "pickle-in-state-dict.pth": ("evil.pth", _torch_bytes({"features.0.0.weight": evil})),
        "pickle-as-safetensors": ("evil.safetensors", _torch_bytes(evil)),
        "plain-pickle.pt": ("evil.pt", pickle.dumps(evil)),  # legacy (non-zip) torch format
        "truncated.pt": ("w.pt", good[: len(good) // 2]),
        "empty.pt": ("w.pt", b""),
        "random.pt": ("w.pt", np.random.default_rng(0).bytes(2000)),
        "truncated.safetensors": ("w.safetensors", good_st[:-5]),
        "empty.safetensors": ("w.safetensors", b""),
        "random.safetensors": ("w.safetensors", np.random.default_rng(1).bytes(2000)),
        "huge-header.safetensors": ("w.safetensors", struct.pack("<Q", 2**60) + b"{}"),
    }[kind]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, about the plain pickle
@pytest.mark.parametrize("kind", [
    "pickle-object.pt", "pickle-in-state-dict.pth", "pickle-as-safetensors", "plain-pickle.pt",
    "truncated.pt", "empty.pt", "random.pt", "truncated.safetensors", "empty.safetensors", "random.safetensors",
    "huge-header.safetensors",
])
def test_export_refuses_bad_weights(tmp_path, canary, kind):
    name, data = _weights(kind, canary)
    weights = tmp_path / name
    weights.write_bytes(data)
    out = tmp_path / "out.onnx"
    result = cli("export", "--onnx", "--weights", weights, "--arch", "tinycnn", "-o", out, "--no-progress")
    refused(result, str(weights))
    assert not canary.exists()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left either


def test_export_never_overwrites_an_existing_output(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the user's own file")
    before = snapshot(tmp_path)
    result = cli("export", "--onnx", "--weights", tmp_path / "missing.pt", "--arch", "tinycnn", "-o", out)
    refused(result, "already exists")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------
# ONNX files that are not ONNX


def _add_model(path: Path, w_tensor=None) -> Path:
    """y = x + W for x of shape (N, 4); W inline unless `w_tensor` is given."""
    w_tensor = w_tensor if w_tensor is not None else numpy_helper.from_array(W, "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w_tensor],
    )
    _write(graph, path)
    return path


def _write(graph, path: Path, functions=()) -> None:
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())  # not onnx.save: it would resolve external data


@pytest.mark.parametrize("content", ["random", "truncated", "empty", "text"])
def test_bench_refuses_files_that_are_not_onnx(tmp_path, reader, content):
    valid = _add_model(tmp_path / "valid.onnx").read_bytes()
    data = {
        "random": np.random.default_rng(0).bytes(1000),
        "truncated": valid[: len(valid) // 2],
        "empty": b"",
        "text": b"<html>404 not found</html>\n",
    }[content]
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    result = cli("bench", path, *FAST_BENCH)  # no --quiet: the error must still be the only line
    refused(result, str(path))


# --------------------------------------------------------------------------------------
# External data: refused before any external file is read


def _external(location: str, name: str = "W", **info) -> TensorProto:
    tensor = numpy_helper.from_array(W, name)
    set_external_data(tensor, location, **info)
    tensor.ClearField("raw_data")
    return tensor


def _ext_model(folder: Path, location: str, **info) -> Path:
    folder.mkdir(exist_ok=True)
    return _add_model(folder / "model.onnx", _external(location, **info))


@pytest.fixture
def layout(tmp_path):
    """tmp/models/ holds the models and a good w.bin; tmp/outside/ is off limits."""
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    W.tofile(models / "w.bin")
    W.tofile(outside / "secret.bin")
    return models, outside


def test_in_folder_external_data_is_accepted_and_benched(layout, reader):
    models, _ = layout
    (models / "sub").mkdir()
    W.tofile(models / "sub" / "w.bin")
    for location, info in (("w.bin", {}), ("sub/w.bin", {}), ("./w.bin", {"offset": 0, "length": 16})):
        path = _ext_model(models, location, **info)
        result = cli("bench", path, *FAST_BENCH, "--json", "--no-progress")
        assert result.exit_code == 0, result.output
        assert '"name": "model"' in result.output
    # ... and ONNX Runtime really used the external values: y = x + [0, 1, 2, 3]
    session = make_session(path)
    np.testing.assert_array_equal(session.run(None, {"x": np.zeros((1, 4), np.float32)})[0], [W])


@pytest.mark.parametrize("case, expected", [
    ("dotdot", "'..' component"),
    ("dotdot-inside", "'..' component"),  # models/../models/w.bin stays inside, but '..' is refused outright
    ("backslash-dotdot", "'..' component"),
    ("absolute", "absolute path"),
    ("symlink-out", "symbolic link"),
    ("symlink-in", "symbolic link"),  # even a link to a file in the folder: links are not followed
    ("symlinked-folder", "passes through the symbolic link 'sub'"),
    ("missing", "does not exist"),
    ("folder", "not a regular file"),
    ("through-file", "which is not a folder"),
    ("length-beyond", "needs bytes 8..24 but the file has 16 bytes"),
    ("offset-beyond", "needs offset 64 but the file has 16 bytes"),
    ("negative-offset", "not a non-negative integer"),
    ("empty", "is empty"),
])
def test_external_data_outside_or_broken_is_refused(layout, reader, case, expected):
    models, outside = layout
    location, info = {
        "dotdot": ("../outside/secret.bin", {}),
        "dotdot-inside": ("../models/w.bin", {}),
        "backslash-dotdot": ("..\\outside\\secret.bin", {}),
        "absolute": (str(outside / "secret.bin"), {}),
        "symlink-out": ("link.bin", {}),
        "symlink-in": ("alias.bin", {}),
        "symlinked-folder": ("sub/secret.bin", {}),
        "missing": ("nope.bin", {}),
        "folder": ("dir", {}),
        "through-file": ("w.bin/x", {}),
        "length-beyond": ("w.bin", {"offset": 8, "length": 16}),
        "offset-beyond": ("w.bin", {"offset": 64}),
        "negative-offset": ("w.bin", {"offset": -1}),
        "empty": ("", {}),
    }[case]
    (models / "link.bin").symlink_to(outside / "secret.bin")
    (models / "alias.bin").symlink_to("w.bin")
    (models / "sub").symlink_to(outside, target_is_directory=True)
    (models / "dir").mkdir()
    path = _ext_model(models, location, **info)
    with pytest.raises(ModelFileError) as info_:
        check_onnx_file(path)
    message = str(info_.value)
    assert expected in message and "'W'" in message and "\n" not in message
    if location:
        assert repr(location) in message  # names the location as the model gives it
    # ... and at the command line
    refused(cli("bench", path, *FAST_BENCH), expected)


def _if_graph(inner_initializers, depth: int):
    """An If whose then-branch adds W (an initializer of the innermost branch) to x."""
    if depth == 1:
        then_nodes, then_inits = [helper.make_node("Add", ["x", "W"], ["t"])], inner_initializers
    else:
        then_nodes, then_inits = _if_graph(inner_initializers, depth - 1)
    then_branch = helper.make_graph(then_nodes, f"then{depth}", [],
                                    [helper.make_tensor_value_info("t" if depth == 1 else f"y{depth - 1}",
                                                                   TensorProto.FLOAT, ["N", 4])], then_inits)
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], [f"e{depth}"])], f"else{depth}", [],
                                    [helper.make_tensor_value_info(f"e{depth}", TensorProto.FLOAT, ["N", 4])])
    cond = numpy_helper.from_array(np.array(True), f"cond{depth}")
    node = helper.make_node("If", [f"cond{depth}"], [f"y{depth}"], then_branch=then_branch, else_branch=else_branch)
    return [helper.make_node("Constant", [], [f"cond{depth}"], value=cond), node], []


def _model_with_tensor_in(where: str, tensor: TensorProto, path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    functions = []
    if where == "constant-attribute":
        nodes, inits = [helper.make_node("Constant", [], ["W"], value=tensor),
                        helper.make_node("Add", ["x", "W"], ["y"])], []
    elif where == "sparse-initializer":
        indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "W_indices")
        sparse = helper.make_sparse_tensor(tensor, indices, [4])
        graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g", [x], [y],
                                  sparse_initializer=[sparse])
        _write(graph, path)
        return path
    elif where in ("if-subgraph", "nested-if-subgraph"):
        nodes, _ = _if_graph([tensor], depth=1 if where == "if-subgraph" else 2)
        nodes.append(helper.make_node("Identity", [nodes[-1].output[0]], ["y"]))
        inits = []
    elif where == "function":
        body = [helper.make_node("Constant", [], ["W"], value=tensor), helper.make_node("Add", ["a", "W"], ["b"])]
        functions = [helper.make_function("local", "AddW", ["a"], ["b"], body, [helper.make_opsetid("", 17)])]
        nodes, inits = [helper.make_node("AddW", ["x"], ["y"], domain="local")], []
    else:
        raise AssertionError(where)
    _write(helper.make_graph(nodes, "g", [x], [y], inits), path, functions)
    return path


@pytest.mark.parametrize("where", ["constant-attribute", "sparse-initializer", "if-subgraph", "nested-if-subgraph",
                                   "function"])
def test_external_data_is_found_wherever_a_tensor_can_be(layout, reader, where):
    models, _ = layout
    good = _model_with_tensor_in(where, _external("w.bin"), models / "good.onnx")
    check_onnx_file(good)  # the check accepts the model...
    session = make_session(good)  # ...and it is a real one: ONNX Runtime runs it
    np.testing.assert_array_equal(session.run(None, {"x": np.zeros((1, 4), np.float32)})[0], [W])
    bad = _model_with_tensor_in(where, _external("../outside/secret.bin"), models / "bad.onnx")
    with pytest.raises(ModelFileError, match=r"tensor 'W' has external data at '\.\./outside/secret\.bin'"):
        check_onnx_file(bad)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_protobuf_tricks_do_not_hide_external_data(layout, reader):
    """A second `graph` field is merged into the first, and data_location written as a
    10-byte varint 2**32 + 1 is read as the int32 1 (EXTERNAL): onnx, ONNX Runtime and
    edgekd's own reader must all see the same external tensor."""
    models, _ = layout
    tensor = numpy_helper.from_array(W, "W")
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../outside/secret.bin"
    tensor_bytes = tensor.SerializeToString() + _varint(14 << 3) + _varint(2**32 + 1)
    clean = models / "clean.onnx"
    _add_model(clean)
    model = onnx.load(str(clean))
    del model.graph.initializer[:]
    path = models / "tricky.onnx"
    path.write_bytes(model.SerializeToString() + _field(7, _field(5, tensor_bytes)))
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    with pytest.raises(ModelFileError, match="'..' component"):
        check_onnx_file(path)


def test_a_tensor_split_over_two_fields_is_read_merged(layout, reader):
    """Constant's `t` given twice: the first holds the location, the second says EXTERNAL.
    protobuf merges them into one external tensor; so must edgekd's reader."""
    models, _ = layout
    location_part = numpy_helper.from_array(W, "W")
    location_part.ClearField("raw_data")
    entry = location_part.external_data.add()
    entry.key, entry.value = "location", "../outside/secret.bin"
    flag_part = _varint(14 << 3) + _varint(1)  # data_location = EXTERNAL
    attribute = helper.make_attribute("value", location_part).SerializeToString() + _field(5, flag_part)
    node = helper.make_node("Constant", [], ["W"]).SerializeToString() + _field(5, attribute)
    clean = _add_model(models / "clean.onnx")
    model = onnx.load(str(clean))
    del model.graph.initializer[:]
    path = models / "split.onnx"
    path.write_bytes(model.SerializeToString() + _field(7, _field(1, node)))
    with pytest.raises(ModelFileError, match="'..' component"):
        check_onnx_file(path)


def test_every_session_entry_point_checks_first(layout, reader, tmp_path):
    """make_session (bench, compress), export's parity check and int8 quantization all
    refuse the file before ONNX Runtime or onnx open its external data."""
    from edgekd.onnx_export import ExportConfig, parity
    from edgekd.quant.config import QuantConfig
    from edgekd.quant.ptq import ptq

    models, _ = layout
    bad = _ext_model(models, "../outside/secret.bin")
    calls = {
        "make_session": lambda: make_session(bad),
        "optimized_op_counts": lambda: optimized_op_counts(bad),
        "parity": lambda: parity(None, bad, (4,), ExportConfig()),
        "ptq": lambda: ptq(bad, tmp_path / "int8.onnx", calib_images=np.zeros((2, 4), np.float32),
                           cfg=QuantConfig(), progress=False),
    }
    for name, call in calls.items():
        if name == "optimized_op_counts" and reader == "no-onnx":
            assert call() is None  # needs onnx to read the optimized graph: no session at all
            continue
        with pytest.raises(ModelFileError, match="'..' component"):
            call()
    assert not (tmp_path / "int8.onnx").exists()


def test_duplicate_location_keys_are_refused(layout, reader):
    models, _ = layout
    tensor = _external("w.bin")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../outside/secret.bin"
    path = _add_model(models / "model.onnx", tensor)
    with pytest.raises(ModelFileError, match="gives the key 'location' twice"):
        check_onnx_file(path)


def test_wire_reader_field_numbers_match_onnx():
    fields = {
        "model": onnx.ModelProto, "training": onnx.TrainingInfoProto, "function": onnx.FunctionProto,
        "graph": onnx.GraphProto, "node": onnx.NodeProto, "attribute": onnx.AttributeProto,
        "sparse": onnx.SparseTensorProto,
    }
    names = {
        onnx.ModelProto: {"graph": "graph", "training_info": "training", "functions": "function"},
        onnx.TrainingInfoProto: {"initialization": "graph", "algorithm": "graph"},
        onnx.FunctionProto: {"node": "node", "attribute_proto": "attribute"},
        onnx.GraphProto: {"node": "node", "initializer": "tensor", "sparse_initializer": "sparse"},
        onnx.NodeProto: {"attribute": "attribute"},
        onnx.AttributeProto: {"t": "tensor", "g": "graph", "tensors": "tensor", "graphs": "graph",
                              "sparse_tensor": "sparse", "sparse_tensors": "sparse"},
        onnx.SparseTensorProto: {"values": "tensor", "indices": "tensor"},
    }
    for kind, message in fields.items():
        expected = {}
        for field_name, child in names[message].items():
            descriptor = message.DESCRIPTOR.fields_by_name[field_name]
            repeated = (descriptor.is_repeated if hasattr(descriptor, "is_repeated")  # protobuf >= 6
                        else descriptor.label == descriptor.LABEL_REPEATED)
            expected[descriptor.number] = (child, repeated)
        assert onnxfile._WIRE_SCHEMA[kind] == expected, kind
    tensor = onnx.TensorProto.DESCRIPTOR.fields_by_name
    assert (tensor["name"].number, tensor["external_data"].number, tensor["data_location"].number) == (
        onnxfile._TENSOR_NAME, onnxfile._TENSOR_EXTERNAL_DATA, onnxfile._TENSOR_DATA_LOCATION)
    assert onnx.TensorProto.EXTERNAL == 1


def test_deeply_nested_protobuf_is_refused_not_a_crash(tmp_path, reader):
    graph = b""
    for _ in range(150):  # graph.node.attribute.g: 450 messages deep, protobuf's limit is 100
        graph = _field(1, _field(5, _field(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_varint(1 << 3) + _varint(8) + _field(7, graph))  # ir_version 8, graph
    refused(cli("bench", path, *FAST_BENCH), "not a valid ONNX model")


# FIFOs: opening one for reading blocks until a writer appears, so a check that opened
# the target would hang; subprocess.run's timeout turns that into a failure, not a hang.
FIFO_CASES = ["dotdot", "absolute", "symlink-out", "fifo-in-folder", "model-is-fifo", "eval-set-is-fifo"]


@pytest.mark.parametrize("with_onnx", [True, False], ids=["onnx", "no-onnx"])
def test_fifo_targets_are_refused_without_being_opened(tmp_path, with_onnx):
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    os.mkfifo(outside / "fifo")
    os.mkfifo(models / "fifo.bin")
    os.mkfifo(models / "model-fifo.onnx")
    os.mkfifo(tmp_path / "eval.npz")
    (models / "link.bin").symlink_to(outside / "fifo")
    W.tofile(models / "w.bin")
    good = _add_model(models / "good.onnx", _external("w.bin"))
    commands = {}
    for case in FIFO_CASES:
        location = {"dotdot": "../outside/fifo", "absolute": str(outside / "fifo"), "symlink-out": "link.bin",
                    "fifo-in-folder": "fifo.bin"}.get(case)
        args = ["bench", *FAST_BENCH]
        if location is not None:
            args.append(_add_model(models / f"{case}.onnx", _external(location)))
        elif case == "model-is-fifo":
            args.append(models / "model-fifo.onnx")
        else:
            args += [good, "--data", tmp_path / "eval.npz"]
        commands[case] = [str(a) for a in args]
    entry = ["-m", "edgekd"] if with_onnx else ["-c", NO_ONNX_MAIN]
    started = {case: subprocess.Popen([sys.executable, *entry, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO)
               for case, args in commands.items()}  # in parallel: each would block forever if it opened a FIFO
    deadline = time.monotonic() + 60
    try:
        for case, process in started.items():
            try:
                stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{case}: edgekd blocked, so it opened a FIFO it should have refused")
            result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            expected = {"model-is-fifo": "is not a file", "eval-set-is-fifo": "not a regular file",
                        "fifo-in-folder": "not a regular file"}.get(case, "refused before reading it")
            refused(result, expected)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------------------
# Recipes


YAML_PAYLOAD = "!!python/object/apply:os.system [\"touch '{canary}'\"]"
RECIPES = {
    "python-tag": (f"teacher:\n  epochs: {YAML_PAYLOAD}\n", "python/object/apply"),
    "python-tag-top": (f"{YAML_PAYLOAD}\n", "python/object/apply"),
    "unknown-key": ("distill:\n  temprature: 3\n", "distill.temprature"),
    "wrong-type": ("teacher:\n  epochs: three\n", "teacher.epochs"),
    "negative-epochs": ("distill:\n  epochs: -1\n", "distill.epochs"),
    "not-a-mapping": ("- teacher\n- distill\n", "mapping"),
    "section-not-a-mapping": ("quantize: yes\n", "quantize"),
}


def test_the_yaml_payload_is_live(tmp_path):
    """Control: a loader that builds Python objects would run the recipes' command."""
    import yaml

    canary = tmp_path / "LIVE"
    yaml.unsafe_load(YAML_PAYLOAD.replace("{canary}", str(canary)))
    assert canary.exists()


@pytest.mark.parametrize("case", list(RECIPES))
def test_bad_recipes_are_refused_before_anything_is_created(tmp_path, canary, case):
    text, expected = RECIPES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("{canary}", str(canary)))
    out = tmp_path / "run"
    refused(cli("compress", recipe, "--out", out, "--no-progress"), expected)
    assert not canary.exists()
    assert not out.exists()


def test_python_tags_in_flags_are_refused(tmp_path, canary):
    payload = YAML_PAYLOAD.replace("{canary}", str(canary))
    out = tmp_path / "run"
    refused(cli("compress", "--set", f"teacher.epochs={payload}", "--out", out, "--no-progress"), "--set teacher.epochs")
    refused(cli("export", "--onnx", "--weights", tmp_path / "w.pt", "--arch", "tinycnn", "--arch-args", payload,
                "-o", tmp_path / "x.onnx"), "--arch-args")
    assert not canary.exists() and not out.exists() and not (tmp_path / "x.onnx").exists()


def test_resume_with_a_poisoned_recipe(tmp_path, canary):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: " + YAML_PAYLOAD.replace("{canary}", str(canary)) + "\n")
    before = snapshot(run)
    refused(cli("compress", "--resume", run, "--no-progress"))
    assert not canary.exists()
    assert snapshot(run) == before


# --------------------------------------------------------------------------------------
# Datasets


def _idx(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _idx_folder(folder: Path, train_n=6, train_labels=6, test_n=4) -> Path:
    folder.mkdir()
    arrays = {
        "train-images-idx3-ubyte": np.zeros((train_n, 3, 2), np.uint8),
        "train-labels-idx1-ubyte": np.zeros(train_labels, np.uint8),
        "t10k-images-idx3-ubyte": np.zeros((test_n, 3, 2), np.uint8),
        "t10k-labels-idx1-ubyte": np.zeros(test_n, np.uint8),
    }
    for name, array in arrays.items():
        (folder / name).write_bytes(_idx(array))
    return folder


def _compress_refused(tmp_path, *data_args, expected=()):
    out = tmp_path / "out"
    refused(cli("compress", *data_args, "--out", out, "--no-progress"), *expected)
    assert not out.exists()


def test_truncated_idx(tmp_path):
    folder = _idx_folder(tmp_path / "fm")
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-3])
    _compress_refused(tmp_path, "--data", "fashion-mnist", "--data-path", folder, expected=[str(images), "truncated"])


def test_idx_images_and_labels_disagree(tmp_path):
    folder = _idx_folder(tmp_path / "fm", train_labels=5)
    _compress_refused(tmp_path, "--data", "fashion-mnist", "--data-path", folder, expected=["6 images", "5 labels"])


def test_idx_gz_that_expands_beyond_its_header(tmp_path):
    """A gzip bomb: 36 bytes of images promised, 20 MB delivered; reading stops at byte 37."""
    folder = _idx_folder(tmp_path / "fm")
    images = folder / "train-images-idx3-ubyte"
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images.read_bytes() + bytes(20 << 20)))
    images.unlink()
    _compress_refused(tmp_path, "--data", "fashion-mnist", "--data-path", folder,
                      expected=["train-images-idx3-ubyte.gz", "but the file has more"])


def test_idx_header_whose_size_overflows_int64(tmp_path):
    folder = _idx_folder(tmp_path / "fm")
    # 4 dims of 2**32 - 1 bytes each: about 2**128 bytes, which wraps around in int64 arithmetic
    forged = struct.pack(">BBBB", 0, 0, 0x08, 4) + struct.pack(">4I", *[2**32 - 1] * 4)
    (folder / "train-images-idx3-ubyte").write_bytes(forged)
    _compress_refused(tmp_path, "--data", "fashion-mnist", "--data-path", folder, expected=["truncated or corrupt"])


def test_npz_with_mismatched_lengths(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 4, 4), np.uint8), y=np.zeros(9, np.int64))
    _compress_refused(tmp_path, "--data", path, expected=["10 images", "9 labels"])


def test_npz_with_pickled_objects(tmp_path, canary):
    path = tmp_path / "data.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = RunsCommand(f"touch '{canary}'")
    np.savez(path, x=evil, y=np.zeros(1, np.int64))
    _compress_refused(tmp_path, "--data", path, expected=[str(path)])
    refused(cli("bench", _add_model(tmp_path / "m.onnx"), "--data", path, *FAST_BENCH, "--no-progress"), str(path))
    assert not canary.exists()


def test_cifar_pickle_that_runs_code(tmp_path, canary):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        (folder / name).write_bytes(pickle.dumps({"data": RunsCommand(f"touch '{canary}'")}))
    _compress_refused(tmp_path, "--data", "cifar10", "--data-path", tmp_path, expected=["refusing to unpickle"])
    assert not canary.exists()


# --------------------------------------------------------------------------------------
# Run directories


def test_existing_run_directory_with_user_files_is_not_touched(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes, not an edgekd run\n")
    (run / "model.int8.onnx").write_bytes(b"a file that happens to share an artifact's name")
    os.utime(run / "notes.txt", ns=(1_000_000_000, 1_000_000_000))  # an old mtime: any write would change it
    before = snapshot(run)
    refused(cli("compress", "--out", run, "--no-progress"), str(run), "--resume", "--force")
    assert snapshot(run) == before
