"""``compact``: physically remove pruned channels and units, giving a smaller dense model.

A masked model still multiplies by its zeros; a compacted one does not have them. Every
channel element of the dependency graph (:mod:`searchprune.core.graph`) that is dead
(:func:`searchprune.core.stats.alive_elements`: no kept weight, bias or norm channel
emits anything on it) is dropped from the output rows of its layers, from the norms and
per-channel tensors that carry it, and from the input columns of every layer that reads
it (a flatten into a Linear maps each channel to its block of columns). A depthwise conv
loses its groups with its channels; a grouped conv loses the same channels in every
group. Frozen groups are kept whole. The result computes what the masked model does, up
to float rounding: the dropped channels were exactly zero where anything read them.
"""

from __future__ import annotations

import copy
import functools
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from searchprune.core.graph import NORM_TYPES, DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.core.masks import MaskSet
from searchprune.core.stats import alive_elements


def in_layout_of(tensor: Tensor, reference: Tensor) -> Tensor:
    """``tensor`` in ``reference``'s memory format (NHWC weights stay NHWC, which the
    NHWC convolutions of a ``channels_last`` model need to stay fast)."""
    nhwc = reference.dim() == 4 and not reference.is_contiguous()
    if nhwc and reference.is_contiguous(memory_format=torch.channels_last):
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor.contiguous()


def _copy_without(module: nn.Module, tensors: list[Tensor]) -> nn.Module:
    """A deep copy of ``module`` that shares ``tensors`` instead of copying them (they
    are about to be replaced by smaller ones)."""
    memo: dict[int, object] = {id(t): t for t in tensors}
    return copy.deepcopy(module, memo)


def shrunk_layer(
    module: nn.Module, out_keep: Tensor, in_keep: Tensor, weight: Tensor | None = None
) -> nn.Module:
    """A copy of a Linear/Conv layer holding only the kept outputs and inputs (boolean
    masks over its output rows and its input channels, all of them for a grouped conv;
    a depthwise conv keeps the inputs of its kept outputs). ``weight`` replaces the
    layer's own weight values (a masked copy), when given."""
    source = cast(Tensor, module.weight).detach() if weight is None else weight
    bias = getattr(module, "bias", None)
    new = _copy_without(module, [t for t in (module.weight, bias) if isinstance(t, Tensor)])
    groups = int(getattr(module, "groups", 1))
    kept_out = int(out_keep.sum())
    if groups > 1 and source.shape[1] == 1 and source.shape[0] == groups:  # depthwise
        trimmed = source[out_keep]
        new_groups, kept_in = kept_out, kept_out
    elif groups > 1:  # grouped: the same channels leave every group
        per_group = in_keep.view(groups, -1)
        trimmed = source[out_keep][:, per_group[0]]
        new_groups, kept_in = groups, int(in_keep.sum())
    else:
        trimmed = source[out_keep][:, in_keep]
        new_groups, kept_in = 1, int(in_keep.sum())
    new.weight = nn.Parameter(in_layout_of(trimmed.clone(), source))
    if isinstance(bias, Tensor):
        new.bias = nn.Parameter(bias.detach()[out_keep].clone())
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = kept_out, kept_in
    elif isinstance(new, _ConvNd):
        new.out_channels, new.in_channels, new.groups = kept_out, kept_in, new_groups
    return new


def _shrunk_norm(module: nn.Module, keep: Tensor) -> nn.Module:
    tensors = [
        t
        for attr in ("weight", "bias", "running_mean", "running_var")
        if isinstance(t := getattr(module, attr, None), Tensor)
    ]
    new = _copy_without(module, tensors)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                data = tensor.detach()[keep.to(tensor.device)].clone()
                if isinstance(tensor, nn.Parameter):
                    setattr(new, attr, nn.Parameter(data, requires_grad=tensor.requires_grad))
                else:
                    setattr(new, attr, data)
    if isinstance(new, NORM_TYPES):
        new.num_features = int(keep.sum())
    return new


def _tensor_at(model: nn.Module, name: str) -> Tensor:
    tensor = functools.reduce(getattr, name.split("."), model)
    assert isinstance(tensor, Tensor)
    return tensor


def _masked_norm(model: nn.Module, name: str, masks: MaskSet) -> nn.Module:
    """A copy of norm ``name`` with its affine zeroed where ``masks`` remove channels."""
    norm = copy.deepcopy(model.get_submodule(name))
    channel_keep = masks.channels.get(name)
    if channel_keep is not None:
        for attr in ("weight", "bias"):
            tensor = getattr(norm, attr, None)
            if isinstance(tensor, Tensor):
                tensor.mul_(channel_keep.to(tensor.device))
    return norm


