"""`edgekd export`: one model (a run's teacher or student, or a weights file plus an
architecture) to ONNX, validated against PyTorch; with int8, quantized and checked for
argmax agreement."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from edgekd.data.config import DataConfig
from edgekd.errors import ConfigError, ModelFileError
from edgekd.onnx_export import ExportConfig
from edgekd.pipeline.layout import PRUNED_SHAPES, PRUNED_WEIGHTS, RECIPE_FILE, STAGES
from edgekd.recipe import Recipe


@dataclass(frozen=True)
class ExportRequest:
    """What `edgekd export` and edgekd.export are asked for, as one value: their flags and
    keywords by name, defaults from the recipe's dataclasses (DataConfig.name, ExportConfig.opset).

    A run's `stage` (run_dir), or `weights` of `arch` (arch_args) for the dataset `data`
    (data_path); int8, or fp16 (fp32_io: float32 input and output); input_size (H, W) and
    dynamic_hw; `output` (None: beside the model), replaced only with force; stage / name:
    labels in the metadata; preprocess: with weights, their stated preprocessing. data None:
    the weights' own shape decides (pipeline.export_shape), and in_channels / num_classes
    give it without a dataset."""

    run_dir: str | Path | None = None
    stage: str = "student"
    weights: str | Path | None = None
    arch: str | None = None
    arch_args: dict | None = None
    data: str | None = None  # None: DataConfig.name when the weights' shape is its, else no dataset
    data_path: str | Path | None = None
    int8: bool = False
    output: str | Path | None = None
    opset: int = ExportConfig.opset
    force: bool = False
    progress: bool = False
    input_size: tuple | None = None
    dynamic_hw: bool = False
    fp16: bool = False
    fp32_io: bool = False
    name: str | None = None
    preprocess: dict | None = None
    skip_bad: bool = False  # with weights and an image-file dataset: bad files skipped (data.skip_bad)
    num_classes: int | None = None  # with weights: the model's classes, without a dataset
    in_channels: int | None = None  # with weights: the model's input channels, without a dataset

    @classmethod
    def from_arguments(cls, arguments: dict, **given) -> ExportRequest:
        """The request from a caller's arguments by name (edgekd.export's locals(), click's
        params), `given` over them. Names that are no field (--onnx, --quiet) are left out;
        None for opset means the recipe's default, as edgekd.export documents (None for data:
        the weights' shape decides)."""
        values = {**arguments, **given}
        if "opset" in values and values["opset"] is None:
            del values["opset"]
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def export_one(request: ExportRequest) -> dict:
    """Export a run's stage, or a weights file plus an architecture, to ONNX (optionally int8
    or float16), as `request` says (ExportRequest; its preprocess: see runtime.preprocessing).
    Returns the path, the parity per batch size and, for int8, the argmax agreement of the
    int8 model with PyTorch on val images.
    """
    import tempfile

    import torch

    from edgekd.data.splits import load_splits
    from edgekd.io.artifacts import load_weights
    from edgekd.models.cost import count_macs, count_params
    from edgekd.onnx_export import OnnxForm, model_metadata, to_onnx
    from edgekd.pipeline.context import build_arch
    from edgekd.train.tensors import to_tensor

    # what changes on the way is a local; the rest is read from the request
    run_dir, arch, arch_args, output = request.run_dir, request.arch, request.arch_args, request.output
    if request.int8 and request.fp16:
        raise ConfigError("--int8 and --fp16 are two different models: give one of them")
    if request.fp32_io and not request.fp16:
        raise ConfigError("--fp32-io keeps a float16 model's input and output in float32: it needs --fp16")
    from edgekd.runtime.metadata import CLASS_NAMES, INPUT_SHAPE, MEAN, NAME, PRECISION, PREPROCESS, STAGE, STD
    from edgekd.runtime.preprocessing import check_stated, metadata_entries

    preprocess = check_stated(request.preprocess, where="preprocess")
    if preprocess and run_dir is not None:
        raise ConfigError("--preprocess, --mean, --std, ... describe user weights (--weights); a run's model keeps "
                          "the preprocessing it was trained with")
    if request.skip_bad and run_dir is not None:
        raise ConfigError("--skip-bad is for --weights and a dataset; a run reads its data as its recipe says "
                          "(data.skip_bad in its recipe.yaml)")
    if (request.num_classes or request.in_channels) and run_dir is not None:
        raise ConfigError("--num-classes and --in-channels give the shape of --weights; a run's model has the shape "
                          "of its recipe's data")
    precision = "int8" if request.int8 else "fp16" if request.fp16 else "fp32"
    if run_dir is not None:
        from edgekd.pipeline.rundir import EXPORT_FOLDER, check_no_links, real_run_dir

        run_dir = real_run_dir(run_dir)
        check_no_links(run_dir)  # a link inside a run would let export read outside it
        recipe = Recipe.from_yaml(run_dir / RECIPE_FILE)
        check_in_pytorch(run_dir, recipe, request.stage)
        cfg = recipe.teacher if request.stage == "teacher" else recipe.distill
        arch, arch_args = cfg.arch, cfg.arch_args
        if request.stage != "teacher" and cfg.arch == "auto":  # distill.arch auto: the student the search chose
            from edgekd.pipeline.runstate import load_progress
            from edgekd.search.stage import student_arch

            arch, arch_args = student_arch(cfg, load_progress(run_dir, STAGES)["done"].get("distill"))
        data_cfg, seed, quant_cfg = recipe.data, recipe.seed, recipe.quantize
        export_cfg = dataclasses.replace(recipe.export, opset=request.opset)
        default_output = run_dir / EXPORT_FOLDER / f"{request.name or request.stage}.{precision}.onnx"
    else:
        from edgekd.quant.config import QuantConfig

        data_cfg = DataConfig(name=request.data or DataConfig.name, path=request.data_path, skip_bad=request.skip_bad)
        seed, quant_cfg = 0, QuantConfig()
        export_cfg = ExportConfig(opset=request.opset)
        weights_path = Path(request.weights)  # --name names the file, as it does in a run's export/
        default_output = weights_path.parent / f"{request.name or weights_path.stem}.{precision}.onnx"
    output = Path(output) if output else default_output
    from edgekd.pipeline.rundir import check_export_output

    check_export_output(output, force=request.force, run=run_dir, recipe=recipe if run_dir is not None else None,
                        files={"--weights": request.weights, "--data": request.data, "--data-path": request.data_path})

    if run_dir is not None:  # the run's own model, loaded as the chain loads it (pruned if the run pruned)
        from edgekd.pipeline.context import Context
        from edgekd.pipeline.runstate import load_progress
        from edgekd.pipeline.store import RunStore

        store = RunStore(recipe, Context(run_dir=run_dir, seed=seed), load_progress(run_dir, STAGES)["done"])
        splits = store.splits()
        model = store.teacher() if request.stage == "teacher" else store.student()
    else:
        from edgekd.errors import DataError
        from edgekd.pipeline.export_shape import given_shape, weights_spec

        if request.data is not None and (request.num_classes or request.in_channels):
            raise ConfigError("--num-classes and --in-channels give the model's shape without a dataset: with --data, "
                              "the dataset's channels and classes are the model's (leave out one or the other)")
        try:
            splits = load_splits(data_cfg, seed=seed)
        except DataError as exc:  # the data's own advice names the recipe key; export's is its flag
            raise type(exc)(str(exc).replace("set data.skip_bad: true", "pass --skip-bad")) from exc
        spec = splits.spec if request.data is not None else weights_spec(request, splits.spec)
        if spec is not splits.spec:  # the weights' own shape, not the default dataset's: no dataset
            splits = None
            if request.int8:
                raise ConfigError(f"--int8 calibrates on images of the model's shape ({spec.channels} channel(s), "
                                  f"{spec.num_classes} classes): give --data NAME|PATH with such images")
            if request.skip_bad:
                raise ConfigError("--skip-bad is for a dataset of image files (--data); this export has none")
        else:
            given_shape(request)  # arch_args' in_channels / num_classes are checked against the flags
        model = build_arch(spec, arch, arch_args or {})
        try:
            load_weights(model, request.weights)
        except ModelFileError as exc:
            if (weights_path.parent / PRUNED_SHAPES).is_file() or weights_path.name == PRUNED_WEIGHTS:
                raise ModelFileError(f"'{request.weights}' are a pruned model's weights, whose layers are smaller than "
                                     f"a fresh '{arch}': export the run directory instead (edgekd export RUN_DIR "
                                     f"--onnx), which rebuilds the pruned shapes from {PRUNED_SHAPES}") from exc
            raise ModelFileError(export_hint(str(exc), request.data)) from exc
    if splits is not None:
        spec = splits.spec
    model.eval()
    from edgekd.pipeline.stages.export import check_finite_weights

    check_finite_weights(model, request.stage, arch)  # NaN weights are the model's fault, not the exporter's
    input_shape = (spec.channels, *(request.input_size or (spec.height, spec.width)))
    if request.input_size is not None:  # every forward below runs at this size: measured at the data's first
        from edgekd.onnx_export import check_parity_memory

        check_parity_memory(model, input_shape, (spec.channels, spec.height, spec.width), export_cfg,
                            "export at a smaller --input-size" + (" (or lower export.check_batch_sizes in the "
                                                                  "run's recipe)" if run_dir is not None else ""))
    metadata = model_metadata(stage=request.stage, arch=arch, spec=spec, params=count_params(model),
                              macs=count_macs(model, input_shape))
    metadata[INPUT_SHAPE] = json.dumps(list(input_shape))
    if request.input_size is not None and tuple(request.input_size) != (spec.height, spec.width):
        metadata.pop(PREPROCESS, None)  # it describes the data's size, not this input
    if request.name:
        metadata[NAME] = request.name
    if splits is None:  # no dataset: its mean, std, preprocessing and class names are not known
        for key in (MEAN, STD, PREPROCESS, CLASS_NAMES):
            metadata.pop(key, None)
    stated = metadata_entries(preprocess, channels=spec.channels, height=input_shape[1], width=input_shape[2])
    for key, value in stated.items():  # the weights' own preprocessing, not the data's
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    if request.fp16:
        metadata[PRECISION] = "fp16" + (" (fp32 input and output)" if request.fp32_io else "")
    # real images check the parity where the model was trained; another input size gets random ones
    val_x = to_tensor(splits.val_x, spec.mean, spec.std) if request.input_size is None and splits is not None else None
    result = {"path": str(output)}
    if splits is None:  # what the caller is told: nothing checked the model's accuracy
        result["no_dataset"] = {"channels": spec.channels, "num_classes": spec.num_classes,
                                "input_size": [spec.height, spec.width]}
    elif splits.record.get("skipped"):  # --skip-bad: what was left out, the first files named
        result["data_skipped"] = {"counts": splits.record["skipped"], "first": splits.record.get("skipped_files", [])}
    if not request.int8:
        report = to_onnx(model, output, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x,
                         form=OnnxForm(fp16=request.fp16, fp32_io=request.fp32_io, dynamic_hw=request.dynamic_hw))
        result["max_abs_diff"] = report.max_abs_diff
        result["tolerance"] = {"atol": report.atol, "rtol": report.rtol}
        return result
    if request.input_size is not None:
        val_x = to_tensor(splits.val_x, spec.mean, spec.std)  # calibration and agreement need the data's size
        if tuple(request.input_size) != (spec.height, spec.width):
            raise ConfigError("--int8 calibrates on the data's images: export it at the data's input size "
                              f"({spec.height},{spec.width}), or without --input-size")

    from edgekd.quant.ptq import ptq
    from edgekd.runtime.session import make_session

    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as work:
        fp32 = Path(work) / "model.fp32.onnx"
        report = to_onnx(model, fp32, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x,
                         form=OnnxForm(dynamic_hw=request.dynamic_hw))
        calib = to_tensor(splits.calib_x, spec.mean, spec.std).numpy()
        ptq(fp32, output, calib_images=calib, cfg=quant_cfg, metadata={**metadata, STAGE: "int8"},
            progress=request.progress)
    # int8 cannot match fp32 to 1e-4; what must hold is that it predicts the same classes
    (logits,) = make_session(output).run(None, {"input": val_x.numpy()})
    with torch.no_grad():
        expected = model(val_x).argmax(1).numpy()
    result["max_abs_diff"] = report.max_abs_diff
    result["int8_top1_agreement"] = float((logits.argmax(1) == expected).mean() * 100)
    result["agreement_samples"] = len(expected)
    return result


