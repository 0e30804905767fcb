"""Pruning units and a fast, count-based cost model.

A *unit* is what one gene of the ``layer-ratios`` space controls: a prunable layer at
``weight`` granularity, or a prunable channel group at ``channel`` granularity (its
elements: channels removed as a whole, see :mod:`searchprune.core.graph`). The cost
model maps the number of elements removed from each unit to the model's sparsity,
FLOPs and params fractions with a few vectorized numpy operations, so budgets can be
repaired per candidate without building masks.

At channel granularity it is exact: every element of a group has as many rows, input
columns and norm channels in each layer as every other, so a layer's kept weights are
``numel · (kept row share) · (kept column share)``, bilinear in the units' kept shares;
params include biases, norm affine parameters and per-channel tensors of kept channels,
and every other parameter of the model (a unit removed whole keeps one element, as
:func:`~searchprune.core.stats.alive_elements` does). At weight granularity it counts masked weights
only, an upper bound on FLOPs and params (a channel left with no weight, no bias and no
norm dies too, see :mod:`searchprune.core.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from searchprune.core.graph import DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.core.masks import MaskSet
from searchprune.registry import SpecError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Unit:
    """One gene's worth of model: ``size`` weights (or channel elements) of ``layers``.

    At channel granularity ``element_of[name]`` gives, for each output row of a member
    layer (or channel of a member norm), the index of the unit element it belongs to,
    or -1 for rows of other units; ``elements`` are the graph's element ids.
    """

    name: str
    size: int
    layers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    group: int | None = None
    elements: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    element_of: dict[str, np.ndarray] = field(default_factory=dict)

    def per_element(self, name: str, per_row: Tensor) -> Tensor:
        """The mean of ``per_row`` (one value per row of layer or norm ``name``) over
        the rows of each element of this unit (a unit without ``element_of[name]`` has one
        element per row, in order)."""
        if name not in self.element_of:
            return per_row
        index = torch.from_numpy(self.element_of[name])
        inside = index >= 0
        if len(index) == self.size and torch.equal(index, torch.arange(self.size)):
            return per_row
        total = torch.zeros(self.size, dtype=per_row.dtype, device=per_row.device)
        count = torch.zeros(self.size, dtype=per_row.dtype, device=per_row.device)
        where = index[inside].to(per_row.device)
        total.index_add_(0, where, per_row[inside.to(per_row.device)])
        count.index_add_(0, where, torch.ones_like(per_row[inside.to(per_row.device)]))
        return total / count.clamp(min=1)

    def per_row(self, name: str, per_element: Tensor, fill: float = 1.0) -> Tensor:
        """One value per row of ``name``: its element's value in ``per_element``, or
        ``fill`` for rows of other units."""
        if name not in self.element_of:
            return per_element
        index = torch.from_numpy(self.element_of[name]).to(per_element.device)
        inside = index >= 0
        out = torch.full(index.shape, fill, dtype=per_element.dtype, device=per_element.device)
        out[inside] = per_element[index[inside]]
        return out


def build_units(layers: list[LayerInfo], graph: DependencyGraph, granularity: str) -> list[Unit]:
    """The units of a model at ``weight`` or ``channel`` granularity."""
    if granularity == "weight":
        return [Unit(layer.name, layer.numel, (layer.name,)) for layer in layers if layer.prunable]
    if granularity == "channel":
        return _channel_units(graph)
    raise SpecError(
        f"search spaces support granularity weight or channel, not {granularity!r}; "
        "n:m masks come from searchprune.core.masks.nm_mask"
    )


def _channel_units(graph: DependencyGraph) -> list[Unit]:
    groups = graph.prunable_groups()
    unit_of = np.full(graph.elements, -1, dtype=np.int64)
    index_of = np.full(graph.elements, -1, dtype=np.int64)
    for u, group in enumerate(groups):
        unit_of[group.elements] = u
        index_of[group.elements] = np.arange(group.size)
    units = []
    for u, group in enumerate(groups):
        element_of = {}
        for name in group.members:
            rows = graph.rows[name]
            element_of[name] = np.where(unit_of[rows] == u, index_of[rows], -1)
        for name in group.norms:
            channels = graph.norms[name]
            element_of[name] = np.where(unit_of[channels] == u, index_of[channels], -1)
        units.append(
            Unit(
                "+".join(group.members),
                group.size,
                tuple(group.members),
                tuple(group.norms),
                group.id,
                group.elements,
                element_of,
            )
        )
    return units


def _shares(elements: np.ndarray, unit_of: np.ndarray, n_units: int) -> tuple[np.ndarray, float]:
    """Share of ``elements`` (one per row/column/channel) in each unit, and outside any."""
    units = unit_of[elements]
    inside = units >= 0
    counts = np.bincount(units[inside], minlength=n_units).astype(np.float64)
    total = max(len(elements), 1)
    return counts / total, float((~inside).sum()) / total


class CostModel:
    """Sparsity, FLOPs and params fractions as functions of per-unit removed counts."""

    def __init__(self, layers: list[LayerInfo], graph: DependencyGraph, granularity: str) -> None:
        self.granularity = granularity
        self.graph = graph
        self.units = build_units(layers, graph, granularity)
        self.sizes = np.array([unit.size for unit in self.units], dtype=np.float64)
        numel = np.array([layer.numel for layer in layers], dtype=np.float64)
        positions = np.array([layer.positions for layer in layers], dtype=np.float64)
        bias = np.array([layer.bias_numel for layer in layers], dtype=np.float64)
        prunable = np.array([layer.prunable for layer in layers])
        channel_params = {
            name: graph.per_channel.get(name, 0) * len(elements)
            for name, elements in {**graph.norms, **graph.params}.items()
        }
        self.dense_flops = float(
            (numel * positions).sum()
            + sum(len(elements) * macs for elements, macs in graph.products)
            + graph.other_flops
        )
        self.dense_params = float(
            (numel + bias).sum() + sum(channel_params.values()) + graph.other_params
        )
        self.prunable_weights = float(numel[prunable].sum())
        if granularity == "weight":
            index = {layer.name: i for i, layer in enumerate(layers)}
            rows = [index[unit.name] for unit in self.units]
            self._flops_per = positions[rows]
        else:
            self._channel_matrices(layers, numel, positions, bias, prunable, channel_params)

    def _channel_matrices(
        self,
        layers: list[LayerInfo],
        numel: np.ndarray,
        positions: np.ndarray,
        bias: np.ndarray,
        prunable: np.ndarray,
        channel_params: dict[str, int],
    ) -> None:
        graph, n_units = self.graph, len(self.units)
        unit_of = np.full(graph.elements, -1, dtype=np.int64)
        for u, unit in enumerate(self.units):
            unit_of[unit.elements] = u
        n_layers = len(layers)
        to_out, to_in = np.zeros((n_layers, n_units)), np.zeros((n_layers, n_units))
        out_const, in_const = np.ones(n_layers), np.ones(n_layers)
        for row, layer in enumerate(layers):
            to_out[row], out_const[row] = _shares(graph.rows[layer.name], unit_of, n_units)
            cols = graph.cols.get(layer.name)
            if cols is not None and not layer.depthwise:
                to_in[row], in_const[row] = _shares(cols, unit_of, n_units)
        names = list(channel_params)
        to_channel = np.zeros((len(names), n_units))
        channel_const = np.ones(len(names))
        elements = {**graph.norms, **graph.params}
        for row, name in enumerate(names):
            to_channel[row], channel_const[row] = _shares(elements[name], unit_of, n_units)
        counts = np.array([channel_params[name] for name in names], dtype=np.float64)
        to_product = np.zeros((len(graph.products), n_units))
        product_const = np.ones(len(graph.products))
        for row, (spots, _) in enumerate(graph.products):
            to_product[row], product_const[row] = _shares(spots, unit_of, n_units)
        product_macs = np.array(
            [len(spots) * macs for spots, macs in graph.products], dtype=np.float64
        )
        self._terms = [
            to_out,
            to_in,
            out_const,
            in_const,
            numel,
            positions,
            bias,
            to_channel,
            channel_const,
            counts,
            to_product,
            product_const,
            product_macs,
        ]
        self._prunable = prunable

    def frozen_note(self) -> str:
        """At channel granularity, why the channels that cannot be pruned are frozen (for a
        budget that cannot be met); empty at weight granularity or with none frozen."""
        summary = self.graph.frozen_summary() if self.granularity == "channel" else ""
        return f" Channels that cannot be pruned: {summary}." if summary else ""

    def fractions(self, removed: np.ndarray) -> dict[str, np.ndarray]:
        """Figures for ``removed`` counts, shape ``(..., n_units)``; arrays of shape ``(...)``."""
        removed = np.asarray(removed, dtype=np.float64)
        if self.granularity == "weight":
            total = removed.sum(axis=-1)
            return {
                "sparsity": total / self.prunable_weights,
                "flops_fraction": 1.0 - (removed * self._flops_per).sum(axis=-1) / self.dense_flops,
                "params_fraction": 1.0 - total / self.dense_params,
            }
        return self.channel_fractions(1.0 - removed / self.sizes)

    def channel_fractions(self, keep: ArrayT) -> dict[str, ArrayT]:
        """Figures at channel granularity for per-unit kept shares ``keep`` (``(...,
        n_units)``): a numpy array, or a torch tensor, for which the result is
        differentiable (gate training uses it for the expected cost)."""
        terms = (
            self._terms
            if isinstance(keep, np.ndarray)
            else [torch.as_tensor(t, dtype=keep.dtype, device=keep.device) for t in self._terms]
        )
        to_out, to_in, out_const, in_const, numel, positions, bias = terms[:7]
        to_channel, channel_const, counts, to_product, product_const, product_macs = terms[7:]
        if isinstance(keep, np.ndarray):
            prunable = self._prunable
            keep = np.maximum(keep, 1.0 / self.sizes)
        else:
            prunable = torch.as_tensor(self._prunable)
            keep = torch.maximum(keep, torch.as_tensor(1.0 / self.sizes, dtype=keep.dtype))
        out = keep @ to_out.T + out_const
        effective = numel * out * (keep @ to_in.T + in_const)
        channels = (counts * (keep @ to_channel.T + channel_const)).sum(-1)
        params = (effective + bias * out).sum(-1) + channels + self.graph.other_params
        return {
            "sparsity": 1.0 - effective[..., prunable].sum(-1) / self.prunable_weights,
            "flops_fraction": (
                (effective * positions).sum(-1)
                + (product_macs * (keep @ to_product.T + product_const)).sum(-1)
                + self.graph.other_flops
            )
            / self.dense_flops,
            "params_fraction": params / self.dense_params,
        }

    def channel_masks(self, keep: list[Tensor]) -> MaskSet:
        """The channel masks of per-unit element keep-masks: every member layer's output
        rows and every norm's channels, by the elements they belong to."""
        graph = self.graph
        element_keep = torch.ones(graph.elements, dtype=torch.bool)
        touched = np.zeros(graph.elements, dtype=bool)
        for unit, mask in zip(self.units, keep, strict=True):
            element_keep[torch.from_numpy(unit.elements)] = mask.bool().cpu()
            touched[unit.elements] = True
        channels: dict[str, Tensor] = {}
        padded = {name: elements for name, (elements, _, _) in graph.padded.items()}
        for name, elements in {**graph.rows, **graph.norms, **padded}.items():
            if touched[elements].any():
                channels[name] = element_keep[torch.from_numpy(elements)]
        return MaskSet("channel", channels=channels)
