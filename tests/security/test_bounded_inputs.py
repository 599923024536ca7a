"""Inputs whose size is not what they hold, bad values that were "internal errors", and
nonsense that was accepted: recipes, --set values, datasets and weights files. Each refusal
is a BadInput (exit 2) with one short line; crafted small files (a YAML alias bomb, a sparse
safetensors file declaring gigabytes, npz files with a huge declared member or label) are
refused in a child process whose peak RSS is asserted."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.configtools import MAX_MESSAGE
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_arrays, load_splits
from edgekd.errors import ConfigError, DataError, EdgekdError, ModelFileError
from edgekd.io.artifacts import TensorInfo, load_state_dict, safetensors_header
from edgekd.recipe import Recipe, apply_override, parse_yaml_mapping
from edgekd.runtime.config import BenchConfig

RSS_LIMIT_MB = 500
GIB = 1024**3


def bad_input(exc_info) -> str:
    """The error is a BadInput (exit 2) whose message is one line of at most MAX_MESSAGE characters."""
    error = exc_info.value
    assert isinstance(error, EdgekdError) and error.exit_code == 2
    message = str(error)
    assert "\n" not in message and len(message) <= MAX_MESSAGE, message
    return message


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    """A few hundred bytes of YAML that expand to fanout**levels strings (9**9: 387 million)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fanout) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    return "\n".join(lines) + f"\nteacher: {{arch_args: {{x: *a{levels - 1}}}}}\n"


# A child that runs `call` and reports the refusal and its own peak RSS: VmHWM of its memory
# map (ru_maxrss would also count the pytest process it was forked from: Linux keeps the
# high-water mark of the image a process had before exec).
REFUSE = """
from edgekd.errors import EdgekdError
try:
    {call}
    print("ACCEPTED")
except EdgekdError as exc:
    print("REFUSED", exc.exit_code, str(exc)[:200])
with open("/proc/self/status") as f:
    print("RSS", next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024)
"""


