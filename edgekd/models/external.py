"""Models from outside edgekd's zoo: torchvision and timm classifiers, and users' factories.

    torchvision_model("resnet18", 1, 10, {})      # any torchvision classifier, RGB stem swapped for grey
    timm_model("resnet18", 1, 10, {})             # any timm model (pip install 'edgekd[timm]')
    import_factory("mynet:build", search_dirs)    # mynet.py: installed, next to the recipe, or here

Nothing is downloaded: pretrained weights come from a local file (teacher.weights or
teacher.transfer.pretrained), never from a hub.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from torch import nn

from edgekd.configtools import clip, did_you_mean, shown
from edgekd.errors import ConfigError, first_line

logger = logging.getLogger("edgekd")

BUILD_ERRORS = (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError, MemoryError)
# timm arguments that would read or download weights: pretrained weights are a local file in edgekd
TIMM_REFUSED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def torchvision_names() -> list[str]:
    """The torchvision classifiers (torchvision.models, not detection or segmentation), sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, in_channels: int, num_classes: int, arch_args: dict) -> nn.Module:
    import torchvision

    available = torchvision_names()
    if name not in available:  # the list is long: the closest names, and where to read all of them
        raise ConfigError(f"unknown torchvision model '{name}'{did_you_mean(name, available)} ({len(available)} "
                          "torchvision classifiers: edgekd list architectures lists them all)")
    try:
        # weights=None: pretrained weights come from a local file (teacher.weights), never a download
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **arch_args)
    except BUILD_ERRORS as exc:
        raise ConfigError(clip(f"cannot build torchvision model '{name}' with arch_args {shown(arch_args)}: "
                               f"{first_line(exc)}")) from exc
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return model


def timm_model(name: str, in_channels: int, num_classes: int, arch_args: dict) -> nn.Module:
    """timm.create_model(name, pretrained=False, in_chans=..., num_classes=..., **arch_args)."""
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(f"'timm:{name}' needs the timm package: pip install 'edgekd[timm]' "
                          f"({first_line(exc)})") from None
    refused = [key for key in TIMM_REFUSED if key in arch_args]
    if refused:
        raise ConfigError(f"timm:{name}: arch_args {', '.join(refused)} are not accepted (edgekd never downloads "
                          "or unpickles weights); give a local weights file as teacher.weights or "
                          "teacher.transfer.pretrained")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:10]
        hint = f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"unknown timm model '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=num_classes, **arch_args)
    except BUILD_ERRORS as exc:
        raise ConfigError(clip(f"cannot build timm model '{name}' with arch_args {shown(arch_args)}: "
                               f"{first_line(exc)}")) from exc


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d for one taking `in_channels` (torchvision models expect RGB)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups if module.groups == 1 else in_channels,
                module.bias is not None,
            )
            setattr(parent, attr, new)
            return
    raise ConfigError("model has no Conv2d layer to adapt to the input channels")


def import_factory(spec: str, search_dirs: Iterable[str | Path] = ()) -> Callable:
    """The function `fn` of 'module:fn'. The module is imported from sys.path first; if it is
    not there, from `search_dirs` (the recipe's folder) and then the current folder, so a
    mynet.py beside the recipe or in the working folder works without PYTHONPATH."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or module_name.startswith(".") or not func_name:
        raise ConfigError(f"model '{spec}' must be 'package.module:function' (absolute module, a function name)")
    module = import_module(module_name, spec, search_dirs)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError(f"module '{module_name}' has no function '{func_name}' (model '{spec}')")
    return factory


def import_module(module_name: str, spec: str, search_dirs: Iterable[str | Path] = ()):
    top = module_name.partition(".")[0]
    dirs = _unique([Path(d) for d in search_dirs] + [Path.cwd()])
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        not_found = isinstance(exc, ModuleNotFoundError) and exc.name in _prefixes(module_name)
        if not not_found:  # the module exists but fails to import (its own missing dependency, ...)
            raise ConfigError(f"cannot import module '{module_name}' for model '{spec}': {exc}") from exc
        error = exc
    for folder in dirs:
        if (folder / f"{top}.py").is_file() or (folder / top).is_dir():
            module = _import_from(folder, module_name, spec)
            logger.debug("model '%s': module '%s' imported from %s", spec, module_name, folder)
            return module
    looked = ", ".join(str(d) for d in dirs)
    raise ConfigError(clip(f"cannot import module '{module_name}' for model '{spec}': {error} "
                           f"(looked on sys.path and in {looked})")) from error


def _import_from(folder: Path, module_name: str, spec: str):
    """Import `module_name` with `folder` appended to sys.path (and left there, so that the
    module's own imports of its neighbours keep working; appended, it shadows nothing)."""
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.append(entry)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module '{module_name}' from {folder} for model '{spec}': {exc}") from exc


def _prefixes(module_name: str) -> set[str]:
    parts = module_name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _unique(paths: list[Path]) -> list[Path]:
    seen, out = set(), []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out
