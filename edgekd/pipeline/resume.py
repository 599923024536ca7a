"""Resume is honest: a run records its resolved recipe (and its SHA-256) in
state/progress.json when it starts; `--resume` compares the recipe it is given (the run's
recipe.yaml, plus any `--set`) with that record.

A changed key is allowed only when every stage that reads it is still to run: the change is
then applied, kept in progress.json (`recipe_changes`) and in the record of the first stage
that reads it (so the report shows it). A change to a key that a completed stage used is
refused with one line naming the keys: the report would otherwise contradict its artifacts.

The data is compared too (`check_data`): the data stage records a fingerprint of what it read
(edgekd.data.fingerprint; the details in state/data-fingerprint.json.gz, the digests in its
record), and a resumed run whose data changed since is refused, naming what changed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Callable

from edgekd.configtools import MAX_MESSAGE, clip
from edgekd.errors import ConfigError, DataError
from edgekd.io.regular import open_regular
from edgekd.pipeline.layout import DATA_FINGERPRINT, STAGES
from edgekd.recipe import RENAMED_SECTIONS

MAX_KEYS_SHOWN = 8
MAX_FINGERPRINT_BYTES = 2 * 1024**3  # the data fingerprint's details, unzipped (about 100 bytes per file)


def plain(recipe_dict: dict) -> dict:
    """The recipe as JSON data (tuples become lists, and so on), as progress.json keeps it."""
    return json.loads(json.dumps(recipe_dict, default=str))


def fingerprint(recipe_dict: dict) -> str:
    """SHA-256 of the recipe's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(plain(recipe_dict), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_keys(old: dict, new: dict, prefix: str = "", defaults: dict | None = None) -> dict:
    """Dotted key -> (old value, new value) for every leaf that differs (lists compare whole).
    A key the old record lacks (a field added to edgekd since the run started) is no change
    when its new value is the default (`defaults`: the default recipe as plain data)."""
    changes = {}
    defaults = defaults if isinstance(defaults, dict) else {}
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(changed_keys(a, b, name + ".", defaults.get(key)))
        elif key not in old and key in defaults and b == defaults[key]:
            continue
        elif a != b or (key in old) != (key in new):
            changes[name] = (a, b)
    return changes


def first_stage(key: str, old: dict, new: dict) -> str:
    """The first stage of the chain that reads `key` (see chain._inputs for who reads what)."""
    section, _, rest = key.partition(".")
    field = rest.partition(".")[0]
    pruning = bool((old.get("prune") or {}).get("enabled") or (new.get("prune") or {}).get("enabled"))
    if section in ("data", "seed", "plugins"):
        return "data"
    if section in ("teacher", "deterministic", "compute"):
        return "teacher"
    if section == "distill":  # the teacher stage trains distill.extra_teachers when the scheme uses them
        return "teacher" if field in ("extra_teachers", "scheme") else "distill"
    if section in ("quantize", "bench"):  # latency-targeted pruning times candidates as deployed
        return "prune" if pruning else section
    if section in ("prune", "export"):
        return section
    if section in ("name", "device") or key == "compute.threads":  # where/how the rest computes: any time
        return "report"
    return "data"  # unknown: assume everything reads it


def check_changes(state: dict, recipe_dict: dict, run_dir, defaults: dict | None = None) -> dict:
    """The allowed changes of a resumed run's recipe, {key: {"from", "to", "stage"}} (empty when
    it is unchanged or the run predates recipe records); a change that a completed stage used is
    a ConfigError naming the keys."""
    stored = state.get("recipe")
    if not isinstance(stored, dict):
        return {}
    if not any(name in stored for name in RENAMED_SECTIONS.values()):  # a run from before a section's rename
        stored = {RENAMED_SECTIONS.get(key, key): value for key, value in stored.items()}
    new = plain(recipe_dict)
    if fingerprint(new) == fingerprint(stored):
        return {}
    changes = changed_keys(stored, new, defaults=plain(defaults) if defaults is not None else None)
    done = set(state.get("done") or {})
    refused, allowed = [], {}
    for key, (old_value, new_value) in changes.items():
        stage = first_stage(key, stored, new)
        used_by = [s for s in STAGES[STAGES.index(stage):] if s in done]
        if used_by:
            refused.append((key, used_by[0]))
        else:
            allowed[key] = {"from": old_value, "to": new_value, "stage": stage}
    if refused:
        keys = ", ".join(f"{key} ({stage})" for key, stage in refused[:MAX_KEYS_SHOWN])
        more = f" and {len(refused) - MAX_KEYS_SHOWN} more" if len(refused) > MAX_KEYS_SHOWN else ""
        remaining = [s for s in STAGES if s not in done]
        way_out = (f"change (with --set) only keys of the stages still to run ({', '.join(remaining)})" if remaining
                   else "every stage is done")
        raise ConfigError(
            f"cannot resume '{run_dir}': the recipe differs from the one the run started with in {keys}{more}, "
            f"read by completed stages; start a new run, or {way_out}")
    return allowed


