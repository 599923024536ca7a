"""Where edgekd may write a file that a user named: the one guard of every command that writes.

`edgekd bench` (--json-out, --csv, --md, --plot) and `edgekd export` (-o) call check_outputs
before any work; `edgekd compress` writes only into its run directory, which must not hold
the command's inputs when --force replaces it (pipeline/rundir.check_inputs_outside).

An output is refused (ConfigError: exit 2, one line) whatever --force says when it is
- one of the command's inputs, compared by what the paths really are: through symlinks, and
  hard links too (same device and inode);
- an existing file of a run directory that the command reads (`run_dirs`), except in the
  folder that is the command's own (`replaceable`: export's RUN/export/);
- inside any edgekd run (a folder holding state/progress.json), a name that the run itself
  writes or reads: state/, recipe.yaml, the weights, eval.npz, the report, every top-level
  .onnx (the run's bench stage measures them all), a temp-file name (--resume deletes those).
  Written over, the run could not be resumed or would report another model;
- a folder, a link to nothing, anything else that is not a regular file or a new path (a
  device node, a FIFO, a socket), or the same file as another output.
An existing regular file is replaced only with --force.

Needs only the standard library (onnx, when installed, to find a model's external data).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePath

from edgekd.errors import ConfigError
from edgekd.pipeline import layout

MAX_RUN_DIR_FILES = 100_000  # a run directory's files are walked up to this many entries
PROGRESS_FILE = "state/progress.json"  # what makes a folder an edgekd run (written when a run starts)
# the files a run writes at its top level (the report stage's four are named in pipeline/report.py)
RUN_FILES = frozenset({layout.RECIPE_FILE, layout.TEACHER_WEIGHTS, layout.STUDENT_WEIGHTS,
                       layout.STUDENT_ALONE_WEIGHTS, layout.PRUNED_WEIGHTS, layout.PRUNED_SHAPES, layout.TEACHER_ONNX,
                       layout.STUDENT_ONNX, layout.INT8_ONNX, layout.EVAL_SET,
                       "report.json", "report.md", "results.csv", "pareto.png"})
EXTRA_TEACHER = re.compile(r"teacher\.extra\d+\.safetensors")
STATE_FOLDER = PurePath(layout.LOCK_FILE).parts[0]


def external_data(model: Path) -> list[Path]:
    """The files a model's external-data tensors name (inside its folder, check_onnx_file
    makes sure); empty without onnx or when the model cannot be read."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model (any parse error): the command refuses it later, in its own words
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


def folder_entries(folder: Path, skip: Path | None = None) -> list[Path]:
    """Every entry under `folder` (links to folders listed, not followed), the folder `skip`
    and what it holds left out; at most MAX_RUN_DIR_FILES of them."""
    entries: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        if skip is not None:
            dirs[:] = [d for d in dirs if Path(root) / d != skip]
        entries += [Path(root) / name for name in [*names, *dirs]]  # a link to a file can be listed under dirs
        if len(entries) > MAX_RUN_DIR_FILES:
            break
    return entries


def input_files(models, data=None, reference=None) -> list[Path]:
    """Every file that `edgekd bench` reads for these arguments: the models and their external
    data, every file under a run directory (without following links into folders), the
    eval set (a path; a registered dataset's name is no file) and the reference model."""
    files: list[Path] = []
    for model in map(Path, models):
        files += folder_entries(model) if model.is_dir() else [model, *external_data(model)]
    files += [Path(p) for p in (data, reference) if p is not None]
    return files


def is_run(folder: Path) -> bool:
    """An edgekd run directory: state/progress.json, a regular file, is written as a run starts."""
    try:
        return stat.S_ISREG(os.lstat(folder / PROGRESS_FILE).st_mode)
    except (OSError, ValueError):
        return False


