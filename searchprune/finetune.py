"""Masked fine-tuning: retrain a pruned network with its mask held fixed.

Search scores candidates as they are masked, without retraining; once a mask is chosen,
the "fine-tune" stage trains the surviving weights to recover the accuracy pruning cost
(AMC, He et al. 2018, reports accuracy before and after this stage).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.core.masks import MaskSet
from searchprune.tasks.base import LossFn, Split
from searchprune.tasks.train import train_loop


def _removed_masks(model: nn.Module, masks: MaskSet) -> list[tuple[nn.Parameter, Tensor]]:
    """Each masked parameter of ``model`` with a bool tensor of its removed entries.

    As :class:`~searchprune.core.masks.MaskApplier` does: a layer's weight follows its
    weight mask, or its channel mask over the output dim; a channel mask also removes
    the bias and, for a BatchNorm, the affine weight and bias of those channels.

    :raises ValueError: when a mask names a module that ``model`` does not have.
    """
    modules = dict(model.named_modules())
    unknown = sorted(set(masks.layer_names()) - set(modules))
    if unknown:
        raise ValueError(f"the masks name modules the model does not have: {unknown}")
    removed: list[tuple[nn.Parameter, Tensor]] = []
    for name in masks.layer_names():
        module = modules[name]
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            keep = masks.weight_mask(name, tuple(weight.shape))
            removed.append((weight, ~keep.to(weight.device)))
        bias = getattr(module, "bias", None)
        if name in masks.channels and isinstance(bias, nn.Parameter):
            removed.append((bias, ~masks.channels[name].to(bias.device)))
    return removed


@torch.no_grad()
def zero_removed(removed: list[tuple[nn.Parameter, Tensor]]) -> None:
    """Set the removed entries of each parameter to zero, in place."""
    for parameter, dropped in removed:
        parameter.masked_fill_(dropped, 0.0)


def finetune(
    model: nn.Module,
    masks: MaskSet,
    train: Split,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    loss: LossFn = F.cross_entropy,
) -> nn.Module:
    """A copy of ``model`` with ``masks`` applied permanently, fine-tuned with the mask fixed.

    The removed weights are zeroed (for channel masks also the bias and the BatchNorm
    affine parameters of those channels), then the copy is trained with Adam on ``loss``
    for ``epochs`` passes over ``train``: retraining with a fixed mask, as in Han et al.
    2015, "Learning both Weights and Connections for Efficient Neural Networks". The
    gradients of removed entries are zeroed before every step, so Adam's moments never
    move them, and the mask is re-applied after it: removed entries are exactly zero
    after every step. ``epochs=0`` only applies the mask.

    The same ``seed`` gives the same result: it seeds the minibatch order of a split
    built from tensors (``batch_size`` samples each, reshuffled every epoch) and any
    dropout, through a forked RNG that leaves the caller's untouched. A split built from
    a DataLoader is iterated as it is, one pass per epoch, and ``batch_size`` is unused.

    :param model: the trained dense model; it is deep-copied and left bit-identical.
    :param masks: the keep-masks, e.g. the best candidate of a search.
    :param train: the data to fine-tune on (never the test split).
    :returns: the fine-tuned copy, in eval mode, on ``model``'s device.
    :raises ValueError: for negative ``epochs``, a non-positive ``batch_size``, masks
        naming modules ``model`` lacks, or an empty tensor split.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(
            f"epochs must be >= 0 and batch_size positive, got {epochs} and {batch_size}"
        )
    tuned = copy.deepcopy(model)
    removed = _removed_masks(tuned, masks)
    zero_removed(removed)
    if epochs == 0:
        return tuned.eval()

    def zero_removed_grads(step: int) -> None:
        for parameter, dropped in removed:
            if parameter.grad is not None:
                parameter.grad.masked_fill_(dropped, 0.0)

    return train_loop(
        tuned,
        train,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        weight_decay=weight_decay,
        loss=loss,
        before_update=zero_removed_grads,
        after_step=lambda step: zero_removed(removed),
    )
