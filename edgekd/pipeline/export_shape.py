"""The shape `edgekd export --weights` builds its model for when no --data is given: the
weights' own (their first convolution's input channels, their classifier's classes), or
--in-channels / --num-classes / arch_args, so that a vendor's ImageNet resnet18 exports
without a dataset of its shape.

    shape = weights_shape(request, default_spec)   # (in_channels, num_classes, input_size)

The rule, one for every source: --in-channels / --num-classes, else arch_args' in_channels /
num_classes, else the weights file; what is left unknown is the default dataset's. When
the result is the default dataset's channels and classes, that dataset is used (parity on
its images, int8 calibration) as before; otherwise the model is exported without a dataset:
parity against PyTorch on random inputs, no accuracy, no int8.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import ConfigError

# torchvision and timm classifiers are made for 224x224 RGB images: their size without a dataset
NATIVE_INPUT_SIZE = (224, 224)
NO_DATASET = "none"  # DataSpec.name of an export without a dataset


def given_shape(request) -> dict:
    """in_channels / num_classes the caller gave: a flag, or arch_args (they must agree)."""
    arch_args = request.arch_args or {}
    shape = {}
    for key, flag in (("in_channels", "--in-channels"), ("num_classes", "--num-classes")):
        value, in_args = getattr(request, key), arch_args.get(key)
        if in_args is not None and (isinstance(in_args, bool) or not isinstance(in_args, int) or in_args < 1):
            raise ConfigError(f"arch_args {key} must be a whole number >= 1, got {in_args!r}")
        if value is not None and in_args is not None and value != in_args:
            raise ConfigError(f"{flag} {value} and arch_args {key}: {in_args} disagree: give one of them")
        if value is not None or in_args is not None:
            shape[key] = value if value is not None else in_args
    return shape


def file_shape(arch: str, arch_args: dict, weights: str | Path, spec) -> dict:
    """in_channels and num_classes as the weights file holds them: the input channels of the
    model's first convolution and the rows of its last 2-D weight (the classifier), found by
    the names of a model of `arch` built for `spec` (empty when the file names neither)."""
    from edgekd.io.artifacts import load_state_dict, safetensors_header, strip_wrapper_prefixes
    from edgekd.models.zoo import build_model

    rest = {k: v for k, v in arch_args.items() if k not in ("in_channels", "num_classes")}
    own = build_model(arch, in_channels=spec.channels, num_classes=spec.num_classes, **rest).state_dict()
    if Path(weights).suffix == ".safetensors":  # the header's declarations: no tensor data is read
        state, _ = strip_wrapper_prefixes(safetensors_header(weights), own)
    else:
        state = load_state_dict(weights)  # memory-mapped, never unpickles code
    conv = next((k for k, v in own.items() if k.endswith("weight") and len(v.shape) == 4), None)
    head = next((k for k in reversed(list(own)) if k.endswith("weight") and len(own[k].shape) == 2), None)
    shape = {}
    if conv in state and len(state[conv].shape) == 4:
        shape["in_channels"] = int(state[conv].shape[1])
    if head in state and len(state[head].shape) == 2:
        shape["num_classes"] = int(state[head].shape[0])
    return shape


def no_dataset_spec(arch: str, in_channels: int, num_classes: int, input_size):
    """The DataSpec of an export without a dataset: the model's shape, at input_size (a
    torchvision or timm classifier: 224x224 when not given); no mean, std or class names
    are known (the metadata leaves them out unless --preprocess states them)."""
    from edgekd.data.splitting import DataSpec
    from edgekd.models.zoo import TIMM_PREFIX, TORCHVISION_PREFIX

    if input_size is None:
        if not arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
            raise ConfigError(f"exporting '{arch}' for {in_channels} channel(s) and {num_classes} classes without a "
                              "dataset needs its input size: give --input-size H or HxW (the size it was trained at), "
                              "or --data with images of its shape")
        input_size = NATIVE_INPUT_SIZE
    height, width = input_size
    return DataSpec(name=NO_DATASET, channels=in_channels, height=height, width=width, num_classes=num_classes,
                    class_names=tuple(str(i) for i in range(num_classes)), mean=(0.0,) * in_channels,
                    std=(1.0,) * in_channels, source="the weights' own shape (no dataset)")


def weights_spec(request, default_spec):
    """The DataSpec to export `request.weights` for when no --data is given: `default_spec`
    (the default dataset's) when the model's shape is its, else a no-dataset spec."""
    given = given_shape(request)
    shape = {**file_shape(request.arch, request.arch_args or {}, request.weights, default_spec), **given}
    in_channels = shape.get("in_channels", default_spec.channels)
    num_classes = shape.get("num_classes", default_spec.num_classes)
    if (in_channels, num_classes) == (default_spec.channels, default_spec.num_classes):
        return default_spec
    return no_dataset_spec(request.arch, in_channels, num_classes, request.input_size)