def assert_refused_in_bounded_memory(call: str, cwd: Path, *fragments: str) -> None:
    result = subprocess.run([sys.executable, "-c", REFUSE.format(call=call)], cwd=cwd, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out, rss = result.stdout.strip().splitlines()
    assert out.startswith("REFUSED 2 ") and all(fragment in out for fragment in fragments), out
    assert int(rss.split()[1]) < RSS_LIMIT_MB, f"peak {rss} MB while refusing: {out}"


# -- recipes: sizes, ranges, finiteness ---------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly_in_one_line(tmp_path):
    text = alias_bomb()
    assert len(text) < 600
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(parse_yaml_mapping(text, "bomb.yaml"), "bomb.yaml")
    assert "aliases expand to more than" in bad_input(info)
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert_refused_in_bounded_memory(f"from edgekd.recipe import Recipe; Recipe.from_yaml({str(path)!r})", tmp_path,
                                     "aliases expand")


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [*a]\n", "recursive"),
    ("a: &a {b: *a}\n", "recursive"),
    ("teacher: " + "[" * 400 + "]" * 400 + "\n", "nested deeper"),
    ("seed: " + "9" * 5000 + "\n", "not valid YAML"),
    ("name: 2024-13-45\n", "not valid YAML"),
    ("a: !!timestamp 'x'\n", "not valid YAML"),
])
def test_yaml_that_cannot_become_a_recipe_is_one_line(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_yaml_mapping(text, "r.yaml")
    assert fragment in bad_input(info)


def test_anchors_that_share_a_little_are_still_fine():
    text = "teacher: &t {arch: tinycnn, arch_args: {width: 8}, epochs: 1}\ndistill: {<<: *t, lr: 0.01}\n"
    recipe = Recipe.from_dict(parse_yaml_mapping(text, "r.yaml"))
    assert recipe.teacher.arch_args == {"width": 8} and recipe.distill.epochs == 1


def test_huge_and_deep_values_are_quoted_as_a_short_excerpt():
    deep = "x"
    for _ in range(7):
        deep = [deep] * 9  # 9**7 leaves, shared: cheap to build, huge to print
    for raw in ({"teacher": {"epochs": deep}}, {"teacher": {"epochs": "z" * 10**6}},
                {"quantize": {"calibration": "q" * 10**5}}, {"bench": {"provider": "p" * 10**5}},
                {"distill": {"terms": [{"kind": "k" * 10**5}]}}, {"z" * 10**5: 1}):
        with pytest.raises(ConfigError) as info:
            Recipe.from_dict(raw)
        bad_input(info)
    with pytest.raises(ConfigError) as info:
        apply_override({}, "teacher.arch=[" + "1," * 50000 + "unclosed")
    bad_input(info)


def test_recipe_files_over_a_megabyte_are_refused(tmp_path):
    (path := tmp_path / "big.yaml").write_text("name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    assert "larger than" in bad_input(info)


@pytest.mark.parametrize("item, fragment", [
    ("seed=-1", "seed must be a whole number in 0..4294967295"), ("seed=4294967296", "seed must be"),
    ("distill.arch_args={width: -1}", "distill.arch_args.width of architecture 'tinycnn'"),
    ("teacher.arch_args={width: 0}", "teacher.arch_args.width of architecture 'resnet8'"),
    ("teacher.arch_args={width: .nan}", "finite"), ("export.atol=.inf", "export.atol"),
    ("export.atol=.nan", "export.atol"), ("export.rtol=-1e-3", "export.rtol"),
    ("bench.min_seconds=.inf", "bench.min_seconds"), ("bench.warmup_seconds=1e9", "bench.warmup_seconds must be at"),
    ("distill.lr=.inf", "distill.lr"), ("teacher.lr=1e400", "teacher.lr"),
    ("distill.temperature=.nan", "distill.temperature"), ("distill.alpha=.nan", "distill.alpha"),
    ("quantize.max_drop=.inf", "quantize.max_drop"), ("prune.target_latency_ms=.inf", "prune.target_latency_ms"),
    ("teacher.epochs=1000001", "teacher.epochs must be at most 100,000"),
    ("distill.batch_size=1000000000", "distill.batch_size must be at most"),
    ("bench.batch_size=1000000000", "bench.batch_size must be at most"), ("quantize.qat.lr=.inf", "quantize.qat.lr"),
    ("distill.terms=[{kind: at, p: .inf}]", "distill.terms[0].p"),
    ("teacher.weights=\"a\\0b\"", "teacher.weights must be a path"),
    ("plugins=['..evil']", "is not a module name"), ("name=..", "name must be"),
])
def test_every_value_has_its_range(item, fragment):
    with pytest.raises(ConfigError) as info:
        Recipe.default([item])
    assert fragment in bad_input(info)


def test_the_bounds_accept_their_edges():
    recipe = Recipe.default(["seed=4294967295", "teacher.epochs=100000", "bench.min_seconds=3600", "export.rtol=0",
                             "distill.arch_args={width: 1024}"])
    assert recipe.seed == 2**32 - 1 and recipe.distill.arch_args == {"width": 1024}


def test_directly_built_configs_are_checked_too():
    for make in (lambda: BenchConfig(min_seconds=math.inf), lambda: BenchConfig(warmup_seconds=math.nan),
                 lambda: BenchConfig(runs="10"), lambda: DataConfig(calib_size=2.5),
                 lambda: Recipe(seed=-1), lambda: Recipe().replace(distill__temperature=math.inf)):
        with pytest.raises(ConfigError) as info:
            make()
        bad_input(info)


def test_arch_args_a_model_refuses_are_a_config_error_naming_the_arch(monkeypatch, tmp_path):
    from edgekd.models.zoo import build_model

    with pytest.raises(ConfigError) as info:
        build_model("tinycnn", in_channels=1, num_classes=3, width=-1)
    assert "tinycnn" in bad_input(info)
    (tmp_path / "badnet.py").write_text(textwrap.dedent("""
        def make(in_channels, num_classes, depth=1):
            if depth < 0:
                raise ValueError("depth must be >= 0")
            raise RuntimeError("Trying to create tensor with negative dimension -5")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for kwargs, fragment in (({"depth": -1}, "depth must be >= 0"), ({}, "negative dimension")):
        with pytest.raises(ConfigError) as info:
            build_model("badnet:make", in_channels=1, num_classes=3, **kwargs)
        message = bad_input(info)
        assert "badnet:make" in message and fragment in message


def test_bad_seed_on_the_command_line_is_exit_2_before_any_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compress", "--seed", "-1", "--set", "teacher.epochs=0"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "seed must be a whole number" in lines[0]
    assert not (tmp_path / "runs").exists()


# -- datasets ----------------------------------------------------------------------------------


def rng_images(n: int, size: int = 4) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def forged_npz(path: Path, member: str, header: dict, data: bytes, compress=zipfile.ZIP_STORED,
               declared_size: int | None = None, extra: dict | None = None) -> None:
    """An npz whose `member` has the given .npy header dict and data; with declared_size,
    the zip entry's uncompressed size is patched to claim that many bytes."""
    text = repr(header).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data
    with zipfile.ZipFile(path, "w", compress) as zf:
        zf.writestr(member + ".npy", npy)
        for key, array in (extra or {}).items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            zf.writestr(key + ".npy", buffer.getvalue())
    if declared_size is not None:  # patch the local header (offset 22) and the central directory (24)
        raw = bytearray(path.read_bytes())
        local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
        raw[local + 22: local + 26] = raw[central + 24: central + 28] = struct.pack("<I", declared_size)
        path.write_bytes(bytes(raw))


LOAD_NPZ = "from edgekd.data.splits import load_arrays; load_arrays('npz', '{}')"


def test_npz_member_declaring_a_terabyte_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.npz"
    forged_npz(path, "x", {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)}, bytes(64),
               extra={"y": np.zeros(3, np.int64)})
    with pytest.raises(DataError) as info:
        load_arrays("npz", str(path))
    assert "declares shape (1000000, 1000000)" in bad_input(info)
    assert_refused_in_bounded_memory(LOAD_NPZ.format(path), tmp_path, "declares shape")


def test_npz_entry_claiming_more_than_deflate_can_expand_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    forged_npz(path, "x", {"descr": "|u1", "fortran_order": False, "shape": (16,)}, bytes(16),
               compress=zipfile.ZIP_DEFLATED, declared_size=4 * 10**9, extra={"y": np.zeros(3, np.int64)})
    with pytest.raises(DataError) as info:
        load_arrays("npz", str(path))
    assert "more than its" in bad_input(info)
    assert_refused_in_bounded_memory(LOAD_NPZ.format(path), tmp_path, "more than its")


def test_one_huge_label_is_refused_without_a_class_list_of_that_size(tmp_path):
    path = tmp_path / "label.npz"
    np.savez(path, x=rng_images(12), y=np.array([0] * 11 + [10**12]))
    with pytest.raises(DataError) as info:
        load_arrays("npz", str(path))
    assert "largest label is 1000000000000" in bad_input(info)
    assert_refused_in_bounded_memory(LOAD_NPZ.format(path), tmp_path, "largest label")
    np.savez(path, x=rng_images(12), y=np.arange(12) * 20)  # 221 classes for 12 images: no
    with pytest.raises(DataError, match="per image"):
        load_arrays("npz", str(path))


def test_unused_npz_members_are_never_read(tmp_path):
    path = tmp_path / "extra.npz"
    forged_npz(path, "junk", {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)}, b"",
               extra={"x": rng_images(12), "y": np.arange(12) % 3})
    train_x, *_ = load_arrays("npz", str(path))
    assert train_x.shape[1:] == (1, 4, 4)


@pytest.mark.parametrize("shape", [(12, 1, 1), (12, 0, 0), (12, 1, 5)])
def test_tiny_images_name_the_minimum_size(tmp_path, shape):
    np.savez(tmp_path / "tiny.npz", x=np.zeros(shape, np.uint8), y=np.arange(12) % 2)
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(name="npz", path=str(tmp_path / "tiny.npz")))
    assert "the minimum size is 2x2" in bad_input(info)


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


@pytest.mark.parametrize("side", [0, 1])
def test_imagefolder_of_0x0_or_1x1_images_names_the_minimum_size(tmp_path, side):
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # PIL cannot even open a 0x0 PNG
    for split in ("train", "test"):
        for cls in ("a", "b"):
            write_png(tmp_path / split / cls / "0.png", np.full((1, 1), 7, np.uint8))
            if side == 0:
                (tmp_path / split / cls / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr)
    with pytest.raises(DataError) as info:
        load_arrays("imagefolder", str(tmp_path))
    assert f"images are {side}x{side} pixels; the minimum size is 2x2" in bad_input(info)


def test_a_batch_larger_than_memory_is_refused_naming_the_setting():
    from edgekd.data.base import check_batch_memory

    check_batch_memory(2**20, 100, (1, 28, 28), "teacher.batch_size")  # only 100 images: one small batch
    with pytest.raises(ConfigError) as info:
        check_batch_memory(2**20, 10**7, (3, 512, 512), "teacher.batch_size")
    assert "lower teacher.batch_size" in bad_input(info)


def test_an_empty_class_folder_is_not_a_class(tmp_path):
    for split in ("train", "test"):
        write_png(tmp_path / split / "a" / "0.png", np.arange(16, dtype=np.uint8).reshape(4, 4))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_arrays("imagefolder", str(tmp_path))
    assert "empty" in bad_input(info) and "has no images" in str(info.value)


def test_too_many_class_names_are_refused(tmp_path):
    names = np.array([f"c{i}" for i in range(100_001)])
    np.savez(tmp_path / "names.npz", x=rng_images(12), y=np.arange(12) % 2, class_names=names)
    with pytest.raises(DataError) as info:
        load_arrays("npz", str(tmp_path / "names.npz"))
    assert "100,000" in bad_input(info)


# -- weights -----------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict) -> bytes:
    """name -> (dtype, shape, nbytes of data): a safetensors file with zero data."""
    header, offset = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(offset)


def test_sparse_safetensors_declaring_gigabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "sparse.safetensors"
    text = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2**31], "data_offsets": [0, 8 * GIB]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + 8 * GIB)  # a hole: 8 GiB declared, nothing on disk
    assert safetensors_header(path)["fc.weight"].nbytes == 8 * GIB  # consistent with its size
    expected = {"fc.weight": TensorInfo((3, 16), "float32", True, 192)}
    with pytest.raises(ModelFileError) as info:
        load_state_dict(path, expected=expected)
    assert "shape mismatch" in bad_input(info)
    assert_refused_in_bounded_memory(
        "from edgekd.io.artifacts import TensorInfo, load_state_dict; "
        f"load_state_dict({str(path)!r}, expected={{'fc.weight': TensorInfo((3, 16), 'float32', True, 192)}})",
        tmp_path, "shape mismatch")
    with open(path, "r+b") as f:
        f.truncate(8 + len(text) + GIB)  # now the header claims more than the file holds
    assert_refused_in_bounded_memory(f"from edgekd.io.artifacts import load_state_dict; load_state_dict({str(path)!r})",
                                     tmp_path, "not a valid safetensors file")


