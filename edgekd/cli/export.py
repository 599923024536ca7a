"""`edgekd export`: flags -> an ExportRequest, as edgekd.export makes; prints the parity and the file written."""

from __future__ import annotations

import click

from edgekd.cli.group import verbosity_options
from edgekd.cli.preprocess_options import preprocess_options
from edgekd.data.config import DataConfig
from edgekd.data.formats import FORMATS
from edgekd.errors import ConfigError
from edgekd.onnx_export import ExportConfig
from edgekd.recipe import parse_yaml_mapping


@click.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX: the default, and the only format so far.")
@click.option("--stage", type=click.Choice(["student", "teacher"]), default="student", show_default=True,
              help="Which model of RUN_DIR to export; with --weights, the label it gets (edgekd.stage).")
@click.option("--name", help="A name for the model (edgekd.name in its metadata; the default output file's stem).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="A weights file (.safetensors, or a .pt/.pth state_dict) to export instead of a run's stage.")
@click.option("--arch", help="Architecture of --weights: a registered name (the zoo's resnet8, resnet20, resnet56, "
                             "mobilenetv2, tinycnn, or a plugin's), torchvision:NAME, or package.module:function.")
@click.option("--arch-args", default="{}", metavar="YAML", help="Keyword arguments of --arch, e.g. '{width: 24}'. in_channels / num_classes in it must "
                   "agree with the shape edgekd builds for (the data's; without --data they give it, as "
                   "--in-channels / --num-classes do).")
@click.option("--data", "data_name", metavar="NAME|PATH",
              help=f"Dataset of --weights ({', '.join(FORMATS.names())}, or a path): input shape, classes, "
                   "normalization, calibration images. Not given: the weights' own shape (first convolution's "
                   f"channels, classifier's classes) decides: {DataConfig.name} when it is its shape, else no "
                   "dataset (parity on random inputs, no accuracy check, no --int8).")
@click.option("--num-classes", type=click.IntRange(1, 1_000_000), metavar="N",
              help="With --weights and no --data: the model's classes, where the file does not tell them.")
@click.option("--in-channels", type=click.IntRange(1, 64), metavar="C",
              help="With --weights and no --data: the model's input channels, where the file does not tell them.")
@click.option("--data-path", metavar="DIR", help="Where to look for the dataset's files.")
@click.option("--skip-bad", is_flag=True,
              help="With --weights and a dataset of image files: skip files that cannot be decoded (counted, the "
                   "first ones named) instead of refusing the dataset (data.skip_bad).")
@click.option("--int8", is_flag=True, help="Quantize to int8 (QDQ, per-channel, calibrated on training images).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Output file. Default: RUN_DIR/export/STAGE.{fp32,int8}.onnx, or beside --weights.")
@click.option("--fp16", is_flag=True, help="A float16 model (for GPU providers), checked against PyTorch's fp32 "
                                         "outputs within 1e-2 of their magnitude.")
@click.option("--fp32-io", is_flag=True, help="With --fp16: keep the input and output float32 (casts inside).")
@click.option("--input-size", metavar="H[xW]", callback=lambda ctx, param, value: _size(value),
              help="Export for this input size instead of the data's (the architecture must take it); without a "
                   "dataset, the model's size (default 224 for torchvision: and timm: models).")
@click.option("--dynamic-hw", is_flag=True, help="Make height and width dynamic axes, as the batch is.")
@click.option("--opset", type=int, default=ExportConfig.opset, show_default=True, help="ONNX opset version.")
@click.option("--force", is_flag=True,
              help="Replace the output file if it exists (never an input, a file of the run outside RUN_DIR/export/, "
                   "nor a name a run owns such as state/ or recipe.yaml).")
@verbosity_options
@preprocess_options(input_size=False)  # with --weights: the preprocessing written into the metadata for bench
def export(run_dir, to_onnx, stage, name, weights, arch, arch_args, data_name, num_classes, in_channels, data_path,
           skip_bad, int8, output, fp16, fp32_io, input_size, dynamic_hw, opset, force, quiet, verbose, preprocess):
    """Export one model to ONNX, validated against PyTorch at two batch sizes.

    \b
    edgekd export runs/default                 # the run's student, fp32 ONNX
    edgekd export runs/default --int8          # ... quantized to int8
    edgekd export --weights w.safetensors --arch resnet20 -o resnet20.onnx
    edgekd export --weights vendor.pt --arch torchvision:resnet18 --name r18   # 3x224x224, 1000 classes
    """
    arguments = dict(locals())  # first: the flags by name (ExportRequest's fields; --data is data_name)
    from edgekd.extras import require_train

    require_train("edgekd export")
    if (run_dir is None) == (weights is None):
        raise ConfigError("give either RUN_DIR or --weights FILE (with --arch)")
    if weights is not None and not arch:
        raise ConfigError("--weights needs --arch NAME (the architecture the weights belong to)")
    arch_args = parse_yaml_mapping(arch_args, "--arch-args", "a mapping such as '{width: 24}'")
    from edgekd.pipeline.export_command import ExportRequest, export_one

    request = ExportRequest.from_arguments(arguments, data=data_name, arch_args=arch_args, progress=not quiet)
    result = export_one(request)
    if "data_skipped" in result:
        from edgekd.data.image_files import named_files

        skipped = result["data_skipped"]
        total = sum(sum(v.values()) for v in skipped["counts"].values() if isinstance(v, dict))
        click.echo(f"skipped {total} bad image(s) (--skip-bad): {skipped['counts']}; first: "
                   f"{named_files(skipped['first'], total)}")
    if "no_dataset" in result:
        shape = result["no_dataset"]
        click.echo(f"no dataset: exported for {shape['channels']}x{'x'.join(map(str, shape['input_size']))} inputs "
                   f"and {shape['num_classes']} classes (the weights' shape); checked for parity with PyTorch on random "
                   "inputs only, not for accuracy (give --data for that)")
    for batch, diff in result["max_abs_diff"].items():
        click.echo(f"batch {batch}: max |onnx - torch| = {diff:.3e}")
    if "int8_top1_agreement" in result:
        click.echo(f"int8 vs PyTorch argmax agreement on {result['agreement_samples']} val images: "
                   f"{result['int8_top1_agreement']:.2f}%")
    click.echo(f"wrote {result['path']}")


def _size(value):
    """'224', '224x224' or '224,224' -> (224, 224); None stays None."""
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected H or HxW (for example 224 or 224x224), got {value!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or not all(2 <= v <= 8192 for v in sizes):
        raise click.BadParameter(f"expected H or HxW with each from 2 to 8192, got {value!r}")
    return tuple(sizes)
