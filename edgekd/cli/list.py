"""`edgekd list [REGISTRY]`: what each registry (extension point, edgekd/registry.py) holds,
one section each, with the recipe key that names its entries. A registry whose module needs
the `train` extra (torch) is listed as such where that extra is not installed; the others,
providers included, list on the device install. `--plugin MODULE` imports a user's module
first (as a recipe's `plugins:` does), so that its registrations are listed too."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from dataclasses import dataclass
from typing import Callable

import click

from edgekd.extras import TRAIN_INSTALL, TRAIN_MODULES, missing, require_train
from edgekd.registry import Registry, import_plugins

MAX_DESCRIPTION = 100  # characters of an entry's description in the text listing


def docstring_summary(entry) -> str:
    """An entry's `description`, else the first sentence of its own docstring (a function's or
    a class's, not inherited); '' without either."""
    text = getattr(entry, "description", None)
    if not (isinstance(text, str) and text) and (inspect.isfunction(entry) or inspect.isclass(entry)):
        text = entry.__doc__
    if not isinstance(text, str):
        return ""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    return re.split(r"\.\s+(?=[A-Z])", paragraph)[0].rstrip(".")  # not at "et al. 2018"


@dataclass(frozen=True)
class Listed:
    """A registry as `edgekd list` shows it: where it lives, the recipe key that names its
    entries, whether importing it needs the train extra, and how an entry is described."""

    module: str
    attribute: str
    recipe_key: str
    needs_train: bool = False
    describe: Callable[[object], str] = docstring_summary
    note: str = ""  # a line after the entries

    @property
    def path(self) -> str:
        return f"{self.module}.{self.attribute}"

    def load(self) -> Registry:
        return getattr(importlib.import_module(self.module), self.attribute)


# the order of ARCHITECTURE.md's "To add X, touch this file" table
CATALOG: Registry[Listed] = Registry("registry")
CATALOG.register("datasets", Listed("edgekd.data.formats", "FORMATS", "data.name"))
CATALOG.register("architectures", Listed("edgekd.models.zoo", "ARCHITECTURES", "teacher.arch, distill.arch",
                                         needs_train=True))
CATALOG.register("terms", Listed("edgekd.distill.terms", "TERMS", "distill.terms[].kind"))
CATALOG.register("schemes", Listed("edgekd.distill.scheme_registry", "SCHEMES", "distill.scheme"))
CATALOG.register("responses", Listed("edgekd.distill.responses", "RESPONSES", "distill.response"))
CATALOG.register("importances", Listed("edgekd.prune.importance", "IMPORTANCES", "prune.importance"))
CATALOG.register("calibrations", Listed("edgekd.quant.calibration", "CALIBRATORS", "quantize.calibration",
                                        describe=lambda e: docstring_summary(e)
                                        or docstring_summary(getattr(e, "ranges", None))))
CATALOG.register("providers", Listed("edgekd.runtime.providers", "PROVIDERS", "bench.provider, --provider",
                                     describe=lambda provider: provider.ort_name,
                                     note="which of them this onnxruntime has: edgekd bench --list-providers"))


def section(name: str) -> dict:
    """One registry: its kind, path, recipe key, and entries ({name: description}), or None
    entries and `needs` (what to install) where the train extra is missing."""
    listed = CATALOG.get(name)
    out = {"registry": listed.path, "recipe_key": listed.recipe_key, **({"note": listed.note} if listed.note else {})}
    if listed.needs_train and missing(TRAIN_MODULES):
        return {**out, "entries": None, "needs": TRAIN_INSTALL}
    registry = listed.load()
    out = {**out, "kind": registry.kind,
           "entries": {entry: listed.describe(registry.get(entry)) for entry in registry}}
    if name == "architectures":  # torchvision:NAME takes any of these (the whole list: errors show the closest)
        from edgekd.models.external import torchvision_names

        out["torchvision"] = torchvision_names()
    return out


def echo_section(name: str, listing: dict) -> None:
    click.echo(f"{name}: {listing['recipe_key']} ({listing['registry']})")
    if listing["entries"] is None:
        click.echo(f"  needs the training dependencies: {listing['needs']}")
        return
    width = max((len(entry) for entry in listing["entries"]), default=0)
    for entry, description in listing["entries"].items():
        if len(description) > MAX_DESCRIPTION:
            description = description[: MAX_DESCRIPTION - 3] + "..."
        click.echo(f"  {entry:<{width}}  {description}".rstrip())
    if listing.get("torchvision"):
        names = listing["torchvision"]  # one line, whole: grep finds a name in it
        click.echo(f"  (torchvision:NAME, NAME one of these {len(names)} classifiers: {', '.join(names)})")
    if listing.get("note"):
        click.echo(f"  ({listing['note']})")


@click.command("list")
@click.argument("name", required=False, metavar="[REGISTRY]")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import this module first, as a recipe's plugins: does (repeatable): its registrations are listed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def list_registries(name, plugins, as_json):
    """What each registry holds: dataset formats, architectures, distillation terms, schemes and
    response losses, pruning importances, calibration methods, execution providers.

    REGISTRY lists one of them: datasets, architectures, terms, schemes, responses,
    importances, calibrations or providers. A registered name is valid at the recipe key shown.
    """
    if plugins:
        import_plugins(list(plugins), "--plugin")
    names = CATALOG.names() if name is None else (name,)
    if name is not None and CATALOG.get(name).needs_train:  # unknown names fail here too
        require_train(f"edgekd list {name}")
    listings = {each: section(each) for each in names}
    if as_json:
        click.echo(json.dumps(listings, indent=2))
        return
    for i, each in enumerate(names):
        if i:
            click.echo("")
        echo_section(each, listings[each])
