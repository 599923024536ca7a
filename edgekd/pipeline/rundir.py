"""Run directories: edgekd writes only where it is asked to, and only into what it created.

- A run directory is used by its real path (links and '..' resolved once, at the start).
- A new run needs a directory that is new or empty; with --force, an earlier edgekd run
  (it has state/progress.json or recipe.yaml), whose artifacts are then replaced.
- Nothing inside a run directory is followed through a link: a run (or a --force target)
  holding a symbolic link or a special file (FIFO, socket, device) is refused, so that no
  write, read or delete of the run can reach outside it.
- A run holds a lock (fcntl.flock on state/run.lock, which names the holder) for as long as
  it uses the directory; a second run on the same directory is refused with one line. The
  kernel drops the lock when the process ends, however it ends (SIGKILL included).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import stat
from pathlib import Path
from typing import Iterator

from edgekd.errors import ConfigError
from edgekd.pipeline.layout import LOCK_FILE, RECIPE_FILE, RUNS_FOLDER

EXPORT_FOLDER = "export"  # `edgekd export RUN` writes here by default; no stage reads it

PROGRESS_FILE = "state/progress.json"  # runstate.STATE_FILE (runstate imports torch-free modules only)
MAX_ENTRIES = 100_000  # a run directory holds a few dozen files; more is not a run


def real_run_dir(path: str | Path) -> Path:
    """The real path of a run directory (links resolved, absolute), whether it exists or not."""
    try:
        return Path(os.path.realpath(Path(path).expanduser()))
    except (ValueError, OSError) as exc:  # a NUL byte, a link loop, a name too long
        raise ConfigError(f"run directory '{path}' is not a usable path ({exc})") from exc


def check_new_run_dir(path: str | Path, force: bool) -> Path:
    """Before a new run (nothing is written): the real path must be new or empty, or with
    `force` an earlier edgekd run without links inside. Returns the real path."""
    real = real_run_dir(path)
    shown = _shown(path, real)
    if os.path.lexists(real) and not real.is_dir():
        raise ConfigError(f"run directory {shown} exists and is not a directory; give another --out")
    if not real.is_dir():
        ancestor = real.parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ConfigError(f"run directory {shown} cannot be created: '{ancestor}' is not a folder; "
                              "give another --out")
        return real
    if _is_empty(real):
        return real
    holder = locked_by(real)
    if holder is not None:
        raise in_use(path, holder)
    if not force:
        raise ConfigError(f"run directory {shown} already exists and is not empty; use --resume {path} to "
                          "continue it, --force to replace its artifacts, or another --out")
    if not is_edgekd_run(real):
        raise ConfigError(f"run directory {shown} is not empty and is not an edgekd run (no {RECIPE_FILE} or "
                          f"{PROGRESS_FILE}): --force replaces only an earlier run's artifacts; give a new or "
                          "empty --out")
    check_no_links(real, shown)
    return real


def is_edgekd_run(real: Path) -> bool:
    return any(_is_regular(real / name) for name in (RECIPE_FILE, PROGRESS_FILE))


def check_resume_dir(path: str | Path) -> Path:
    """Before a resume (nothing is written): an edgekd run directory without links. Returns the real path."""
    real = real_run_dir(path)
    shown = _shown(path, real)
    if not real.is_dir():
        what = "is not a directory" if os.path.lexists(real) else "does not exist"
        raise ConfigError(f"run directory {shown} {what}; nothing to resume")
    check_no_links(real, shown)
    if not _is_regular(real / RECIPE_FILE):
        raise ConfigError(f"'{path}' is not an edgekd run directory (no {RECIPE_FILE}); nothing to resume")
    holder = locked_by(real)
    if holder is not None:
        raise in_use(path, holder)
    return real


def run_recipe(path: str | Path, overrides: list[str] | tuple = ()):
    """The recipe of the run to resume (its recipe.yaml, read only after the directory is
    checked for links), with `--set` overrides applied."""
    from edgekd.recipe import Recipe

    return Recipe.from_yaml(check_resume_dir(path) / RECIPE_FILE, overrides)


def recipe_inputs(recipe) -> dict[str, Path]:
    """The files and folders a recipe reads (recipe key -> path), those that exist; an ONNX
    model's external data included."""
    from edgekd.io.outputs import external_data

    cfg = recipe.teacher
    named = {"data.name": recipe.data.name, "data.path": recipe.data.path, "data.unlabeled": recipe.data.unlabeled,
             "teacher.weights": cfg.weights, "teacher.onnx": cfg.onnx,
             "teacher.transfer.pretrained": cfg.transfer.pretrained if cfg.transfer is not None else None}
    for i, extra in enumerate(recipe.distill.extra_teachers):
        for key in ("weights", "onnx"):
            if isinstance(extra, dict) and isinstance(extra.get(key), str):
                named[f"distill.extra_teachers[{i}].{key}"] = extra[key]
    found: dict[str, Path] = {}
    for key, value in named.items():
        try:
            if value is None or not Path(value).expanduser().exists():
                continue
        except (OSError, ValueError):
            continue  # not a usable path: the recipe's own checks refuse it
        path = Path(value).expanduser()
        found[key] = path
        if path.suffix.lower() == ".onnx" and path.is_file():
            found.update({f"{key} (its external data)": data for data in external_data(path)})
    return found


