"""Transfer learning for the teacher: pretrained backbone, new head, two phases.

    1. load a local pretrained weights file (safetensors, or .pt/.pth read with
       torch.load(weights_only=True)) into the model, all layers but the classifier head,
       which keeps its fresh initialization for the new classes;
    2. phase "head": train only the head, the backbone frozen (no gradients, batch-norm
       statistics fixed), `head_epochs` at teacher.lr;
    3. phase "finetune": unfreeze everything and train teacher.epochs at `finetune_lr`
       (teacher.lr / 10 by default), so the pretrained features move only a little.

The head is found generically: an attribute named fc, classifier or head that is (or
ends in) an nn.Linear, else the last nn.Linear of the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import ModelFileError
from edgekd.train.config import TeacherConfig
from edgekd.train.evaluate import accuracy
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData

HEAD_ATTRIBUTES = ("fc", "classifier", "head")


def find_head(model: nn.Module) -> str:
    """The module path of the classifier head (an nn.Linear)."""
    for attr in HEAD_ATTRIBUTES:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Linear):
            return attr
        if isinstance(module, nn.Sequential):  # torchvision: classifier = Sequential(Dropout, Linear)
            linears = [name for name, m in module.named_children() if isinstance(m, nn.Linear)]
            if linears:
                return f"{attr}.{linears[-1]}"
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelFileError("transfer learning needs a classifier head, and the model has no nn.Linear layer")
    return linears[-1]


def load_backbone(model: nn.Module, path: str | Path, *, log=None) -> dict:
    """Load every pretrained tensor except the head's; the head stays freshly initialized.

    The file may be a plain state_dict or a training checkpoint (a dict holding it under
    model, state_dict, model_state_dict or ema), with or without DataParallel's 'module.'
    prefix (io.artifacts.load_state_dict unwraps it). Any layer outside the head that is
    missing, unexpected or of another shape is a ModelFileError naming the layers. One exception is adapted rather than refused: a
    first convolution pretrained on RGB while the data is grey gets the sum of its three
    input-channel kernels (what the RGB network computes on a grey image copied to R, G, B).
    """
    from edgekd.io.artifacts import load_state_dict, state_dict_mismatches

    state = load_state_dict(path)
    head = find_head(model)
    own = model.state_dict()
    is_head = lambda key: key.startswith(head + ".")  # noqa: E731
    pretrained = {k: v for k, v in state.items() if not is_head(k)}
    first_conv = next((f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    adapted = []
    if first_conv in pretrained and _grey_from_rgb(pretrained[first_conv], own.get(first_conv)):
        pretrained[first_conv] = pretrained[first_conv].sum(dim=1, keepdim=True)
        adapted.append(first_conv)
    problems = state_dict_mismatches(pretrained, own, ignore=is_head)
    if problems:
        raise ModelFileError(f"pretrained weights '{path}' do not fit the backbone: " + "; ".join(problems)
                             + _channels_hint(pretrained, own, first_conv))
    model.load_state_dict(pretrained, strict=False)  # strict=False: only the head's keys are left out
    head_shape = [tuple(v.shape) for k, v in state.items() if is_head(k) and k.endswith("weight")]
    if log is not None and adapted:
        log(f"[teacher] {adapted[0]}: RGB kernels summed for grey input")
    return {"pretrained": str(path), "head": head, "loaded_tensors": len(pretrained),
            "pretrained_head_shape": list(head_shape[0]) if head_shape else None, "adapted": adapted}


def _channels_hint(pretrained: dict, own: dict, first_conv: str | None) -> str:
    """When the first convolution is the only layer of another shape: its input channels."""
    wrong = [k for k in own if k in pretrained and tuple(pretrained[k].shape) != tuple(own[k].shape)]
    if wrong != [first_conv] or pretrained[first_conv].ndim != 4:
        return " (check the arch and arch_args they were saved with)"
    return (f" (the first convolution takes {pretrained[first_conv].shape[1]} input channel(s) in the file and "
            f"{own[first_conv].shape[1]} for the data; only RGB weights for grey data are adapted)")


def _grey_from_rgb(pretrained: torch.Tensor, own: torch.Tensor | None) -> bool:
    return (own is not None and pretrained.ndim == 4 and pretrained.shape[1] == 3 and own.shape[1] == 1
            and pretrained.shape[0] == own.shape[0] and pretrained.shape[2:] == own.shape[2:])


class HeadOnly(nn.Module):
    """The model with its backbone frozen: no gradients, and batch-norm layers kept in eval
    mode even while training, so that their running statistics stay the pretrained ones.
    Only the head's parameters require gradients, so fit's optimizer holds only them."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model = model
        self.head = head
        head_module = model.get_submodule(head)
        head_params = {id(p) for p in head_module.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_params)

    def forward(self, x):
        return self.model(x)

    def train(self, mode: bool = True):
        super().train(mode)
        head_module = self.model.get_submodule(self.head)
        for module in self.model.modules():
            if module is not head_module and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


def transfer(model: nn.Module, data: TrainData, cfg: TeacherConfig, run: RunOptions = DEFAULT_RUN, *,
             checkpoint_dir=None) -> dict:
    """Both phases on `model` (in place); returns the stage report entries, including the
    val top-1 after each phase. Phase 1 trains with run.seed, named "teacher-head", phase 2
    with run.seed + 1, named "teacher" (run.desc and run.checkpoint are not read).

    `checkpoint_dir`: per-epoch checkpoints teacher.head.ckpt (phase 1) and teacher.ckpt
    (phase 2) there; with `run.resume`, a finished phase 1 is restored from its checkpoint."""
    tcfg, seed, log, val = cfg.transfer, run.seed, run.log, data.val
    info = load_backbone(model, tcfg.pretrained, log=log)
    ckpt = (lambda name: None) if checkpoint_dir is None else (lambda name: Path(checkpoint_dir) / name)
    report = {"transfer": info, "val_top1_pretrained_backbone": round(accuracy(model, val), 3)}

    frozen = HeadOnly(model, info["head"])
    head_cfg = dataclasses.replace(cfg, epochs=tcfg.head_epochs)
    head_fit = fit(frozen, cross_entropy_step(frozen), data, head_cfg,
                   run.with_(seed=seed, desc="teacher-head", checkpoint=ckpt("teacher.head.ckpt")))
    model.requires_grad_(True)
    report["val_top1_head"] = round(accuracy(model, val), 3)
    report["head_epochs"] = head_fit.epochs
    if log is not None:
        log(f"[teacher] transfer phase 1 (head only, {tcfg.head_epochs} epochs): "
            f"val top-1 {report['val_top1_head']:.2f}%")

    finetune_lr = tcfg.finetune_lr if tcfg.finetune_lr is not None else cfg.lr / 10
    finetune_cfg = dataclasses.replace(cfg, lr=finetune_lr)
    finetune_fit = None
    if cfg.epochs > 0:
        finetune_fit = fit(model, cross_entropy_step(model), data, finetune_cfg,
                           run.with_(seed=seed + 1, desc="teacher", checkpoint=ckpt("teacher.ckpt")))
    report["val_top1_finetune"] = round(accuracy(model, val), 3)
    report["finetune_lr"] = finetune_lr
    if log is not None:
        log(f"[teacher] transfer phase 2 (all layers, {cfg.epochs} epochs at lr {finetune_lr:g}): "
            f"val top-1 {report['val_top1_finetune']:.2f}%")
    report["fit"] = finetune_fit if finetune_fit is not None else head_fit
    return report
