"""`edgekd export`: one model (a run's teacher or student, or a weights file plus an
architecture) to ONNX, validated against PyTorch; with int8, quantized and checked for
argmax agreement."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import ConfigError
from edgekd.pipeline.layout import RECIPE_FILE, STAGES
from edgekd.recipe import Recipe


def export_one(*, run_dir=None, stage="student", weights=None, arch=None, arch_args=None,
               data_name="fashion-mnist-subset", data_path=None, int8=False, output=None, opset=17,
               force=False, progress=True) -> dict:
    """Export a run's stage, or a weights file plus an architecture, to ONNX (optionally int8).

    Returns the path, the fp32 parity per batch size and, for int8, the argmax agreement
    of the int8 model with PyTorch on val images.
    """
    import dataclasses
    import tempfile

    import torch

    from edgekd.data.config import DataConfig
    from edgekd.data.splits import load_splits
    from edgekd.io.artifacts import load_weights
    from edgekd.models.cost import count_macs, count_params
    from edgekd.models.zoo import build_model
    from edgekd.onnx_export import ExportConfig, model_metadata, to_onnx
    from edgekd.train.loop import to_tensor

    precision = "int8" if int8 else "fp32"
    if run_dir is not None:
        from edgekd.pipeline.rundir import check_no_links, real_run_dir

        run_dir = real_run_dir(run_dir)
        check_no_links(run_dir)  # a link inside a run would let export read outside it
        recipe = Recipe.from_yaml(run_dir / RECIPE_FILE)
        cfg = recipe.teacher if stage == "teacher" else recipe.distill
        arch, arch_args = cfg.arch, cfg.arch_args
        data_cfg, seed, quant_cfg = recipe.data, recipe.seed, recipe.quantize
        export_cfg = dataclasses.replace(recipe.export, opset=opset)
        default_output = run_dir / "export" / f"{stage}.{precision}.onnx"
    else:
        from edgekd.quant.config import QuantConfig

        data_cfg, seed, quant_cfg = DataConfig(name=data_name, path=data_path), 0, QuantConfig()
        export_cfg = ExportConfig(opset=opset)
        stage = "student"
        default_output = Path(weights).with_suffix(f".{precision}.onnx")
    output = Path(output) if output else default_output
    if output.exists() and not force:
        raise ConfigError(f"'{output}' already exists; use --force to replace it or -o for another file")

    if run_dir is not None:  # the run's own model, loaded as the chain loads it (pruned if the run pruned)
        from edgekd.pipeline.context import Context
        from edgekd.pipeline.runstate import load_progress
        from edgekd.pipeline.store import RunStore

        store = RunStore(recipe, Context(run_dir=run_dir, seed=seed), load_progress(run_dir, STAGES)["done"])
        splits = store.splits()
        model = store.teacher() if stage == "teacher" else store.student()
    else:
        splits = load_splits(data_cfg, seed=seed)
        model = build_model(arch, in_channels=splits.spec.channels, num_classes=splits.spec.num_classes,
                            **(arch_args or {}))
        load_weights(model, weights)
    spec = splits.spec
    model.eval()
    from edgekd.pipeline.stages.export import check_finite_weights

    check_finite_weights(model, stage, arch)  # NaN weights are the model's fault, not the exporter's
    input_shape = (spec.channels, spec.height, spec.width)
    metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=count_params(model),
                              macs=count_macs(model, input_shape))
    val_x = to_tensor(splits.val_x, spec.mean, spec.std)
    result = {"path": str(output)}
    if not int8:
        report = to_onnx(model, output, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x)
        result["max_abs_diff"] = report.max_abs_diff
        return result

    from edgekd.quant.ptq import ptq
    from edgekd.runtime.session import make_session

    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as work:
        fp32 = Path(work) / "model.fp32.onnx"
        report = to_onnx(model, fp32, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x)
        calib = to_tensor(splits.calib_x, spec.mean, spec.std).numpy()
        ptq(fp32, output, calib_images=calib, cfg=quant_cfg, metadata={**metadata, "edgekd.stage": "int8"},
            progress=progress)
    # int8 cannot match fp32 to 1e-4; what must hold is that it predicts the same classes
    (logits,) = make_session(output).run(None, {"input": val_x.numpy()})
    with torch.no_grad():
        expected = model(val_x).argmax(1).numpy()
    result["max_abs_diff"] = report.max_abs_diff
    result["int8_top1_agreement"] = float((logits.argmax(1) == expected).mean() * 100)
    result["agreement_samples"] = len(expected)
    return result
