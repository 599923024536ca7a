"""The edgenet family (issue 27): built from a few numbers, registered, refused with the fix
when its widths are not multiples of 16, exported and quantized to real int8 kernels."""

import onnx
import onnxruntime as ort
import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.models.blocks import RepConv, deployed
from edgekd.models.cost import count_macs, count_params
from edgekd.models.zoo import ARCHITECTURES, build_model
from edgekd.prune.latency import export_deployable
from onnxops import optimized_ops

SMALL = {"stem": 16, "stem_stride": 2, "stages": [[1, 16, 1], [2, 32, 2]]}


def test_registered_and_built_from_a_few_numbers():
    assert "edgenet" in ARCHITECTURES.names()
    torch.manual_seed(0)
    basic = build_model("edgenet", in_channels=1, num_classes=3, **SMALL)
    inverted = build_model("edgenet", in_channels=1, num_classes=3, block="inverted", expand=2, **SMALL)
    plain = build_model("edgenet", in_channels=1, num_classes=3, block="plain", **SMALL)
    x = torch.randn(2, 1, 8, 8)
    assert basic(x).shape == inverted(x).shape == plain(x).shape == (2, 3)
    # plain: one 3x3 convolution per block, no shortcut (stem + 1 + 2 blocks)
    assert [m.kernel_size for m in plain.modules() if isinstance(m, torch.nn.Conv2d)] == [(3, 3)] * 4
    convs = [m for m in basic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].stride == (2, 2) and all(m.out_channels % 16 == 0 for m in convs)
    assert any(m.groups > 1 for m in inverted.modules() if isinstance(m, torch.nn.Conv2d))  # depthwise
    assert not any(isinstance(m, (torch.nn.Hardswish, torch.nn.SiLU, torch.nn.ReLU6)) for m in inverted.modules())


@pytest.mark.parametrize("args, fix", [
    ({"stem": 24}, "arch_args.stem 24 is not a multiple of 16 (what the int8 kernels run without padding); use 16 or 32"),
    ({"stages": [[1, 40, 1]]}, "arch_args.stages[0] width 40 is not a multiple of 16"),
    ({"stem_stride": 3}, "arch_args.stem_stride must be 1 or 2, got 3"),
    ({"block": "mbconv"}, "arch_args.block must be one of basic, plain, rep, rep_ac, inverted"),
    ({"stages": [[1, 16]]}, "arch_args.stages[0] must be [depth, width, stride]"),
])
def test_bad_arguments_are_one_line_errors_naming_the_fix(args, fix):
    with pytest.raises(ConfigError) as info:
        build_model("edgenet", in_channels=1, num_classes=3, **args)
    assert fix in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2


def _trained_like(model):
    """Batch-norm statistics and affine terms away from their initial values, as after training."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("block", ["rep", "rep_ac"])
def test_rep_trains_with_branches_and_deploys_as_the_plain_student(block):
    torch.manual_seed(0)
    rep = _trained_like(build_model("edgenet", in_channels=1, num_classes=3, block=block, **SMALL))
    plain = build_model("edgenet", in_channels=1, num_classes=3, block="plain", **SMALL).eval()
    # trained with a 1x1 branch beside each 3x3 convolution (and batch norm alone where the shape is kept);
    # rep_ac also with a 1x3 and a 3x1 one (ACNet)
    kernels = [m.kernel_size for m in rep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kernels.count((3, 3)) == kernels.count((1, 1)) == 4
    assert kernels.count((1, 3)) == kernels.count((3, 1)) == (4 if block == "rep_ac" else 0)
    fused = deployed(rep)
    assert fused is not rep and any(isinstance(m, RepConv) for m in rep.modules())  # the model is left as it was
    plain.load_state_dict(fused.state_dict())  # strict: the same layers as plain's
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), rep(x), atol=1e-5, rtol=1e-5)
    # counted as exported
    assert count_params(rep) == count_params(plain) and count_macs(rep, (1, 8, 8)) == count_macs(plain, (1, 8, 8))
    basic = build_model("edgenet", in_channels=1, num_classes=3, **SMALL)
    assert deployed(basic) is basic  # nothing to fuse: no copy


def test_rep_is_quantization_aware_trained_and_pruned_as_deployed():
    from edgekd.models.shapes import layer_shapes, rebuild
    from edgekd.prune.channels import PrunePlan, prune_channels
    from edgekd.quant.qat.prepare import QuantConv2d, prepare_qat

    torch.manual_seed(0)
    rep = _trained_like(build_model("edgenet", in_channels=1, num_classes=3, block="rep", **SMALL))
    qat = prepare_qat(rep)
    assert sum(isinstance(m, QuantConv2d) for m in qat.modules()) == 4  # one per fused convolution, no 1x1 branch
    # pruned as deployed; the run directory's shapes rebuild a fresh rep student's deployed form (pipeline/store.py)
    pruned = deployed(rep)
    prune_channels(pruned, PrunePlan(ratio=0.5, importance="l1", round_to=None), input_shape=(1, 8, 8))
    again = deployed(build_model("edgenet", in_channels=1, num_classes=3, block="rep", **SMALL))
    rebuild(again, layer_shapes(pruned))
    again.load_state_dict(pruned.state_dict())
    assert count_params(again) == count_params(pruned) < count_params(rep)


@pytest.mark.parametrize("block", ["basic", "plain", "rep", "inverted"])
def test_exports_and_quantizes_to_int8_kernels(tmp_path, calib_images, block):
    torch.manual_seed(0)
    model = _trained_like(build_model("edgenet", in_channels=1, num_classes=3, block=block, **SMALL))
    fp32, int8 = export_deployable(model, tmp_path / "edgenet", input_shape=(1, 8, 8), calib_images=calib_images)
    float_convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    ops = optimized_ops(int8, tmp_path)
    # every convolution runs as an int8 kernel, none falls back to float
    assert ops.count("QLinearConv") == float_convs > 0
    assert not any(op in ("Conv", "FusedConv") for op in ops)
    if block in ("plain", "rep"):  # one convolution per block, fused: no Add between the int8 convolutions
        assert ops.count("QLinearConv") == 4 and not any("Add" in op for op in ops)
    x = calib_images[:4]
    (got,) = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.5


def test_recipe_names_it_as_any_architecture():
    from edgekd.distill.config import DistillConfig

    cfg = DistillConfig(arch="edgenet", arch_args=SMALL)
    assert build_model(cfg.arch, in_channels=1, num_classes=3, **cfg.arch_args) is not None
