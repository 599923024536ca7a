"""ONNX files are validated before any ONNX Runtime session sees them.

numpy-free and torch-free: `edgekd bench` uses this on devices that have only
onnxruntime (onnx is optional; without it a small protobuf wire-format reader finds
the external-data entries).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgekd.errors import ModelFileError, first_line


def _onnx():
    """The onnx module, or None when it is not installed (it is optional on devices)."""
    try:
        import onnx
    except ImportError:
        return None
    return onnx



SPARSE_MIN_BYTES = 1 << 20  # external ranges smaller than this are not checked for sparseness
_PROTOBUF_DEPTH_LIMIT = 100  # protobuf's own default recursion limit for nested messages


def check_onnx_file(path) -> None:
    """Raise ModelFileError unless `path` is an ONNX model that is safe to give ONNX Runtime.

    1. a regular, non-empty file;
    2. every tensor stored as external data (graph initializers, sparse initializers,
       tensor attributes such as Constant's, in If/Loop/Scan subgraphs, functions and
       training graphs) names a plain file inside the model's folder, its byte range
       within that file; checked from the model file alone, before any external file
       is opened;
    3. onnx.checker with full_check=True (structure, then strict shape inference).
       Operators of domains onnx does not know (com.microsoft, com.microsoft.nchwc,
       as in ONNX Runtime's own quantized and optimized models) pass unchecked; models
       with sparse initializers get the structural check only (see below).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"'{path}' does not exist; check the path")
    if not path.is_file():
        raise ModelFileError(f"'{path}' is not a file; pass the path of an .onnx model")
    if path.stat().st_size == 0:
        raise ModelFileError(f"'{path}' is not a valid ONNX model: the file is empty; re-export it")
    onnx = _onnx()
    if onnx is None:
        tensors = _external_tensors_from_wire(path)
    else:
        try:
            proto = onnx.load(str(path), load_external_data=False)  # the model file only
        except Exception as exc:  # DecodeError, or what protobuf raises for deep nesting
            raise ModelFileError(
                f"'{path}' is not a valid ONNX model: {first_line(exc)}; re-export it or pick another file"
            ) from exc
        tensors = _external_tensors(proto)
    external = sum(check_external_data(path, name, entries) for name, entries in tensors)
    check_fits_in_memory(path, path.stat().st_size + external)
    if onnx is None:
        return  # without onnx, make_session reports what ONNX Runtime cannot parse
    # onnx's shape inference types a sparse initializer as a sparse tensor, which no
    # standard operator accepts, so full_check refuses such models although ONNX Runtime
    # (which densifies them) runs them: for those, the structural check only.
    full_check = not proto.graph.sparse_initializer
    try:
        # A path (not the loaded proto) lets the checker handle models over 2 GB.
        onnx.checker.check_model(str(path), full_check=full_check)
    except Exception as exc:
        raise ModelFileError(
            f"'{path}' is not a valid ONNX model: {first_line(exc)}; re-export it or pick another file"
        ) from exc


def check_fits_in_memory(model_path, nbytes: int) -> None:
    """ONNX Runtime holds every weight in memory: a model (file plus external data) larger
    than half of the memory available is refused before a session tries to allocate it."""
    from edgekd.runtime.machine import available_memory_bytes

    available = available_memory_bytes()
    if available is not None and nbytes > available // 2:
        raise ModelFileError(f"'{model_path}' holds {nbytes / 2**30:.1f} GiB of weights, more than half of the "
                             f"{available / 2**30:.1f} GiB of memory available; refused before loading it")


