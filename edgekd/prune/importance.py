"""Channel importance for pruning: which channels `prune.importance` removes first.

IMPORTANCES maps a name to a factory called with no arguments that returns a Torch-Pruning
importance: an object called with a dependency group that returns one score per channel
(the lowest-scored channels go first). A factory with `needs_gradients = True` gets a
backward pass on a training batch before each pruning step (as 'taylor' does). A user's
own, registered from a module named in the recipe's `plugins:` (then `importance: mine`):

    import torch, torch_pruning as tp
    from edgekd.prune.importance import IMPORTANCES

    @IMPORTANCES.register("mine")
    class LastChannelsFirst(tp.importance.Importance):  # a class is a factory too
        def __call__(self, group):
            _, idxs = group[0]  # the channels of the group, scored in this order
            return -torch.arange(len(idxs), dtype=torch.float)  # the last go first

Importing this module does not import torch (recipes are checked without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from edgekd.registry import Registry

if TYPE_CHECKING:
    from torch import nn

IMPORTANCES: Registry[Callable] = Registry("pruning importance")


@IMPORTANCES.register("l1")
def l1():
    """L1 norm of each channel's weights."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=1)


@IMPORTANCES.register("l2")
def l2():
    """L2 norm of each channel's weights."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=2)


@IMPORTANCES.register("bn_scale")
def bn_scale():
    """|gamma| of the channel's batch norm (network slimming: see prune.sparsity)."""
    import torch_pruning as tp

    return tp.importance.BNScaleImportance()


@IMPORTANCES.register("taylor")
def taylor():
    """First-order Taylor expansion of the loss, |weight * gradient|: reads gradients."""
    import torch_pruning as tp

    return tp.importance.TaylorImportance()


taylor.needs_gradients = True


@IMPORTANCES.register("random")
def random_scores():
    """Random scores (a baseline)."""
    import torch_pruning as tp

    return tp.importance.RandomImportance()


def make_importance(name: str):
    """The Torch-Pruning importance named `name` (ConfigError listing the names if unknown)."""
    return IMPORTANCES.get(name)()


def needs_gradients(name: str) -> bool:
    """Whether the importance `name` reads gradients (pruning then needs a training batch)."""
    return bool(getattr(IMPORTANCES.get(name), "needs_gradients", False))


def default_protected(model: nn.Module) -> list[str]:
    """The first convolution (it sees the raw image) and the last linear layer (its outputs
    are the classes) are never pruned unless the user asks."""
    from torch import nn

    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return convs[:1] + linears[-1:]
