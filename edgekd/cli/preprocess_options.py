"""The preprocessing flags of `edgekd bench` and `edgekd export`, collected into one
`preprocess` argument: the stated preprocessing as plain values (edgekd.runtime.preprocessing.
check_stated), or None when no flag is given. A bad value is one line and exit 2, checked
before the command does anything else. Imports no torch."""

from __future__ import annotations

import functools

import click

from edgekd.runtime.preprocessing import PRESETS, check_stated

# (option, parameter, metavar, help); input_size is left out where the command has its own
OPTIONS = (
    ("--preprocess", "preset", "|".join(PRESETS),
     ("How images become the model's input: a preset (imagenet: mean 0.485,0.456,0.406 std 0.229,0.224,0.225, "
      "RGB, NCHW, resize 256 crop 224; inception: mean/std 0.5; clip; caffe: BGR 0-255 minus the ImageNet "
      "mean; none: raw 0-255 floats; edgekd: the model's metadata, the default). The flags below override it.")),
    ("--mean", "mean", "R,G,B", "Mean per channel (or one for all), in red, green, blue order."),
    ("--std", "std", "R,G,B", "Std per channel (or one for all), in red, green, blue order."),
    ("--scale", "scale", "S", "What a 0-255 pixel is multiplied by before mean/std (default 1/255)."),
    ("--layout", "layout", "NCHW|NHWC", "The model's input layout (default NCHW)."),
    ("--channel-order", "channel_order", "rgb|bgr", "The model's colour order (default rgb)."),
    ("--input-size", "input_size", "H,W",
     "Resize and center-crop the images to this size (default: the model's fixed input size)."),
    ("--crop-fraction", "crop_fraction", "F",
     ("The center crop's share of the resized image: the shorter side is resized to crop / F "
      "(imagenet: 0.875, 224 from 256; default 1).")),
)


def preprocess_options(*, input_size: bool = True):
    """A decorator: the OPTIONS (without --input-size when input_size is False) on a click
    command, whose function then gets `preprocess` (the checked dict or None) instead."""
    options = [o for o in OPTIONS if input_size or o[1] != "input_size"]

    def decorate(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            given = {name: kwargs.pop(name) for _, name, _, _ in options}
            stated = {name: value for name, value in given.items() if value is not None}
            kwargs["preprocess"] = check_stated(stated, where="") if stated else None
            return fn(*args, **kwargs)

        for flag, name, metavar, text in reversed(options):
            command = click.option(flag, name, metavar=metavar, default=None, help=text)(command)
        return command

    return decorate
