"""Where `edgekd bench` may write its output files (--json-out, --csv, --md, --plot).

An output is never one of the inputs (a model or its external data, --data, --reference,
any file of a benched run directory), compared by what the paths really are: through
symlinks, and hard links too (same device and inode). An existing file is replaced only with
--force; a folder or anything but a regular file is never replaced, and two outputs must be
two files. check_outputs raises ConfigError (exit 2, one line) before anything is benched.

Needs only the standard library (onnx, when installed, to find a model's external data).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgekd.errors import ConfigError

MAX_RUN_DIR_FILES = 100_000  # a run directory's files are walked up to this many entries


def _external_data(model: Path) -> list[Path]:
    """The files a model's external-data tensors name (inside its folder, check_onnx_file
    makes sure); empty without onnx or when the model cannot be read."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model (any parse error): bench refuses it later, with its own message
        return []
    names: set[str] = set()

    def tensor(t):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in t.external_data if e.key == "location")

    def graph(g):
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            tensor(s.values)
            tensor(s.indices)
        nodes(g.node)

    def nodes(node_list):
        for node in node_list:
            for a in node.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("g"):
                    graph(a.g)
                for g in a.graphs:
                    graph(g)

    graph(proto.graph)
    for function in proto.functions:
        nodes(function.node)
    return [model.parent / name for name in sorted(names)]


def input_files(models, data=None, reference=None) -> list[Path]:
    """Every file that `edgekd bench` reads for these arguments: the models and their external
    data, every file under a run directory (without following links into folders), the
    eval set (a path; a registered dataset's name is no file) and the reference model."""
    files: list[Path] = []
    for model in map(Path, models):
        if model.is_dir():
            count = 0
            for root, dirs, names in os.walk(model, followlinks=False):
                for name in [*names, *dirs]:  # a link to a file can be listed under dirs
                    files.append(Path(root) / name)
                    count += 1
                if count > MAX_RUN_DIR_FILES:
                    break
        else:
            files += [model, *_external_data(model)]
    files += [Path(p) for p in (data, reference) if p is not None]
    return files


def _identity(path: Path):
    """(device, inode) of what `path` names after every symlink, or None if nothing does."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _inside(path: Path, folder: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(folder)))
    except (OSError, ValueError):
        return False


def check_outputs(outputs: dict, inputs: list, *, force: bool = False, run_dirs: list = ()) -> None:
    """ConfigError unless every output path (flag -> path; None: not asked for) can be written:
    not an input (same real file), not inside one of `run_dirs` if it exists there, not a
    folder or special file, not an existing file without `force`, not the same file as
    another output, and its nearest existing parent a folder."""
    seen: dict[str, str] = {}
    for flag, path in ((f, p) for f, p in outputs.items() if p is not None):
        text, path = str(path), Path(path)
        if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
            raise ConfigError(f"{flag} '{text}' names a folder; give a file name")
        real = os.path.realpath(path)
        if real in seen:
            raise ConfigError(f"{seen[real]} and {flag} name the same file '{path}'; give each output its own file")
        seen[real] = flag
        parent = Path(real).parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} '{path}': '{parent}' is not a folder; give a path in a folder")
        if not os.path.lexists(path):
            continue  # a new file: no input can be one that does not exist yet
        _check_existing(flag, path, inputs, run_dirs, force)


def _check_existing(flag: str, path: Path, inputs: list, run_dirs, force: bool) -> None:
    target = _identity(path)
    if target is not None:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{flag} '{path}' is a folder; give a file name")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{flag} '{path}' is not a regular file; give the path of a new file")
        for item in inputs:
            if _identity(item) == target:
                raise ConfigError(f"{flag} '{path}' is the input '{item}'; edgekd bench never writes over its "
                                  "inputs: give another output path")
    for folder in run_dirs:
        if _inside(path, folder) or (os.path.islink(path) and _inside(path.parent, folder)):
            raise ConfigError(f"{flag} '{path}' is a file of the run directory '{folder}' being benched; give an "
                              "output path outside it (or a new file name)")
    if not force:
        raise ConfigError(f"{flag} '{path}' exists; pass --force to replace it, or give another path")
