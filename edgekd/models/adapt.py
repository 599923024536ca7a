"""Classifiers built for 224-px images, adapted to small inputs as CIFAR variants are.

A torchvision or timm classifier divides its input by 32 before the classifier: its stem
halves the image with a stride-2 convolution and, in ResNet-like networks, halves it again
with a max-pool. A 28x28 image leaves a 1x1 (or empty) feature map, so the network learns
little (often one class for every image) or fails ("Output size is too small"). Below
SMALL_INPUT pixels the stem keeps the full resolution, as CIFAR ResNets do:

- the first downsampling layer (in module order, which is forward order for these
  models) is a convolution of stride 2: its stride becomes 1 (its weights are unchanged);
- the next downsampling layer, when it is a max-pool directly after that stem, is removed
  (replaced by nn.Identity); a model whose first downsampling layer is a pool (VGG) loses
  that pool instead.

Patchify stems (stride 4 or more: ConvNeXt, ViT, Swin) are left as they are.

Whatever the size, a model built for data (input_size given) also gets batch-norm momentum
of at least BN_MOMENTUM: torchvision's MobileNetV3 uses 0.01, tuned for hundreds of
ImageNet epochs; after a short schedule its running statistics are still mostly their
initial values, and in eval mode the model predicts one class (measured: 70 % train
accuracy, 11 % eval after 3 epochs; 72 % eval with 0.1). Statistics that lag behind fast-
moving weights are fixed in general by edgekd.models.bn (recomputed after each epoch).

What was changed is kept on the model as `model.edgekd_adapted` (a list of phrases such as
"features.0.0: stride 2 -> 1", "maxpool: MaxPool2d removed"), read with `adaptations(model)`,
so the report can say it. Only standard modules are changed, so ONNX export is unaffected.
"""

from __future__ import annotations

from torch import nn

SMALL_INPUT = 64  # pixels: an input whose smaller side is below this gets a full-resolution stem
BN_MOMENTUM = 0.1  # torch's default: running statistics that follow a short schedule
ATTRIBUTE = "edgekd_adapted"


def adaptations(model: nn.Module) -> list[str]:
    """What adapt_to_input changed on `model` (empty when nothing was, or it was not called)."""
    return list(getattr(model, ATTRIBUTE, None) or [])


def built_externally(model: nn.Module) -> bool:
    """Whether `model` came from torchvision: or timm: through build_model (which calls
    adapt_to_input on them, at any size, and so marks them)."""
    return hasattr(model, ATTRIBUTE)


def needs_adaptation(input_size: tuple[int, int] | None) -> bool:
    return input_size is not None and min(int(input_size[0]), int(input_size[1])) < SMALL_INPUT


def adapt_to_input(model: nn.Module, input_size: tuple[int, int] | None) -> list[str]:
    """Give `model` a full-resolution stem when `input_size` (height, width) is below
    SMALL_INPUT pixels, and batch-norm momentum of at least BN_MOMENTUM when `input_size` is
    given (in place); returns and records what was changed."""
    changes: list[str] = []
    if needs_adaptation(input_size):
        downsamplers = [(name, module) for name, module in model.named_modules() if _downsamples(module)]
        if downsamplers:
            name, first = downsamplers[0]
            if isinstance(first, nn.Conv2d):
                if tuple(first.stride) == (2, 2):
                    first.stride = (1, 1)
                    changes.append(f"{name}: stride 2 -> 1")
                    if len(downsamplers) > 1 and isinstance(downsamplers[1][1], nn.MaxPool2d):
                        changes.append(_remove(model, downsamplers[1][0]))
            elif isinstance(first, (nn.MaxPool2d, nn.AvgPool2d)):
                changes.append(_remove(model, name))
    if input_size is not None:
        changes += _raise_bn_momentum(model)
    setattr(model, ATTRIBUTE, changes)
    return changes


def _raise_bn_momentum(model: nn.Module) -> list[str]:
    slow = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.momentum is not None and m.momentum < BN_MOMENTUM]
    if not slow:
        return []
    before = sorted({m.momentum for m in slow})
    for module in slow:
        module.momentum = BN_MOMENTUM
    return [f"batch-norm momentum {'/'.join(f'{b:g}' for b in before)} -> {BN_MOMENTUM:g} ({len(slow)} layers)"]


def _downsamples(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return max(module.stride) > 1
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = module.stride if module.stride is not None else module.kernel_size
        return max(_pair(stride)) > 1
    return False


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _remove(model: nn.Module, name: str) -> str:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    kind = type(getattr(parent, attr)).__name__
    setattr(parent, attr, nn.Identity())
    return f"{name}: {kind} removed"