def check_external_data(model_path, tensor_name: str, entries) -> int:
    """Refuse (ModelFileError) external data that is not a byte range of a plain file
    inside the model's folder, or that the file does not really hold (a sparse file that
    declares gigabytes it has no data for). `entries` are the tensor's external_data (key,
    value) pairs. Returns the tensor's byte count.

    Only lstat/stat and realpath touch the file system here; nothing is opened.
    """
    model_path = Path(model_path)
    folder = model_path.parent
    location = dict(entries).get("location")  # the last one, as onnx and ONNX Runtime read it

    def refuse(why: str):
        raise ModelFileError(
            f"'{model_path}': tensor {_shown(tensor_name)} has external data at {_shown(location)}, which {why}; "
            "refused before reading it; keep external data as plain files in the model's folder"
        )

    info = {}
    for key, value in entries:
        if key in info:
            refuse(f"gives the key {_shown(key)} twice")
        info[key] = value
    if not location:
        refuse("is empty: the tensor names no file")
    if "\x00" in location:
        refuse("contains a NUL character")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        refuse("is an absolute path")
    if ".." in windows.parts or ".." in posix.parts:  # both separators, whatever this OS uses
        refuse("contains a '..' component")
    parts = Path(location).parts
    if not parts:
        refuse("names the model's folder itself, not a file")
    current = folder
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            refuse("does not exist")
        except OSError as exc:
            refuse(f"cannot be inspected ({exc.strerror or type(exc).__name__})")
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            refuse("is a symbolic link" if last else f"passes through the symbolic link '{Path(*parts[: i + 1])}'")
        if not last and not stat.S_ISDIR(st.st_mode):
            refuse(f"passes through '{Path(*parts[: i + 1])}', which is not a folder")
    if not stat.S_ISREG(st.st_mode):
        refuse("is not a regular file")
    if not current.resolve().is_relative_to(folder.resolve()):  # belt and braces: no links were followed
        refuse("resolves outside the model's folder")

    size = st.st_size
    offset, length = _external_int(info, "offset", refuse), _external_int(info, "length", refuse)
    start = offset or 0
    end = start + length if length is not None else start  # no length: from offset to the end of the file
    if end > size:
        wanted = f"bytes {start}..{end}" if length is not None else f"offset {start}"
        refuse(f"needs {wanted} but the file has {size} bytes")
    nbytes = (end if length is not None else size) - start
    allocated = getattr(st, "st_blocks", None)
    if allocated is not None and nbytes > SPARSE_MIN_BYTES and allocated * 512 < nbytes // 2:
        refuse(f"is sparse on disk: it declares {nbytes:,} bytes for this tensor but the file holds only "
               f"{allocated * 512:,} bytes of data (copy it with cp --sparse=never if it is genuine)")
    return nbytes


def _external_int(info: dict, key: str, refuse):
    value = info.get(key)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", value):
        refuse(f"has {key} {_shown(value)}, not a non-negative integer")
    return int(value)


def _shown(text) -> str:
    """A file-supplied string for a one-line message: quoted, escaped, at most ~100 chars."""
    if text is None:
        return "(none)"
    shown = repr(str(text))
    return shown if len(shown) <= 100 else shown[:96] + "...'"


def _external_tensors(model) -> list:
    """(name, external_data pairs) of every tensor of an onnx ModelProto stored externally."""
    external = 1  # onnx.TensorProto.EXTERNAL
    found = []

    def tensor(t):
        if t.data_location == external:
            found.append((t.name, [(e.key, e.value) for e in t.external_data]))

    def sparse(s):
        tensor(s.values)
        tensor(s.indices)

    def attributes(attrs):
        for a in attrs:
            tensor(a.t)  # an unset field reads as an empty, inline tensor
            for t in a.tensors:
                tensor(t)
            sparse(a.sparse_tensor)
            for s in a.sparse_tensors:
                sparse(s)
            graph(a.g)
            for g in a.graphs:
                graph(g)

    def graph(g):
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            sparse(s)
        for node in g.node:
            attributes(node.attribute)

    graph(model.graph)
    for function in model.functions:
        for node in function.node:
            attributes(node.attribute)
        attributes(function.attribute_proto)
    for training in model.training_info:
        graph(training.initialization)
        graph(training.algorithm)
    return found


# Without onnx: the same walk over the protobuf wire format. Field numbers are those of
# onnx.proto (tests/test_adversarial.py checks them against onnx's descriptors).
# Per message: field number -> (message it holds, repeated?). Only the fields that can
# lead to a TensorProto are listed; every other field is skipped.
_WIRE_SCHEMA = {
    "model": {7: ("graph", False), 20: ("training", True), 25: ("function", True)},
    "training": {1: ("graph", False), 2: ("graph", False)},
    "function": {7: ("node", True), 11: ("attribute", True)},
    "graph": {1: ("node", True), 5: ("tensor", True), 15: ("sparse", True)},
    "node": {5: ("attribute", True)},
    "attribute": {5: ("tensor", False), 6: ("graph", False), 10: ("tensor", True), 11: ("graph", True),
                  22: ("sparse", False), 23: ("sparse", True)},
    "sparse": {1: ("tensor", False), 2: ("tensor", False)},
}


_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14


_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class _WireError(Exception):
    pass


