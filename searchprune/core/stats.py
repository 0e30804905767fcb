"""Exact sparsity, params and FLOPs of a masked model.

A channel element (:mod:`searchprune.core.graph`) is *alive* when anything can still
emit a nonzero value on it: a kept weight in one of its rows, an unmasked bias there, or
an unmasked norm channel (a BatchNorm shift emits a constant even on a zero input), or
when its group is frozen. A group removed whole keeps its first element, as zeros (torch
layers and norms do not take zero-width tensors); at channel granularity its weights are
counted, as the compact model holds them. A weight counts as removed when it is masked
*or dead*: its row is a dead element, or the input channel it reads is. Dead elements
are exactly what :func:`searchprune.kernels.compact` drops, so these figures are the compact model's
(channel granularity) or the masked model's own nonzero weights (weight granularity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    dense_flops: int
    dense_params: int


def _index(elements: np.ndarray) -> Tensor:
    return torch.from_numpy(elements)


def alive_elements(masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph) -> Tensor:
    """Boolean per element of ``graph``: whether it must stay (see the module docstring)."""
    return _alive_and_forced(masks, layers, graph)[0]


def _alive_and_forced(
    masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph
) -> tuple[Tensor, Tensor]:
    """Alive elements, and those kept only so that no group is left empty."""
    alive = torch.from_numpy(graph.frozen_elements().copy())
    for layer in layers:
        if layer.transposed:
            continue  # their channels are frozen
        mask = masks.weight_mask(layer.name, layer.weight_shape).cpu()
        rows = mask.reshape(mask.shape[0], -1).any(dim=1)
        if layer.has_bias:
            rows |= masks.channels.get(layer.name, torch.ones_like(rows)).cpu()
        alive[_index(graph.rows[layer.name])[rows]] = True
    affine = {name: graph.per_channel.get(name, 0) > 0 for name in graph.norms}
    affine.update({name: flag for name, (_, _, flag) in graph.padded.items()})
    padded = {name: elements for name, (elements, _, _) in graph.padded.items()}
    for name, elements in {**graph.norms, **padded}.items():
        if not affine[name]:
            alive[_index(elements)] = True  # no affine to mask: it emits -mean/std
            continue
        kept = masks.channels.get(name)
        alive[_index(elements) if kept is None else _index(elements)[kept.cpu()]] = True
    forced = torch.zeros_like(alive)
    for group in graph.groups:  # zero-width tensors break convs and norms: one zero stays
        if not bool(alive[_index(group.elements)].any()):
            forced[int(group.elements[0])] = True
    return alive | forced, forced


def input_alive(layer: LayerInfo, graph: DependencyGraph, alive: Tensor) -> Tensor | None:
    """Which of ``layer``'s weights read a live input channel, as a mask broadcastable
    to its weight, or ``None`` when all do (input not followed, or depthwise)."""
    cols = graph.cols.get(layer.name)
    if cols is None or layer.depthwise or layer.transposed:
        return None
    columns = alive[_index(cols)]
    shape = layer.weight_shape
    spatial = [1] * (len(shape) - 2)
    if layer.groups == 1:
        return columns.view(1, -1, *spatial)
    out_per_group = shape[0] // layer.groups
    per_group = columns.view(layer.groups, 1, shape[1])
    spread = per_group.expand(layer.groups, out_per_group, shape[1])
    return spread.reshape(shape[0], shape[1], *spatial)


def mask_stats(masks: MaskSet, layers: list[LayerInfo], graph: DependencyGraph) -> MaskStats:
    """Measure ``masks`` on the model described by ``layers`` and ``graph``."""
    alive, forced = _alive_and_forced(masks, layers, graph)
    whole = masks.granularity == "channel"  # a forced element's zeros are in the model
    flops = params = prunable_kept = prunable_masked = prunable_total = 0
    dense_flops = dense_params = 0
    density: dict[str, float] = {}
    for layer in layers:
        mask = masks.weight_mask(layer.name, layer.weight_shape).cpu()
        kept_bias = layer.bias_numel
        if not layer.transposed:
            rows = alive[_index(graph.rows[layer.name])]
            if whole:
                mask = mask | forced[_index(graph.rows[layer.name])].view(
                    -1, *([1] * (mask.dim() - 1))
                )
            effective = mask & rows.view(-1, *([1] * (mask.dim() - 1)))
            columns = input_alive(layer, graph, alive)
            if columns is not None:
                effective = effective & columns
            kept_bias = int(rows.sum()) if layer.has_bias else 0
        else:
            effective = mask
        kept = int(effective.sum())
        density[layer.name] = kept / layer.numel
        flops += kept * layer.positions
        params += kept + kept_bias
        dense_flops += layer.flops
        dense_params += layer.params
        if layer.prunable:
            prunable_kept += kept
            prunable_masked += layer.numel - int(mask.sum())
            prunable_total += layer.numel
    for name, elements in {**graph.norms, **graph.params}.items():
        count = graph.per_channel.get(name, 0)
        params += count * int(alive[_index(elements)].sum())
        dense_params += count * len(elements)
    params += graph.other_params
    dense_params += graph.other_params
    for elements, macs in graph.products:
        flops += macs * int(alive[_index(elements)].sum())
        dense_flops += macs * len(elements)
    flops += graph.other_flops
    dense_flops += graph.other_flops
    return MaskStats(
        sparsity=1.0 - prunable_kept / prunable_total,
        mask_sparsity=prunable_masked / prunable_total,
        flops_fraction=flops / dense_flops,
        params_fraction=params / dense_params,
        flops=flops,
        params=params,
        layer_density=density,
        dense_flops=dense_flops,
        dense_params=dense_params,
    )