def check_inputs_outside(recipe, real: Path, files: dict | None = None) -> None:
    """A new run (or one that --force replaces) writes and deletes files in `real`: none of the
    command's inputs (the recipe's, and `files`: label -> path, such as the recipe file) may
    lie inside it, and it may not lie inside a data folder, whose next scan would read it."""
    inputs = {**recipe_inputs(recipe), **{k: Path(v) for k, v in (files or {}).items() if v is not None}}
    for key, path in inputs.items():
        target = real_run_dir(path)
        if target == real or real in target.parents:
            raise ConfigError(f"{key} '{path}' is inside the run directory '{real}', whose files the run writes "
                              "and replaces: copy it elsewhere first, or give another --out")
        if key in ("data.name", "data.unlabeled") and target.is_dir() and target in real.parents:
            raise ConfigError(f"run directory '{real}' is inside {key} '{path}', whose images edgekd reads; give an "
                              "--out outside the data folder")


def export_inputs(run: Path | None, recipe, files: dict) -> tuple[list[Path], list[Path]]:
    """What `edgekd export` reads: (files, folders). A run: every file of it but its export/
    folder (export's own output), and the recipe's inputs; else `files` (label -> path:
    the weights, --data, --data-path), those that exist."""
    from edgekd.io.outputs import folder_entries

    named = dict(recipe_inputs(recipe)) if run is not None else {}
    for key, value in files.items():
        try:
            if value is not None and Path(value).expanduser().exists():
                named[key] = Path(value).expanduser()
        except (OSError, ValueError):
            continue
    folders = [p for p in named.values() if p.is_dir()]
    found = [p for p in named.values() if not p.is_dir()]
    if run is not None:
        found += folder_entries(run, skip=run / EXPORT_FOLDER)
        folders.append(run)
    return found, folders


def check_export_output(output: Path, *, force: bool, run: Path | None, recipe=None, files: dict) -> None:
    """`edgekd export -o`: the shared output guard (edgekd.io.outputs), with export's inputs;
    in a run, only its export/ folder holds files that --force may replace."""
    from edgekd.io.outputs import check_outputs

    found, folders = export_inputs(run, recipe, files)
    check_outputs({"--output": output}, found, force=force, run_dirs=folders, command="edgekd export",
                  replaceable=run / EXPORT_FOLDER if run is not None else None)


def check_no_links(real: Path, shown: str | None = None) -> None:
    """Every entry under `real` is a plain file or folder: a link (or a FIFO, socket or device)
    would let the run read, write or delete outside its directory, so it is refused."""
    shown = shown or f"'{real}'"
    count = 0
    stack = [real]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise ConfigError(f"cannot read run directory {shown}: {exc.strerror or exc}") from exc
        for entry in entries:
            count += 1
            if count > MAX_ENTRIES:
                raise ConfigError(f"run directory {shown} holds more than {MAX_ENTRIES} entries; not an edgekd run")
            relative = os.path.relpath(entry.path, real)
            if entry.is_symlink():
                target = _printable(os.readlink(entry.path))
                raise ConfigError(f"run directory {shown} contains a link '{_printable(relative)}' -> '{target}'; "
                                  "edgekd never follows links inside a run directory: replace it with the file "
                                  "itself or remove it")
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif not entry.is_file(follow_symlinks=False):
                raise ConfigError(f"run directory {shown} contains '{_printable(relative)}', which is not a regular "
                                  "file or folder; remove it")