def record_changes(state: dict, changes: dict, recipe_dict: dict) -> None:
    """Keep the applied changes and the new recipe in the progress state (in place)."""
    if changes:
        entry = {"after": [s for s in STAGES if s in (state.get("done") or {})], "changes": changes}
        state["recipe_changes"] = [*state.get("recipe_changes", []), entry]
    state["recipe"] = plain(recipe_dict)
    state["recipe_sha256"] = fingerprint(recipe_dict)


def stage_notes(state: dict) -> dict:
    """stage -> {key: {"from", "to"}}: the recipe changes of every resume so far, by the first
    stage that reads each key (that stage's record notes them, and so does the report)."""
    notes: dict = {}
    for entry in state.get("recipe_changes") or []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for key, change in (changes if isinstance(changes, dict) else {}).items():
            if isinstance(change, dict) and change.get("stage") in STAGES:
                notes.setdefault(change["stage"], {})[key] = {"from": change.get("from"), "to": change.get("to")}
    return notes


def data_fingerprint(splits) -> dict:
    """The fingerprint of the data stage's data (edgekd.data.fingerprint): the file list that the
    lister produced (kept in `splits.record`), and the loaded arrays' hashes."""
    from edgekd.data.fingerprint import VERSION, arrays_part
    from edgekd.data.image_file_splits import FILES_FINGERPRINT

    return {"version": VERSION, "files": splits.record.get(FILES_FINGERPRINT), "arrays": arrays_part(splits)}


def save_data_fingerprint(run_dir: Path, fingerprint: dict) -> dict:
    """Write the fingerprint's details into the run (gzip JSON, atomic); returns the summary that
    the data stage's record keeps (its digests, compared on --resume)."""
    from edgekd.data.fingerprint import summary
    from edgekd.io.artifacts import atomic_write_bytes

    text = json.dumps(fingerprint, separators=(",", ":"), ensure_ascii=False)
    atomic_write_bytes(Path(run_dir) / DATA_FINGERPRINT, gzip.compress(text.encode("utf-8", "surrogatepass"), mtime=0))
    return summary(fingerprint)


def check_data(state: dict, data_cfg, splits: Callable, run_dir: Path, shown, log: Callable[[str], None]) -> None:
    """--resume: a run whose data stage is done must find the data it recorded. The file list
    is compared first (stat only, before any file is scanned), then the loaded arrays
    (`splits()`, which preflight loads anyway). A difference is a DataError naming it; a run
    recorded before fingerprints existed resumes with a note."""
    from edgekd.data.fingerprint import VERSION, arrays_changes, arrays_part, digest, files_changes, files_part
    from edgekd.data.image_file_splits import list_files

    record = (state.get("done") or {}).get("data")
    if record is None:
        return  # the data stage runs again, and records the data as it is now
    recorded = record.get("fingerprint")
    if recorded is None or (isinstance(recorded, dict) and recorded.get("version") != VERSION):
        log(f"[resume] note: '{shown}' was started by an edgekd that did not record its data as this one does; "
            "whether the data changed since is not checked")
        return
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), (str, type(None)))
                                                 for k in ("files_sha256", "arrays_sha256")):
        raise ConfigError(f"resume state of '{shown}' is corrupt (bad data fingerprint); start a new run")
    stored = _stored_fingerprint(Path(run_dir) / DATA_FINGERPRINT, recorded)
    listing = list_files(data_cfg)
    files = files_part(listing) if listing is not None else None
    if digest(files) != recorded.get("files_sha256"):
        old = stored.get("files")
        _refuse(shown, files_changes(old, files) if old and files else
                ["it is no longer a list of image files" if old and not files else "the list of files changed"])
    arrays = arrays_part(splits())
    if digest(arrays) != recorded.get("arrays_sha256"):
        old = stored.get("arrays")
        _refuse(shown, arrays_changes(old, arrays) if old else ["the loaded images or labels differ"])


def _stored_fingerprint(path: Path, recorded: dict) -> dict:
    """The fingerprint's details, each part kept only when its digest is the recorded one
    ({} when the file is missing or unreadable: the refusal is then less specific)."""
    from edgekd.data.fingerprint import digest

    try:
        with open_regular(path, OSError) as f, gzip.GzipFile(fileobj=f) as unzipped:
            text = unzipped.read(MAX_FINGERPRINT_BYTES + 1)  # bounded: never what a forged file expands to
        data = json.loads(text.decode("utf-8", "surrogatepass")) if len(text) <= MAX_FINGERPRINT_BYTES else None
    except (OSError, ValueError, EOFError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {part: data[part] for part in ("files", "arrays")
            if isinstance(data.get(part), dict) and digest(data[part]) == recorded.get(f"{part}_sha256")}


def _refuse(shown, changes: list) -> None:
    from edgekd.data.fingerprint import FIRST_SHOWN

    head = f"cannot resume '{clip(shown, 100)}': its data changed since the data stage ran ("
    tail = "); restore that data, or start a new run"
    listed = "; ".join(changes[:FIRST_SHOWN]) + (f"; {len(changes) - FIRST_SHOWN} more" if len(changes) > FIRST_SHOWN
                                                 else "")
    room = MAX_MESSAGE - len(head) - len(tail)
    listed = listed if len(listed) <= room else listed[: room - 4] + " ..."
    raise DataError(head + listed + tail)