def _external_tensors_from_wire(path: Path) -> list:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            found = []
            _wire_walk(buf, [(0, len(buf))], "model", 0, found)
            return found
    except _WireError as exc:
        raise ModelFileError(
            f"'{path}' is not a valid ONNX model: not a readable protobuf ({exc}); re-export it or pick another file"
        ) from exc


def _wire_walk(buf, spans, kind: str, depth: int, found: list) -> None:
    """Collect external tensors of one message. A singular message field that occurs more
    than once is merged, as protobuf does, by reading its occurrences as one message."""
    if depth > _PROTOBUF_DEPTH_LIMIT:
        raise _WireError(f"messages nested more than {_PROTOBUF_DEPTH_LIMIT} deep")
    if kind == "tensor":
        _wire_tensor(buf, spans, found)
        return
    schema = _WIRE_SCHEMA[kind]
    singular: dict = {}
    for start, end in spans:
        for number, wire, value in _wire_fields(buf, start, end, depth):
            child = schema.get(number)
            if child is None or wire != 2:  # a known field with another wire type is an unknown field
                continue
            if child[1]:
                _wire_walk(buf, [value], child[0], depth + 1, found)
            else:
                singular.setdefault(number, []).append(value)
    for number, child_spans in singular.items():
        _wire_walk(buf, child_spans, schema[number][0], depth + 1, found)


def _wire_tensor(buf, spans, found: list) -> None:
    name, data_location, entries = "", 0, []
    for start, end in spans:
        for number, wire, value in _wire_fields(buf, start, end, 0):
            if number == _TENSOR_NAME and wire == 2:
                name = _wire_str(buf, value)
            elif number == _TENSOR_DATA_LOCATION and wire == 0:
                data_location = value & 0xFFFFFFFF  # an int32 enum: protobuf keeps the low 32 bits
            elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                key = entry_value = ""
                for n, w, v in _wire_fields(buf, value[0], value[1], 0):
                    if n == _ENTRY_KEY and w == 2:
                        key = _wire_str(buf, v)
                    elif n == _ENTRY_VALUE and w == 2:
                        entry_value = _wire_str(buf, v)
                entries.append((key, entry_value))
    if data_location == 1:  # TensorProto.EXTERNAL
        found.append((name, entries))


def _wire_str(buf, span) -> str:
    # surrogateescape: a location that is not UTF-8 still maps back to the same bytes
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "surrogateescape")


def _wire_varint(buf, pos: int, end: int):
    result = shift = 0
    while True:
        if pos >= end:
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint longer than 10 bytes")


def _wire_fields(buf, start: int, end: int, depth: int):
    """(field number, wire type, value) of each field in buf[start:end]; the value of a
    length-delimited field is its (start, end), of a varint its integer, else None."""
    pos = start
    while pos < end:
        key, pos = _wire_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError(f"field number 0 at byte {pos}")
        value, pos = _wire_value(buf, pos, end, number, wire, depth)
        if wire == 3:
            continue  # a group was skipped: nothing to yield
        if pos > end:
            raise _WireError("truncated field")
        yield number, wire, value


def _wire_value(buf, pos: int, end: int, number: int, wire: int, depth: int):
    """(value, position after it) of one field's payload; see _wire_fields for the value."""
    if wire == 0:
        return _wire_varint(buf, pos, end)
    if wire == 1:
        return None, pos + 8
    if wire == 5:
        return None, pos + 4
    if wire == 2:
        length, pos = _wire_varint(buf, pos, end)
        return (pos, pos + length), pos + length
    if wire == 3:
        return None, _wire_skip_group(buf, pos, end, number, depth + 1)
    # 4 (end group) without a start; 6 and 7 do not exist
    raise _WireError(f"unexpected wire type {wire} at byte {pos}")


def _wire_skip_group(buf, pos: int, end: int, number: int, depth: int) -> int:
    """Skip a (deprecated) group up to its end tag; returns the position after it."""
    if depth > _PROTOBUF_DEPTH_LIMIT:
        raise _WireError(f"groups nested more than {_PROTOBUF_DEPTH_LIMIT} deep")
    while pos < end:
        key, pos = _wire_varint(buf, pos, end)
        inner, wire = key >> 3, key & 7
        if wire == 4:
            if inner != number:
                raise _WireError(f"group {number} closed by end tag {inner}")
            return pos
        _, pos = _wire_value(buf, pos, end, inner, wire, depth)
    raise _WireError(f"group {number} is not closed")
