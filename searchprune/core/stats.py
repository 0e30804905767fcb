"""Exact sparsity, params and FLOPs of a masked model.

A weight counts as removed when it is masked *or dead*: its output channel is removed,
or its input channel comes from a channel removed upstream (followed through the
dependency graph). This is what a physically compacted model would drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from searchprune.core.graph import DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.core.masks import MaskSet


@dataclass(frozen=True)
class MaskStats:
    """Model-level figures of a mask, and the kept fraction of each layer's weights."""

    sparsity: float
    mask_sparsity: float
    flops_fraction: float
    params_fraction: float
    flops: int
    params: int
    layer_density: dict[str, float]


def _input_alive(
    layer: LayerInfo, graph: DependencyGraph, group_alive: dict[int, Tensor]
) -> Tensor | None:
    source = graph.inputs.get(layer.name)
    if source is None or layer.groups != 1:
        return None
    parts = [
        group_alive[gid]
        if gid is not None and gid in group_alive
        else torch.ones(size, dtype=torch.bool)
        for gid, size in source.segments
    ]
    alive = torch.cat(parts)
    return alive.repeat_interleave(source.repeat) if source.repeat > 1 else alive


def mask_stats(masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph) -> MaskStats:
    """Measure ``masks`` on the model described by ``layers`` and ``graph``."""
    weight_masks = {
        layer.name: masks.weight_mask(layer.name, layer.weight_shape) for layer in layers
    }
    out_alive = {
        name: mask.reshape(mask.shape[0], -1).any(dim=1) for name, mask in weight_masks.items()
    }
    group_alive: dict[int, Tensor] = {}
    for group in graph.groups:
        alive = torch.zeros(group.size, dtype=torch.bool)
        for member in group.members:
            alive |= out_alive[member]
        group_alive[group.id] = alive

    flops = params = prunable_kept = prunable_masked = prunable_total = 0
    dense_flops = dense_params = 0
    density: dict[str, float] = {}
    for layer in layers:
        mask = weight_masks[layer.name]
        ndim = len(layer.weight_shape)
        effective = mask & out_alive[layer.name].view(-1, *([1] * (ndim - 1)))
        in_alive = _input_alive(layer, graph, group_alive)
        if in_alive is not None:
            effective = effective & in_alive.view(1, -1, *([1] * (ndim - 2)))
        kept = int(effective.sum())
        density[layer.name] = kept / layer.numel
        flops += kept * layer.positions
        params += kept + (int(out_alive[layer.name].sum()) if layer.has_bias else 0)
        dense_flops += layer.flops
        dense_params += layer.params
        if layer.prunable:
            prunable_kept += kept
            prunable_masked += layer.numel - int(mask.sum())
            prunable_total += layer.numel
    return MaskStats(
        sparsity=1.0 - prunable_kept / prunable_total,
        mask_sparsity=prunable_masked / prunable_total,
        flops_fraction=flops / dense_flops,
        params_fraction=params / dense_params,
        flops=flops,
        params=params,
        layer_density=density,
    )
