"""`edgekd export`: one model (a run's teacher or student, or a weights file plus an
architecture) to ONNX, validated against PyTorch; with int8, quantized and checked for
argmax agreement."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.data.config import DataConfig
from edgekd.errors import ConfigError, ModelFileError
from edgekd.onnx_export import ExportConfig
from edgekd.pipeline.layout import PRUNED_SHAPES, PRUNED_WEIGHTS, RECIPE_FILE, STAGES
from edgekd.recipe import Recipe


def export_one(*, run_dir=None, stage="student", weights=None, arch=None, arch_args=None,
               data_name=DataConfig.name, data_path=None, int8=False, output=None, opset=ExportConfig.opset,
               force=False, progress=True, input_size=None, dynamic_hw=False, fp16=False, fp32_io=False,
               name=None, preprocess=None) -> dict:
    """Export a run's stage, or a weights file plus an architecture, to ONNX (optionally int8
    or float16).

    input_size (H, W): export for another input size than the data's (the architecture must
    take it); dynamic_hw: height and width dynamic; fp16: a float16 model, fp32_io keeping
    float32 input and output; stage / name: labels in the metadata (edgekd.stage, edgekd.name);
    preprocess: with weights, the stated preprocessing for the metadata (runtime.preprocessing).
    Returns the path, the parity per batch size and, for int8, the argmax agreement of the
    int8 model with PyTorch on val images.
    """
    import dataclasses
    import tempfile

    import torch

    from edgekd.data.splits import load_splits
    from edgekd.io.artifacts import load_weights
    from edgekd.models.cost import count_macs, count_params
    from edgekd.onnx_export import model_metadata, to_onnx
    from edgekd.pipeline.context import build_arch
    from edgekd.train.loop import to_tensor

    if int8 and fp16:
        raise ConfigError("--int8 and --fp16 are two different models: give one of them")
    if fp32_io and not fp16:
        raise ConfigError("--fp32-io keeps a float16 model's input and output in float32: it needs --fp16")
    from edgekd.runtime.metadata import INPUT_SHAPE, NAME, PRECISION, PREPROCESS, STAGE
    from edgekd.runtime.preprocessing import check_stated, metadata_entries

    preprocess = check_stated(preprocess, where="preprocess")
    if preprocess and run_dir is not None:
        raise ConfigError("--preprocess, --mean, --std, ... describe user weights (--weights); a run's model keeps "
                          "the preprocessing it was trained with")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if run_dir is not None:
        from edgekd.pipeline.rundir import EXPORT_FOLDER, check_no_links, real_run_dir

        run_dir = real_run_dir(run_dir)
        check_no_links(run_dir)  # a link inside a run would let export read outside it
        recipe = Recipe.from_yaml(run_dir / RECIPE_FILE)
        check_in_pytorch(run_dir, recipe, stage)
        cfg = recipe.teacher if stage == "teacher" else recipe.distill
        arch, arch_args = cfg.arch, cfg.arch_args
        data_cfg, seed, quant_cfg = recipe.data, recipe.seed, recipe.quantize
        export_cfg = dataclasses.replace(recipe.export, opset=opset)
        default_output = run_dir / EXPORT_FOLDER / f"{name or stage}.{precision}.onnx"
    else:
        from edgekd.quant.config import QuantConfig

        data_cfg, seed, quant_cfg = DataConfig(name=data_name, path=data_path), 0, QuantConfig()
        export_cfg = ExportConfig(opset=opset)
        default_output = Path(weights).with_suffix(f".{precision}.onnx")
    output = Path(output) if output else default_output
    from edgekd.pipeline.rundir import check_export_output

    check_export_output(output, force=force, run=run_dir, recipe=recipe if run_dir is not None else None,
                        files={"--weights": weights, "--data": data_name, "--data-path": data_path})

    if run_dir is not None:  # the run's own model, loaded as the chain loads it (pruned if the run pruned)
        from edgekd.pipeline.context import Context
        from edgekd.pipeline.runstate import load_progress
        from edgekd.pipeline.store import RunStore

        store = RunStore(recipe, Context(run_dir=run_dir, seed=seed), load_progress(run_dir, STAGES)["done"])
        splits = store.splits()
        model = store.teacher() if stage == "teacher" else store.student()
    else:
        splits = load_splits(data_cfg, seed=seed)
        model = build_arch(splits.spec, arch, arch_args or {})
        try:
            load_weights(model, weights)
        except ModelFileError as exc:
            if (Path(weights).parent / PRUNED_SHAPES).is_file() or Path(weights).name == PRUNED_WEIGHTS:
                raise ModelFileError(f"'{weights}' are a pruned model's weights, whose layers are smaller than a "
                                     f"fresh '{arch}': export the run directory instead (edgekd export RUN_DIR "
                                     f"--onnx), which rebuilds the pruned shapes from {PRUNED_SHAPES}") from exc
            raise
    spec = splits.spec
    model.eval()
    from edgekd.pipeline.stages.export import check_finite_weights

    check_finite_weights(model, stage, arch)  # NaN weights are the model's fault, not the exporter's
    input_shape = (spec.channels, *(input_size or (spec.height, spec.width)))
    if input_size is not None:  # every forward below runs at this size: measured at the data's first
        from edgekd.onnx_export import check_parity_memory

        check_parity_memory(model, input_shape, (spec.channels, spec.height, spec.width), export_cfg,
                            "export at a smaller --input-size" + (" (or lower export.check_batch_sizes in the "
                                                                  "run's recipe)" if run_dir is not None else ""))
    metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=count_params(model),
                              macs=count_macs(model, input_shape))
    metadata[INPUT_SHAPE] = json.dumps(list(input_shape))
    if input_size is not None and tuple(input_size) != (spec.height, spec.width):
        metadata.pop(PREPROCESS, None)  # it describes the data's size, not this input
    if name:
        metadata[NAME] = name
    stated = metadata_entries(preprocess, channels=spec.channels, height=input_shape[1], width=input_shape[2])
    for key, value in stated.items():  # the weights' own preprocessing, not the data's
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    if fp16:
        metadata[PRECISION] = "fp16" + (" (fp32 input and output)" if fp32_io else "")
    # real images check the parity where the model was trained; another input size gets random ones
    val_x = to_tensor(splits.val_x, spec.mean, spec.std) if input_size is None else None
    result = {"path": str(output)}
    if not int8:
        report = to_onnx(model, output, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x,
                         fp16=fp16, fp32_io=fp32_io, dynamic_hw=dynamic_hw)
        result["max_abs_diff"] = report.max_abs_diff
        result["tolerance"] = {"atol": report.atol, "rtol": report.rtol}
        return result
    if input_size is not None:
        val_x = to_tensor(splits.val_x, spec.mean, spec.std)  # calibration and agreement need the data's size
        if tuple(input_size) != (spec.height, spec.width):
            raise ConfigError("--int8 calibrates on the data's images: export it at the data's input size "
                              f"({spec.height},{spec.width}), or without --input-size")

    from edgekd.quant.ptq import ptq
    from edgekd.runtime.session import make_session

    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as work:
        fp32 = Path(work) / "model.fp32.onnx"
        report = to_onnx(model, fp32, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x,
                         dynamic_hw=dynamic_hw)
        calib = to_tensor(splits.calib_x, spec.mean, spec.std).numpy()
        ptq(fp32, output, calib_images=calib, cfg=quant_cfg, metadata={**metadata, STAGE: "int8"},
            progress=progress)
    # int8 cannot match fp32 to 1e-4; what must hold is that it predicts the same classes
    (logits,) = make_session(output).run(None, {"input": val_x.numpy()})
    with torch.no_grad():
        expected = model(val_x).argmax(1).numpy()
    result["max_abs_diff"] = report.max_abs_diff
    result["int8_top1_agreement"] = float((logits.argmax(1) == expected).mean() * 100)
    result["agreement_samples"] = len(expected)
    return result


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
