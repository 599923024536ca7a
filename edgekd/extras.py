"""The optional dependency sets (pyproject's extras) and the check that one is installed.

`pip install edgekd` is the torch-free set that `edgekd bench` needs (the device install);
`edgekd compress` and `edgekd export` train and export with PyTorch and need the `train`
extra. require_train() fails before anything is read or written, with one line that says
what to install, instead of an ImportError from deep inside a stage. It looks the modules
up without importing them, so it costs nothing where they are installed.
"""

from __future__ import annotations

import importlib.util

from edgekd.errors import MissingDependency

# module -> the package that brings it: what `compress` and `export` import unconditionally
# (matplotlib, also in the extra, is optional: without it a run has no pareto.png)
TRAIN_MODULES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "yaml": "PyYAML",
    "safetensors": "safetensors",
    "torch_pruning": "torch-pruning",
}
TRAIN_INSTALL = "pip install 'edgekd[train]'"


def missing(modules: dict[str, str]) -> list[str]:
    """The packages (values of `modules`) whose module cannot be found."""
    absent = []
    for module, package in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: blocked with sys.modules[name] = None
            found = False
        if not found:
            absent.append(package)
    return absent


def require_train(what: str) -> None:
    """Raise MissingDependency (exit 2) unless the `train` extra's modules are installed."""
    absent = missing(TRAIN_MODULES)
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        raise MissingDependency(f"{what} needs the training dependencies, and {', '.join(absent)} {verb} not "
                                f"installed: {TRAIN_INSTALL} (in a clone: pip install '.[train]')")
