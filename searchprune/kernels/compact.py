"""``compact``: physically remove pruned channels and units, giving a smaller dense model.

A masked model still multiplies by its zeros; a compacted one does not have them. For
every channel group of the dependency graph (:mod:`searchprune.core.graph`), the
channels no member keeps are dropped from the members' outputs (weights, bias, and the
BatchNorm that follows), and the matching input columns of every layer they feed are
dropped too, following flattens into Linear layers (each channel is a block of
``repeat`` columns). Groups the graph froze (feeding the model output, or an operation it
cannot follow) are kept whole. The result computes exactly what the masked model does,
up to float rounding: the dropped channels were exactly zero in the masked model.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, nn

from searchprune.core.graph import DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.core.masks import MaskSet, apply_masks

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _alive_channels(
    masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph
) -> dict[int, Tensor]:
    """Per group, the channels that must stay: a channel goes only when every member's
    weights for it are masked and nothing else can still emit a constant there (a bias
    or a BatchNorm not masked with it), so dropping it changes no output. Frozen groups
    stay whole."""
    by_name = {layer.name: layer for layer in layers}
    alive: dict[int, Tensor] = {}
    for group in graph.groups:
        keep = torch.zeros(group.size, dtype=torch.bool)
        for member in group.members:
            layer = by_name[member]
            weight_mask = masks.weight_mask(member, layer.weight_shape)
            keep |= weight_mask.reshape(layer.out_channels, -1).any(dim=1)
            if layer.has_bias:
                keep |= masks.channels.get(member, torch.ones(group.size, dtype=torch.bool))
        for norm in group.norms:
            keep |= masks.channels.get(norm, torch.ones(group.size, dtype=torch.bool))
        alive[group.id] = torch.ones(group.size, dtype=torch.bool) if group.frozen else keep
    return alive


def _input_keep(layer: LayerInfo, graph: DependencyGraph, alive: dict[int, Tensor]) -> Tensor:
    """Which input columns (Linear) or input channels (Conv) of ``layer`` survive."""
    source = graph.inputs.get(layer.name)
    if source is None or layer.groups != 1:
        return torch.ones(layer.in_channels, dtype=torch.bool)
    parts = [
        alive[gid] if gid is not None else torch.ones(size, dtype=torch.bool)
        for gid, size in source.segments
    ]
    keep = torch.cat(parts)
    return keep.repeat_interleave(source.repeat) if source.repeat > 1 else keep


def in_layout_of(tensor: Tensor, reference: Tensor) -> Tensor:
    """``tensor`` in ``reference``'s memory format (NHWC weights stay NHWC, which the
    NHWC convolutions of a ``channels_last`` model need to stay fast)."""
    nhwc = reference.dim() == 4 and not reference.is_contiguous()
    if nhwc and reference.is_contiguous(memory_format=torch.channels_last):
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor.contiguous()


def shrunk_layer(module: nn.Module, out_keep: Tensor, in_keep: Tensor) -> nn.Module:
    """A copy of a Linear/Conv layer holding only the kept outputs and inputs (boolean
    masks over its output rows and input channels)."""
    new = copy.deepcopy(module)
    weight = cast(Tensor, module.weight).detach()
    new.weight = nn.Parameter(in_layout_of(weight[out_keep][:, in_keep].clone(), weight))
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor):
        new.bias = nn.Parameter(bias.detach()[out_keep].clone())
    kept_out, kept_in = int(out_keep.sum()), int(in_keep.sum())
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = kept_out, kept_in
    elif isinstance(new, (nn.Conv1d, nn.Conv2d)):
        new.out_channels, new.in_channels = kept_out, kept_in
    return new


def _shrunk_norm(module: nn.Module, keep: Tensor) -> nn.Module:
    new = copy.deepcopy(module)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                data = tensor.detach()[keep].clone()
                target = getattr(new, attr)
                if isinstance(target, nn.Parameter):
                    setattr(new, attr, nn.Parameter(data, requires_grad=target.requires_grad))
                else:
                    setattr(new, attr, data)
    if isinstance(new, _NORMS):
        new.num_features = int(keep.sum())
    return new


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compact(
    model: nn.Module, masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph
) -> nn.Module:
    """A smaller dense copy of ``model`` computing what ``model`` masked by ``masks`` does.

    ``layers`` and ``graph`` are the model's (a :class:`~searchprune.problem.Problem` holds
    both). Channel-granularity masks remove whole channels; weight-granularity masks only
    lose the channels left with no weight and no bias.

    :raises ValueError: when the graph could not be traced (channels cannot be followed).
    """
    if not graph.traced:
        raise ValueError("compact needs a traced dependency graph; this model could not be traced")
    masked = copy.deepcopy(model).eval()
    apply_masks(masked, masks)
    alive = _alive_channels(masks, layers, graph)
    for layer in layers:
        module = masked.get_submodule(layer.name)
        out_keep = alive[graph.group_of[layer.name]]
        _replace(
            masked, layer.name, shrunk_layer(module, out_keep, _input_keep(layer, graph, alive))
        )
    for group in graph.groups:
        for norm in group.norms:
            _replace(masked, norm, _shrunk_norm(masked.get_submodule(norm), alive[group.id]))
    return masked