def run_file(relative: PurePath) -> str | None:
    """What `relative` (a path inside an edgekd run) is to the run, or None for a name of the
    user's own."""
    if relative.parts and relative.parts[0] == STATE_FOLDER:
        return "in the run's state folder"
    if relative.name.startswith(".") and relative.name.endswith(".tmp"):
        return "a temp-file name, which --resume removes"
    if len(relative.parts) != 1:
        return None
    if relative.name in RUN_FILES or EXTRA_TEACHER.fullmatch(relative.name):
        return "one of the run's own files"
    if relative.suffix.lower() == ".onnx":
        return "a top-level model, which the run's bench stage measures with its own"
    return None


def check_outputs(outputs: dict, inputs: list, *, force: bool = False, run_dirs: list = (),
                  command: str = "edgekd bench", replaceable: Path | None = None) -> None:
    """ConfigError unless every output path (flag -> path; None: not asked for) can be written
    (see the module's docstring). `inputs`: every file the command reads; `run_dirs`: folders
    it reads (runs, image folders) whose existing files are never replaced, except those under
    `replaceable`; its nearest existing parent must be a folder."""
    seen: dict[str, str] = {}
    for flag, path in ((f, p) for f, p in outputs.items() if p is not None):
        text, path = str(path), Path(path)
        if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
            raise ConfigError(f"{flag} '{text}' names a folder; give a file name")
        try:
            real = os.path.realpath(path)
            here = Path(os.path.realpath(path.parent)) / path.name  # where the entry itself is, a link not followed
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{flag} '{text}' is not a usable path ({exc}); give another path") from None
        if real in seen:
            raise ConfigError(f"{seen[real]} and {flag} name the same file '{path}'; give each output its own file")
        seen[real] = flag
        parent = Path(real).parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} '{path}': '{parent}' is not a folder; give a path in a folder")
        exists = os.path.lexists(path)
        if exists:
            _check_kind(flag, path, inputs, command)
        for location in dict.fromkeys([Path(real), here]):  # what it names, then where a link itself is
            _check_runs(flag, path, location, exists, run_dirs, command, replaceable)
        if exists and not force:
            raise ConfigError(f"{flag} '{path}' already exists; pass --force to replace it, or give another path")


def _check_kind(flag: str, path: Path, inputs: list, command: str) -> None:
    """An existing output: a regular file (through links) that is none of the inputs."""
    target = _identity(path)
    if target is None:
        raise ConfigError(f"{flag} '{path}' is a link to nothing; {command} writes only regular files: remove the "
                          "link or give another path")
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{flag} '{path}' is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{flag} '{path}' is not a regular file; give the path of a new file")
    for item in inputs:
        if _identity(item) == target:
            raise ConfigError(f"{flag} '{path}' is the input '{item}'; {command} never writes over its inputs: "
                              "give another output path")


def _check_runs(flag: str, path: Path, location: Path, exists: bool, run_dirs, command: str, replaceable) -> None:
    """`location` (where the output is, or what it names) inside a run that the command reads,
    or on a name that any edgekd run around it owns."""
    if exists and not (replaceable is not None and _inside(location, replaceable)):
        for folder in run_dirs:
            if _inside(location, folder):
                raise ConfigError(f"{flag} '{path}' is a file of the run directory '{folder}' that {command} reads; "
                                  "it never writes over a run's files: give an output path outside it (or a new "
                                  "file name)")
    for run in (p for p in location.parents if is_run(p)):
        what = run_file(location.relative_to(run))
        if what is not None:
            raise ConfigError(f"{flag} '{path}' is {what} (edgekd run '{run}'); writing it would break the run "
                              "(its --resume, or the models it reports): give a path outside the run, or in a "
                              "folder of your own inside it")


def _identity(path: Path):
    """(device, inode) of what `path` names after every symlink, or None if nothing does."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _inside(location: Path, folder: Path) -> bool:
    """`location` (a resolved path) is `folder` (as it really is) or inside it."""
    try:
        return location.is_relative_to(Path(os.path.realpath(folder)))
    except (OSError, ValueError):
        return False
