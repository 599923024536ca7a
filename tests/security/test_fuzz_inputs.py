"""Fuzzing the validators of recipes, --set values, npz datasets and safetensors headers.

Thousands of generated inputs, plausible and not; every outcome is a valid config (or data,
or weights) or an EdgekdError with exit code 2 whose message is one line of at most
MAX_MESSAGE characters: never another exception, a traceback or a hang. Each test has a
fixed number of examples and no per-example deadline; the file runs in about 20 s on two
cores. (ONNX metadata is fuzzed in test_bench_fuzz.py.)
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edgekd.configtools import MAX_MESSAGE
from edgekd.data.splits import load_arrays
from edgekd.errors import EdgekdError
from edgekd.io.artifacts import load_state_dict
from edgekd.recipe import Recipe, apply_override, parse_yaml_mapping
from fuzzing import fuzz_settings


def accepted_or_bad_input(call):
    """call() returns, or raises an EdgekdError with exit code 2 and a short one-line message."""
    try:
        return call()
    except EdgekdError as exc:
        message = str(exc)
        assert exc.exit_code == 2, f"{type(exc).__name__} (exit {exc.exit_code}): {message[:300]}"
        assert message and "\n" not in message, repr(message[:300])
        assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}"
        return None


# -- the recipe's keys, for plausible dicts ---------------------------------------------------------


def section_keys() -> dict[str, list[str]]:
    """Each section of Recipe (and nested dataclass sections) -> its field names."""
    hints = typing.get_type_hints(Recipe)
    sections = {}
    for name, hint in hints.items():
        if dataclasses.is_dataclass(hint):
            sections[name] = [f.name for f in dataclasses.fields(hint) if not f.name.startswith("_")]
    return sections


SECTIONS = section_keys()
TOP_KEYS = ["name", "seed", "deterministic", *SECTIONS]  # never `plugins`: importing modules is code
NESTED = {"quantize": {"qat": SECTIONS["distill"][:6] + ["observe_fraction"]},
          "teacher": {"transfer": ["pretrained", "head_epochs", "finetune_lr"]}}
WORDS = ["tinycnn", "resnet8", "mobilenetv2", "torchvision:resnet18", "adamw", "sgd", "minmax", "entropy",
         "cpu", "offline", "online", "ema", "born-again", "at", "fitnet", "rkd", "sp", "npz", "imagefolder",
         "fashion-mnist-subset", "int8", "uint8", "step", "end", "l1", "auto", "x86-vnni", "ptq", "qat",
         ".inf", "-.inf", ".nan", "1e-3", "1e400", "nan", "", ".", "..", "/", "a/b", "features.0", "fc",
         "width", "kind", "weight", "student", "teacher", "\x00", "~nobody/x", "x" * 300]
TERM_KEYS = ["kind", "student", "teacher", "weight", "p", "distance", "angle"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-2, max_value=2),
    st.text(max_size=12), st.sampled_from(WORDS),
)
keys = st.one_of(st.sampled_from(sorted({k for ks in SECTIONS.values() for k in ks} | set(TERM_KEYS))),
                 st.text(max_size=8), st.integers(-2, 2), st.booleans()).filter(lambda k: k != "plugins")
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)


@st.composite
def section_dicts(draw, section: str):
    names = SECTIONS[section]
    out = draw(st.dictionaries(st.sampled_from(names), values, max_size=5))
    if draw(st.booleans()) and draw(st.booleans()):  # an unknown key now and then
        out[draw(keys)] = draw(values)
    for nested, nested_keys in NESTED.get(section, {}).items():
        if draw(st.booleans()):
            out[nested] = draw(st.dictionaries(st.sampled_from(nested_keys), values, max_size=3))
    if section == "distill" and draw(st.booleans()):
        out["terms"] = draw(st.lists(st.dictionaries(st.sampled_from(TERM_KEYS), values, max_size=4), max_size=3))
    if section in ("teacher", "distill") and draw(st.booleans()):
        out["arch_args"] = draw(st.dictionaries(st.sampled_from(["width", "last_channels", "x", "1"]), values,
                                                max_size=2))
    return out


@st.composite
def recipes(draw):
    raw = {}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=6, unique=True)):
        raw[key] = draw(section_dicts(key)) if key in SECTIONS and draw(st.integers(0, 9)) else draw(values)
    return raw


@fuzz_settings(1000)
@given(raw=recipes())
def test_generated_recipes_are_valid_or_exit_2(raw):
    recipe = accepted_or_bad_input(lambda: Recipe.from_dict(raw, "fuzz.yaml"))
    if recipe is not None:  # what was accepted writes and reads back as itself
        assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


@fuzz_settings(300)
@given(raw=recipes(), anchor=st.booleans())
def test_generated_yaml_text_is_valid_or_exit_2(raw, anchor):
    try:
        text = yaml.safe_dump(raw, sort_keys=False)
    except yaml.YAMLError:  # a key PyYAML cannot write
        return
    if anchor:
        text = "base: &b [1, 2, 3]\nrefs: [*b, *b, *b]\n" + text
    accepted_or_bad_input(lambda: Recipe.from_dict(parse_yaml_mapping(text, "fuzz.yaml"), "fuzz.yaml"))


yaml_chars = st.text(alphabet=st.sampled_from(list("abc:{}[],&*!|>-?#'\"\n .01e9~@%")), max_size=60)


@fuzz_settings(800)
@given(text=st.one_of(yaml_chars, st.text(max_size=40)))
def test_random_yaml_is_valid_or_exit_2(text):
    accepted_or_bad_input(lambda: Recipe.from_dict(parse_yaml_mapping(text, "fuzz.yaml"), "fuzz.yaml"))


dotted = st.one_of(
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(sorted(SECTIONS)), st.sampled_from(
        sorted({k for ks in SECTIONS.values() for k in ks}))),
    st.sampled_from(["seed", "name", "deterministic", "distill.arch_args.width", "quantize.qat.lr",
                     "teacher.transfer.pretrained", "a..b", ".", "teacher.epochs.x"]),
    st.text(max_size=10),
)
set_values = st.one_of(yaml_chars, st.sampled_from(WORDS), st.text(max_size=20),
                       st.integers(-(2**40), 2**40).map(str), st.floats().map(str))


@fuzz_settings(1500)
@given(items=st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", dotted, set_values), st.text(max_size=15)),
                      min_size=1, max_size=3))
def test_set_strings_are_valid_or_exit_2(items):
    def run():
        raw: dict = {}
        for item in items:
            apply_override(raw, item)
        return Recipe.from_dict(raw, "--set")

    accepted_or_bad_input(run)


# -- npz datasets ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load(path: Path):
    return accepted_or_bad_input(lambda: load_arrays("npz", str(path)))


def npz_bytes(arrays: dict, compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


DTYPES = [np.uint8, np.int64, np.int8, np.float32, np.bool_, np.uint64, "U3"]
shapes = st.lists(st.integers(0, 5), max_size=5).map(tuple)


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    if dtype == "U3":
        return np.full(shape, draw(st.sampled_from(["a", "bc", ""])), dtype="U3")
    if np.dtype(dtype).kind in "iu":
        return np.full(shape, draw(st.integers(-(2**40), 2**40)), dtype=np.int64).astype(dtype)
    return np.full(shape, 1, dtype=dtype)


@st.composite
def npz_contents(draw):
    layout = draw(st.sampled_from([("x", "y"), ("train_x", "train_y", "test_x", "test_y"), ("x",), ("y", "z")]))
    out = {}
    for key in layout:
        if key.endswith("x") and draw(st.booleans()):  # plausible images
            n = draw(st.integers(0, 14))
            hw = draw(st.tuples(st.integers(0, 6), st.integers(0, 6)))
            out[key] = np.random.default_rng(n).integers(0, 256, (n, 1, *hw), dtype=np.uint8)
        elif key.endswith("y") and draw(st.booleans()):  # plausible labels
            n = draw(st.integers(0, 14))
            out[key] = np.arange(n) % draw(st.integers(1, 4)) * draw(st.sampled_from([1, 1, 10**3, 10**15]))
        else:
            out[key] = draw(arrays())
    if draw(st.booleans()):
        out["class_names"] = draw(arrays())
    return out


@fuzz_settings(300)
@given(contents=npz_contents(), compressed=st.booleans())
def test_generated_npz_files_load_or_exit_2(scratch, contents, compressed):
    path = scratch / "gen.npz"
    path.write_bytes(npz_bytes(contents, compressed))
    load(path)


GOOD_NPZ = npz_bytes({"x": np.random.default_rng(0).integers(0, 256, (12, 1, 4, 4), dtype=np.uint8),
                      "y": np.arange(12) % 3}, compressed=False)


@fuzz_settings(400)
@given(cut=st.integers(0, len(GOOD_NPZ)), flips=st.lists(st.tuples(st.integers(0, len(GOOD_NPZ) - 1),
                                                                  st.integers(0, 255)), max_size=4),
       prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY\x01\x00"]), noise=st.binary(max_size=64))
def test_truncated_or_corrupted_npz_files_load_or_exit_2(scratch, cut, flips, prefix, noise):
    data = bytearray(GOOD_NPZ)
    for position, value in flips:
        data[position] = value
    path = scratch / "bad.npz"
    path.write_bytes(bytes(data[:cut]) if noise == b"" else prefix + noise + bytes(data[cut:]))
    load(path)


npy_headers = st.fixed_dictionaries({
    "descr": st.sampled_from(["|u1", "<i8", "<f4", "|O", "|b1", "<U3", ">i4", "xx", "<V8"]),
    "fortran_order": st.sampled_from([False, True, 0, None]),
    "shape": st.lists(st.one_of(st.integers(0, 6), st.integers(-3, 2**62)), max_size=4).map(tuple),
})


@fuzz_settings(400)
@given(header=npy_headers, data=st.binary(max_size=128), deflate=st.booleans(),
       declared=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_npz_members_with_forged_headers_load_or_exit_2(scratch, header, data, deflate, declared):
    text = repr(header).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data
    path = scratch / "forged.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", npy)
        zf.writestr("y.npy", npy_bytes(np.arange(3) % 2))
    if declared is not None:  # the zip entry claims another uncompressed size
        raw = bytearray(path.read_bytes())
        local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
        raw[local + 22: local + 26] = raw[central + 24: central + 28] = struct.pack("<I", declared)
        path.write_bytes(bytes(raw))
    load(path)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# -- safetensors headers ---------------------------------------------------------------------------

tensor_entries = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "I64", "U8", "BOOL", "F64"]), st.text(max_size=5),
                       st.integers(0, 9)),
    "shape": st.one_of(st.lists(st.one_of(st.integers(0, 8), st.integers(-2, 2**64)), max_size=4),
                       st.text(max_size=3), st.none()),
    "data_offsets": st.one_of(st.lists(st.one_of(st.integers(0, 64), st.integers(-(2**64), 2**64)), max_size=3),
                              st.none()),
})


@fuzz_settings(500)
@given(entries=st.dictionaries(st.text(min_size=1, max_size=8), tensor_entries, max_size=3),
       data=st.binary(max_size=96), length_lie=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
       raw_header=st.one_of(st.none(), st.binary(max_size=40)))
def test_safetensors_headers_load_or_exit_2(scratch, entries, data, length_lie, raw_header):
    text = raw_header if raw_header is not None else json.dumps(entries).encode()
    length = len(text) if length_lie is None else length_lie
    path = scratch / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", length) + text + data)
    state = accepted_or_bad_input(lambda: load_state_dict(path))
    if state is not None:
        assert set(state) <= set(entries)