def run_folders(real: Path) -> list[Path]:
    """The run directory and every folder inside it (links are refused before, by check_no_links)."""
    folders, stack = [], [real]
    while stack:
        folder = stack.pop()
        folders.append(folder)
        with contextlib.suppress(OSError):
            stack.extend(Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    return folders


@contextlib.contextmanager
def run_lock(real: Path, shown: str | Path) -> Iterator[None]:
    """Hold the run directory's lock while the block runs, creating the directory and state/
    when they are new. On every way out the lock file is removed, the lock released, and the
    folders created here removed again if they are still empty (a refused run leaves nothing)."""
    import fcntl

    missing, folder = [], real
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created, fd, path = [], None, real / LOCK_FILE
    try:
        for folder in [*reversed(missing), real / "state"]:
            if not os.path.lexists(folder):
                with contextlib.suppress(FileExistsError):
                    folder.mkdir()
                    created.append(folder)
            if folder.is_symlink() or not folder.is_dir():
                raise ConfigError(f"'{folder}' is not a plain folder; edgekd never follows links inside a run "
                                  "directory")
        fd = _open_locked(path, shown, fcntl)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode("utf-8"))
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
            os.close(fd)  # releases the flock
        for folder in reversed(created):  # a run refused right after locking leaves nothing behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def locked_by(real: Path) -> str | None:
    """Who holds the run directory's lock (as a phrase), or None when no run does."""
    import fcntl

    path = real / LOCK_FILE
    if not _is_regular(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a run holds it exclusively
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)  # drops our shared lock, never the holder's
    return None


def in_use(shown, holder: str) -> ConfigError:
    return ConfigError(f"run directory '{shown}' is in use by another edgekd run ({holder}); wait for it to end, "
                       "or use another --out")


def _open_locked(path: Path, shown, fcntl) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(5):  # the holder may remove the file between our open and our flock: retry
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"'{path}' is a link; edgekd never follows links inside a run directory") from exc
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise in_use(shown, holder) from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise ConfigError(f"run directory '{shown}' is in use by another edgekd run; try again")


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _read_holder(fd: int) -> str:
    """The holder named in the lock file (data: at most 1 kB read, printable characters only)."""
    try:
        raw = json.loads(os.pread(fd, 1024, 0).decode("utf-8"))
        return _printable(f"pid {int(raw['pid'])} on {raw['host']}, started {raw['started']}")[:160]
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _is_empty(real: Path) -> bool:
    with os.scandir(real) as entries:
        return next(entries, None) is None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _shown(path, real: Path) -> str:
    return f"'{path}'" if str(real) == str(path) else f"'{path}' (real path '{real}')"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))


def new_run_dir(name: str, out_dir: str | None, force: bool) -> Path:
    """The run directory as the user will see it (not resolved): an explicit out_dir (--out),
    checked by `rundir.check_new_run_dir` (new or empty, or an earlier run with force), or the
    first free runs/NAME, runs/NAME-2, ... (an entry of that name, even a dangling link, is taken)."""
    if out_dir is not None:
        path = Path(out_dir)
        check_new_run_dir(path, force)
        return path
    check_run_name(name)
    base = Path(RUNS_FOLDER) / name
    path, n = base, 1
    while os.path.lexists(path):
        n += 1
        path = base.with_name(f"{name}-{n}")
    check_new_run_dir(path, force)  # runs/ itself may be a link: the real path must be new too
    return path


def check_run_name(name: str) -> None:
    """A run name is one folder name under runs/: never '.', '..', a path or a control character."""
    bad = (not isinstance(name, str) or name.strip() in ("", ".", "..") or any(sep in name for sep in ("/", "\\"))
           or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8", "replace")) > 200)
    if bad:
        shown = repr(name)[:60]
        raise ConfigError(f"run name {shown} cannot be a folder name under {RUNS_FOLDER}/ (no '.', '..', '/', "
                          "control characters, at most 200 bytes); set --name or give --out")
