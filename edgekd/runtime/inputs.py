"""What `edgekd bench` feeds a model and what it compares: the eval set, preprocessing
from the model's metadata, synthetic inputs, batched prediction, top-k accuracy and
agreement with a reference model.

Needs only numpy (no torch, no onnxruntime import of its own); onnx is optional.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import DataError, ModelFileError, first_line
from edgekd.io import onnxfile
from edgekd.io.membudget import size_text
from edgekd.runtime.feedlimit import check_feed_size

# ONNX tensor types this module can feed.
INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


# Synthetic int32/int64 inputs are usually token ids: they are drawn from [0, vocabulary)
# when the input indexes an initializer through Gather (onnx needed to see it), else
# from [0, SYNTHETIC_ID_LIMIT), which every embedding with at least that many rows takes.
SYNTHETIC_ID_LIMIT = 2


SYNTHETIC_AGREEMENT_SAMPLES = 64  # reference agreement without an eval set


def check_labels(y: np.ndarray | None, num_outputs: int, path) -> None:
    """DataError unless every eval label indexes one of the model's `num_outputs` outputs."""
    if y is None or len(y) == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_outputs:
        bad = int(((y < 0) | (y >= num_outputs)).sum())
        raise DataError(f"eval set labels span {low}..{high} but '{path}' has {num_outputs} outputs "
                        f"({bad} label(s) out of range); use an eval set made for this model")


MAX_CLASS_NAMES_BYTES = 64 * 1024**2


def _npz_declared(data, key: str) -> tuple:
    """(shape, dtype) of member `key` of an open NpzFile, from its .npy header: nothing of
    its data is read (or decompressed)."""
    name = key + ".npy" if key + ".npy" in data.zip.namelist() else key
    with data.zip.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _check_declared_sizes(path, declared: dict) -> None:
    """Refuse an eval set by its headers before it is decompressed: x not non-empty uint8
    N x C x H x W, y not N labels, class_names over MAX_CLASS_NAMES_BYTES, or x (with its
    float32 copy) larger than the memory available."""
    from edgekd.runtime.machine import available_memory_bytes

    if "x" in declared:
        shape, dtype = declared["x"]
        if dtype != np.uint8 or len(shape) != 4 or not all(shape):
            raise DataError(f"eval set '{path}': x must be non-empty uint8 N x C x H x W, got {dtype} {list(shape)}; "
                            "save raw pixels 0-255")
        need, available = 5 * int(np.prod(shape, dtype=object)), available_memory_bytes()
        if available is not None and need > available:
            raise DataError(f"eval set '{path}': x is {list(shape)}, {size_text(need)} with its float32 copy, more than "
                            f"the {size_text(available)} of memory available; use a smaller eval set")
        if "y" in declared and (declared["y"][0] != shape[:1] or declared["y"][1].kind not in "iu"):
            y_shape, y_dtype = declared["y"]
            raise DataError(f"eval set '{path}': y must be {shape[0]} integer labels, got {y_dtype} {list(y_shape)}; "
                            "save one label per image")
    if "class_names" in declared:
        shape, dtype = declared["class_names"]
        if int(np.prod(shape, dtype=object)) * dtype.itemsize > MAX_CLASS_NAMES_BYTES:
            raise DataError(f"eval set '{path}': class_names is {list(shape)} {dtype}, more than "
                            f"{size_text(MAX_CLASS_NAMES_BYTES)}; save one short name per class")


def load_eval_set(path):
    """(x uint8 NCHW, y int64 or None, class_names or None) from an .npz file (a run's
    eval.npz), or the test split of a registered dataset: `--data` means the same in every
    command, a dataset by name or path."""
    from edgekd.data.formats import FORMATS

    if str(path) in FORMATS and not Path(path).exists():
        from edgekd.data.splits import load_arrays  # numpy only, like the rest of the device path

        _, _, test_x, test_y, class_names = load_arrays(str(path))
        return test_x, test_y.astype(np.int64), list(class_names)
    path = Path(path)
    if not path.exists():
        raise DataError(f"eval set '{path}' does not exist; check the path")
    if not path.is_file():  # a folder, or a FIFO that would block the reader
        raise DataError(f"eval set '{path}' is not a regular file; pass an .npz file")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would take anything else for a .npy or a pickle
            raise DataError(f"eval set '{path}' is not an .npz file (not a zip archive); pass a run's eval.npz or "
                            "a file saved with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as data:  # no pickles: never run code from a file
            keys = [key for key in ("x", "y", "class_names") if key in data.files]
            _check_declared_sizes(path, {key: _npz_declared(data, key) for key in keys})
            arrays = {key: data[key] for key in keys}
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"eval set '{path}' is not a readable .npz without pickled objects: {first_line(exc)}; "
            "save it with numpy.savez and plain arrays"
        ) from exc
    x = arrays.get("x")
    if x is None:
        raise DataError(f"eval set '{path}' has no array 'x'; save the images as x (uint8, N x C x H x W)")
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
        raise DataError(
            f"eval set '{path}': x must be non-empty uint8 N x C x H x W, got {x.dtype} {list(x.shape)}; "
            "save raw pixels 0-255"
        )
    y = arrays.get("y")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise DataError(
                f"eval set '{path}': y must be {len(x)} integer labels, got {y.dtype} {list(y.shape)}; "
                "save one label per image"
            )
        y = y.astype(np.int64)
        if len(y) and int(y.min()) < 0:
            raise DataError(f"eval set '{path}': y has negative labels (smallest {int(y.min())}); "
                            "labels are class indices 0, 1, ...")
    names = arrays.get("class_names")
    return x, y, (None if names is None else [str(n) for n in names])