def test_integer_weights_are_refused_not_cast(tmp_path, make_tiny_cnn):
    import torch
    from safetensors.torch import save_file

    from edgekd.io.artifacts import load_weights

    model = make_tiny_cnn()
    state = {k: (v.to(torch.int64) if k == "fc.weight" else v) for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "int.safetensors"))
    torch.save(state, tmp_path / "int.pt")
    for name in ("int.safetensors", "int.pt"):
        with pytest.raises(ModelFileError) as info:
            load_weights(make_tiny_cnn(), tmp_path / name)
        assert "dtype mismatch, not cast: fc.weight (file int64, model float32)" in bad_input(info)


def test_non_finite_weights_are_refused(tmp_path, make_tiny_cnn):
    import torch

    from edgekd.io.artifacts import load_weights, save_weights

    model = make_tiny_cnn()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    save_weights(model, tmp_path / "nan.safetensors")
    with pytest.raises(ModelFileError) as info:
        load_weights(make_tiny_cnn(), tmp_path / "nan.safetensors")
    assert "fc.bias holds NaN or infinite values" in bad_input(info)


@pytest.mark.parametrize("tensors, fragment", [
    ({"w": ("I33", (3,), 12)}, "known dtype"),
    ({"w": ("F32", (3,), 8)}, "declares 12 bytes"),
    ({"w": ("F32", (-3,), 0)}, "known dtype, a shape"),
])
def test_safetensors_headers_that_lie_are_refused(tmp_path, tensors, fragment):
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(tensors))
    with pytest.raises(ModelFileError) as info:
        load_state_dict(path)
    assert fragment in bad_input(info)