class ZeroPaddedNorm(nn.Module):
    """A norm whose statistics mix channels (LayerNorm, GroupNorm), run on its input with
    the removed channels put back as zeros along ``dim``: exactly what the masked model
    normalized. Returns the kept channels. The padding is shape-free, so a traced export
    runs at any batch size."""

    kept: Tensor
    source: Tensor

    def __init__(self, norm: nn.Module, keep: Tensor, dim: int) -> None:
        super().__init__()
        self.norm, self.dim = norm, dim
        kept = keep.nonzero().flatten()
        source = torch.full((len(keep),), len(kept), dtype=torch.long)  # the zero channel
        source[kept] = torch.arange(len(kept))
        self.register_buffer("kept", kept)
        self.register_buffer("source", source)

    def forward(self, x: Tensor) -> Tensor:
        zero = torch.zeros_like(x.narrow(self.dim, 0, 1))
        full = torch.cat([x, zero], self.dim).index_select(self.dim, self.source)
        out: Tensor = self.norm(full)
        return out.index_select(self.dim, self.kept)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _slice_tensor(model: nn.Module, name: str, keep: Tensor) -> None:
    """Keep the ``keep`` entries of a per-channel tensor (its one dim longer than 1)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    tensor = getattr(parent, attr)
    dim = next(d for d, size in enumerate(tensor.shape) if size == len(keep))
    data = tensor.detach().index_select(dim, keep.nonzero().flatten().to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(parent, attr, nn.Parameter(data, requires_grad=tensor.requires_grad))
    else:
        setattr(parent, attr, data)


@torch.no_grad()
def compact(
    model: nn.Module, masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph
) -> nn.Module:
    """A smaller dense copy of ``model`` computing what ``model`` masked by ``masks`` does.

    ``layers`` and ``graph`` are the model's (a :class:`~searchprune.problem.Problem` holds
    both). Channel-granularity masks remove whole channels; weight-granularity masks only
    lose the channels left with nothing that emits on them. ``model`` is not changed.
    """
    alive = alive_elements(masks, layers, graph)
    replaced = [
        t
        for layer in layers
        for t in (
            getattr(model.get_submodule(layer.name), layer.param),
            getattr(model.get_submodule(layer.name), layer.bias or "", None),
        )
        if isinstance(t, Tensor)
    ]
    replaced += [
        t
        for name in graph.norms
        for attr in ("weight", "bias", "running_mean", "running_var")
        if isinstance(t := getattr(model.get_submodule(name), attr, None), Tensor)
    ]
    replaced += [_tensor_at(model, name) for name in graph.params]
    small = _copy_without(model, replaced).eval()

    def keep(elements: np.ndarray) -> Tensor:
        return alive[torch.from_numpy(elements)]

    for layer in layers:
        module = model.get_submodule(layer.name)
        weight = getattr(module, layer.param).detach()
        mask = masks.weight_mask(layer.name, layer.weight_shape).to(weight.device)
        masked = weight * mask
        if layer.transposed or layer.kind == "mha_in_proj":
            target = small.get_submodule(layer.name)
            setattr(target, layer.param, nn.Parameter(in_layout_of(masked.clone(), weight)))
            bias = getattr(module, layer.bias or "", None)
            if isinstance(bias, Tensor):
                bias_keep = masks.channels.get(layer.name)
                value = bias.detach().clone()
                if bias_keep is not None and layer.kind != "mha_in_proj":
                    value = value * bias_keep.to(value.device)
                setattr(target, layer.bias or "bias", nn.Parameter(value))
            continue
        out_keep = keep(graph.rows[layer.name]).to(weight.device)
        cols = graph.cols.get(layer.name)
        in_keep = (
            keep(cols).to(weight.device)
            if cols is not None and not layer.depthwise
            else torch.ones(layer.in_channels, dtype=torch.bool, device=weight.device)
        )
        new = shrunk_layer(module, out_keep, in_keep, weight=masked)
        bias = getattr(module, "bias", None)
        channel_keep = masks.channels.get(layer.name)
        if isinstance(bias, Tensor) and channel_keep is not None:
            new.bias = nn.Parameter(
                (bias.detach() * channel_keep.to(bias.device))[out_keep].clone()
            )
        _replace(small, layer.name, new)
    for name, elements in graph.norms.items():
        _replace(small, name, _shrunk_norm(_masked_norm(model, name, masks), keep(elements)))
    for name, (elements, dim, _) in graph.padded.items():
        kept, norm = keep(elements), _masked_norm(model, name, masks)
        _replace(small, name, norm if bool(kept.all()) else ZeroPaddedNorm(norm, kept, dim))
    for owner, attr, elements in graph.patches:  # an attention module's head count
        setattr(small.get_submodule(owner), attr, int(keep(elements).sum()))
    for name, elements in graph.params.items():
        original = _tensor_at(model, name)
        parent_name, _, attr = name.rpartition(".")
        parent = small.get_submodule(parent_name) if parent_name else small
        setattr(parent, attr, original)
        _slice_tensor(small, name, keep(elements))
    return small