def fit_to_model(x_uint8: np.ndarray, meta: dict) -> np.ndarray:
    """Eval images at another size or colour than the model's input, brought to it as training
    did (metadata `edgekd.preprocess`: grey <-> RGB, shorter side resized, center crop; numpy and
    PIL, edgekd.data.preprocess). Images at the input size (a run's eval.npz) pass unchanged."""
    from edgekd.runtime.preprocessing import fit_images, from_metadata

    spec = from_metadata(meta)
    return x_uint8 if spec is None else fit_images(spec, x_uint8)


def preprocess(x_uint8: np.ndarray, meta: dict) -> np.ndarray:
    """(x/255 - mean) / std per channel (axis 1), mean/std from the model's metadata;
    models without them get x/255 only (bench itself refuses that guess: runtime.preprocessing).
    The arithmetic is edgekd.data.normalize's, as in training; images at another size or colour
    are first brought to the model's input (fit_to_model). Metadata that is not 1 or C finite
    numbers, a std <= 0, or values that would make a pixel overflow float32 are refused (exit 2)."""
    from edgekd.runtime.preprocessing import Preprocessing, apply, from_metadata

    return apply(from_metadata(meta) or Preprocessing("x / 255"), x_uint8)


def feed_shape(inp, batch: int, eval_shape, path) -> list:
    """The input shape to run: fixed model dims, dynamic ones taken from the eval set."""
    dims = inp.shape[1:]
    if eval_shape is not None:
        if len(eval_shape) != len(inp.shape) or any(
            isinstance(d, int) and d != e for d, e in zip(dims, eval_shape[1:])
        ):
            raise DataError(
                f"eval set images are {list(eval_shape[1:])} but '{path}' input '{inp.name}' expects "
                f"{list(dims)}; use an eval set made for this model"
            )
        return [batch, *eval_shape[1:]]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ModelFileError(
            f"'{path}' input '{inp.name}' has dynamic dims {list(dims)}; export it with a fixed input "
            "size or pass an eval set to take the shape from"
        )
    return [batch, *dims]


def id_limit(path, input_name: str) -> int:
    """The largest safe token id + 1 for an integer input: the smallest row count of the
    initializers it indexes through Gather, else SYNTHETIC_ID_LIMIT."""
    onnx = onnxfile._onnx()
    if onnx is None:
        return SYNTHETIC_ID_LIMIT
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {init.name: list(init.dims) for init in graph.initializer}
    rows = []
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == input_name and node.input[0] in dims:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            shape = dims[node.input[0]]
            rows.append(shape[axis] if shape else 1)
    return max(1, min(rows)) if rows else SYNTHETIC_ID_LIMIT


def synthetic(shape: list, dtype, id_limit: int = SYNTHETIC_ID_LIMIT, seed: int = 0) -> np.ndarray:
    """Reproducible random input: standard normal floats, uint8/int8 over their whole
    range (pixels), int32/int64 ids in [0, id_limit)."""
    check_feed_size(shape, dtype, "the synthetic input", "use a smaller --batch-size or a model with a smaller input",
                    error=DataError)
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype in (np.int32, np.int64):
        return rng.integers(0, id_limit, size=shape, dtype=dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


PREDICT_BYTES = 16 << 20  # predict(): at most this many bytes of input per run (batch_size rows, fewer if larger)


def predict(session, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256) -> np.ndarray:
    """Outputs (N, K) of the model's first output for every input row, flattened per row
    ((N, C, 1, 1) logits become (N, C)), batched. y: labels, checked to match x."""
    if len(x) == 0 or (y is not None and len(y) != len(x)):
        n_labels = "no" if y is None else len(y)
        raise DataError(f"evaluation needs one label per image, got {len(x)} images and {n_labels} labels")
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    # large inputs (224x224 RGB: 0.6 MB a row) run in fewer rows at a time: ONNX Runtime's
    # activations grow with the rows, and a few hundred large images would take gigabytes
    row_bytes = max(1, int(np.prod(x.shape[1:])) * x.dtype.itemsize)
    step = fixed or max(1, min(batch_size, PREDICT_BYTES // row_bytes))
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if fixed and n < fixed:  # a fixed batch dim: pad the last chunk, drop the padding's outputs
            check_feed_size([fixed, *chunk.shape[1:]], chunk.dtype, f"a batch of input '{inp.name}'",
                            "export the model with a dynamic or smaller batch dim")
            pad = np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out = session.run(None, {inp.name: chunk})[0]
        outputs.append(out.reshape(len(chunk), -1)[:n])
    return np.concatenate(outputs)


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int) -> float | None:
    """Percent of rows whose label is among the k largest logits; None with fewer than k classes."""
    if logits.shape[1] < k:
        return None
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k > 1 else logits.argmax(axis=1)[:, None]
    return 100.0 * float((top == y[:, None]).any(axis=1).mean())


def evaluate(session, x_float: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of the model's first output (N, C) or (N, C, 1, 1)."""
    return topk_accuracy(predict(session, x_float, y, batch_size), y, 1)


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict:
    """How far a model's outputs are from a reference's on the same inputs (both (N, K)):
    argmax_match, the percent of rows with the same argmax, and max_abs_diff, the largest
    absolute difference of any output value."""
    if outputs.shape != reference.shape:
        raise ModelFileError(
            f"the model's outputs are {list(outputs.shape)} but the reference's are {list(reference.shape)} "
            "on the same inputs; pass a reference model with the same output"
        )
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    match = outputs.argmax(axis=1) == reference.argmax(axis=1)
    return {"argmax_match": 100.0 * float(match.mean()), "max_abs_diff": float(diff.max()), "samples": len(outputs)}