def export_hint(message: str, data: str | None) -> str:
    """A weights file's misfit, with export's advice instead of the recipe's (teacher.transfer
    is a recipe key: export's way to another shape is its flags)."""
    cut = message.find("use teacher.transfer")
    if cut < 0:
        return message
    fix = ("leave out --data to export them for their own shape" if data is not None
           else "give --num-classes and --in-channels for their shape")
    return message[:cut] + fix


def check_in_pytorch(run_dir: Path, recipe: Recipe, stage: str) -> None:
    """The run holds `stage` as a PyTorch model to export: a teacher given as ONNX
    (teacher.onnx) has none, nor a stage that has not completed yet."""
    from edgekd.pipeline.layout import TEACHER_ONNX
    from edgekd.pipeline.runstate import load_progress

    if stage == "teacher" and recipe.teacher.onnx is not None:
        copy = run_dir / TEACHER_ONNX
        use = f"'{copy}' (the run's copy, with edgekd metadata)" if copy.is_file() else f"'{recipe.teacher.onnx}'"
        raise ConfigError(f"the teacher of run '{run_dir}' is an ONNX model already (teacher.onnx), with no PyTorch "
                          f"weights to export: use {use} as it is")
    trains = "teacher" if stage == "teacher" else "distill"
    if trains not in load_progress(run_dir, STAGES)["done"]:
        raise ConfigError(f"run '{run_dir}' has no {stage} to export yet: its {trains} stage has not completed; "
                          f"finish the run first (edgekd compress --resume {run_dir})")
