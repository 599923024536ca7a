"""Resume is honest: a run records its resolved recipe (and its SHA-256) in
state/progress.json when it starts; `--resume` compares the recipe it is given (the run's
recipe.yaml, plus any `--set`) with that record.

A changed key is allowed only when every stage that reads it is still to run: the change is
then applied, kept in progress.json (`recipe_changes`) and in the record of the first stage
that reads it (so the report shows it). A change to a key that a completed stage used is
refused with one line naming the keys: the report would otherwise contradict its artifacts.
"""

from __future__ import annotations

import hashlib
import json

from edgekd.errors import ConfigError
from edgekd.pipeline.layout import STAGES

MAX_KEYS_SHOWN = 8


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
    if section in ("teacher", "deterministic", "train"):
        return "teacher"
    if section == "distill":  # the teacher stage trains distill.extra_teachers when the scheme uses them
        return "teacher" if field in ("extra_teachers", "scheme") else "distill"
    if section in ("quantize", "bench"):  # latency-targeted pruning times candidates as deployed
        return "prune" if pruning else section
    if section in ("prune", "export"):
        return section
    if section in ("name", "device"):  # where the remaining stages compute, not what: any time
        return "report"
    return "data"  # unknown: assume everything reads it


def check_changes(state: dict, recipe_dict: dict, run_dir, defaults: dict | None = None) -> dict:
    """The allowed changes of a resumed run's recipe, {key: {"from", "to", "stage"}} (empty when
    it is unchanged or the run predates recipe records); a change that a completed stage used is
    a ConfigError naming the keys."""
    stored = state.get("recipe")
    if not isinstance(stored, dict):
        return {}
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