def _sparse_external_model(folder: Path, side: int = 50_000) -> Path:
    """A 169-byte ONNX model whose weight is 'stored' in a sparse file declaring side**2 floats."""
    import onnx
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[side, side],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(side * side * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, side])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, side])
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["logits"])], "g", [x], [y], [weight])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with open(folder / "w.bin", "wb") as f:
        f.truncate(side * side * 4)  # 10 GB on paper, nothing on disk
    return path


def test_onnx_with_sparse_external_data_is_refused_in_bounded_memory(tmp_path):
    """Benching it used to load 22 GB; now the file's real data is checked first."""
    path = _sparse_external_model(tmp_path)
    assert path.stat().st_size < 1000
    assert_refused_in_bounded_memory(f"from edgekd.io.onnxfile import check_onnx_file; check_onnx_file({str(path)!r})",
                                     tmp_path, "sparse on disk")
    result = subprocess.run([sys.executable, "-m", "edgekd", "bench", str(path), "--runs", "1", "--min-seconds", "0",
                             "--no-progress"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "sparse on disk" in result.stderr


def test_onnx_weights_larger_than_memory_are_refused(tmp_path, monkeypatch):
    from edgekd.io import onnxfile
    from edgekd.runtime import machine

    monkeypatch.setattr(machine, "available_memory_bytes", lambda: 2 << 20)  # a 2 MiB machine
    with pytest.raises(ModelFileError, match="more than half of the"):
        onnxfile.check_fits_in_memory("m.onnx", 3 << 20)
    onnxfile.check_fits_in_memory("m.onnx", 512 << 10)
