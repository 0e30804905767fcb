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
from torch.nn import functional as F
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


class HeadPrunedAttention(nn.Module):
    """``nn.MultiheadAttention`` self-attention with ``heads`` of its heads, whose inner
    width (``heads · head_dim``) no longer equals its input width, which the torch module
    cannot express. Called as the module it replaces; returns no attention weights."""

    def __init__(
        self,
        source: nn.MultiheadAttention,
        in_proj_weight: Tensor,
        in_proj_bias: Tensor | None,
        out_proj: nn.Module,
        heads: int,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, source.head_dim
        self.batch_first, self.dropout = source.batch_first, source.dropout
        # read by nn.TransformerEncoderLayer: False keeps it off its fused path, which
        # assumes the inner width is the input width
        self._qkv_same_embed_dim = False
        self.in_proj_weight = nn.Parameter(in_proj_weight.clone())
        self.in_proj_bias = None if in_proj_bias is None else nn.Parameter(in_proj_bias.clone())
        self.out_proj = out_proj

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        batched = query.dim() == 3
        x = query if batched else query.unsqueeze(1 if not self.batch_first else 0)
        if not self.batch_first:
            x = x.transpose(0, 1)
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (
            t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v)
        )
        mask = _additive_mask(attn_mask, key_padding_mask, q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.transpose(1, 2).flatten(-2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out if batched else out.squeeze(1 if not self.batch_first else 0)), None


def _additive_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, dtype: torch.dtype
) -> Tensor | None:
    """``nn.MultiheadAttention``'s masks (True, or -inf, where not attended) as one float
    mask broadcast over (batch, head, query, key)."""
    masks = []
    for mask, view in ((attn_mask, (1, 1)), (key_padding_mask, (-1, 1))):
        if mask is None:
            continue
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        masks.append(mask.to(dtype) if view == (1, 1) else mask.to(dtype)[:, None, None, :])
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks[0] + masks[1]


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
        device = next((t.device for t in (*norm.parameters(), *norm.buffers())), kept.device)
        self.register_buffer("kept", kept.to(device))
        self.register_buffer("source", source.to(device))

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

    attentions: dict[str, tuple[Tensor, Tensor | None, Tensor]] = {}
    for layer in layers:
        module = model.get_submodule(layer.name)
        weight = getattr(module, layer.param).detach()
        mask = masks.weight_mask(layer.name, layer.weight_shape).to(weight.device)
        masked = weight * mask
        bias = getattr(module, layer.bias or "", None)
        channel_keep = masks.channels.get(layer.name)
        if isinstance(bias, Tensor):
            bias = (
                bias.detach()
                if channel_keep is None
                else bias.detach() * channel_keep.to(bias.device)
            )
        if layer.transposed or (layer.kind == "mha_in_proj" and layer.name not in graph.attentions):
            target = small.get_submodule(layer.name)
            setattr(target, layer.param, nn.Parameter(in_layout_of(masked.clone(), weight)))
            if isinstance(bias, Tensor):
                setattr(target, layer.bias or "bias", nn.Parameter(bias.clone()))
            continue
        out_keep = keep(graph.rows[layer.name]).to(weight.device)
        cols = graph.cols.get(layer.name)
        in_keep = (
            keep(cols).to(weight.device)
            if cols is not None and not layer.depthwise
            else torch.ones(layer.in_channels, dtype=torch.bool, device=weight.device)
        )
        if layer.kind == "mha_in_proj":  # after its out_proj: see below
            attentions[layer.name] = (masked[out_keep][:, in_keep], bias, out_keep)
            continue
        new = shrunk_layer(module, out_keep, in_keep, weight=masked)
        if isinstance(bias, Tensor):
            new.bias = nn.Parameter(bias[out_keep].clone())
        _replace(small, layer.name, new)
    for name, (weight, bias, out_keep) in attentions.items():
        source = model.get_submodule(name)
        assert isinstance(source, nn.MultiheadAttention)
        heads = int(keep(graph.attentions[name]).sum())
        out_proj = small.get_submodule(f"{name}.out_proj")
        in_bias = None if bias is None else bias[out_keep]
        _replace(small, name, HeadPrunedAttention(source, weight, in_bias, out_proj, heads))
    for name, elements in graph.norms.items():
        _replace(small, name, _shrunk_norm(_masked_norm(model, name, masks), keep(elements)))
    for name, (elements, dim, _) in graph.padded.items():
        kept, norm = keep(elements), _masked_norm(model, name, masks)
        _replace(small, name, norm if bool(kept.all()) else ZeroPaddedNorm(norm, kept, dim))
    for owner, attr, elements in graph.patches:  # an attention module's head count
        setattr(small.get_submodule(owner), attr, int(keep(elements).sum()))
    for owner, attr, pieces in graph.list_patches:  # split sizes
        counts = [int(keep(piece).sum()) for piece in pieces]
        previous = getattr(small.get_submodule(owner), attr)
        setattr(small.get_submodule(owner), attr, type(previous)(counts))
    for name, elements in graph.params.items():
        original = _tensor_at(model, name)
        parent_name, _, attr = name.rpartition(".")
        parent = small.get_submodule(parent_name) if parent_name else small
        setattr(parent, attr, original)
        _slice_tensor(small, name, keep(elements))
    return small
