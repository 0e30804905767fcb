"""Pruning units and a fast, count-based cost model.

A *unit* is what one gene of the ``layer-ratios`` space controls: a prunable layer at
``weight`` granularity, or a prunable channel group at ``channel`` granularity. The
cost model maps the number of elements removed from each unit to the model's sparsity,
FLOPs and params fractions with a few vectorized numpy operations, so budgets can be
repaired per candidate without building masks. At channel granularity it follows the
dependency graph exactly (removing a group's channels also removes the input columns
of the layers it feeds); at weight granularity it counts masked weights only, an upper
bound on FLOPs and params (units left with no input die too, see
:mod:`searchprune.core.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from searchprune.core.graph import DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.registry import SpecError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Unit:
    """One gene's worth of model: ``size`` weights (or channels) of ``layers``."""

    name: str
    size: int
    layers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    group: int | None = None


def build_units(layers: list[LayerInfo], graph: DependencyGraph, granularity: str) -> list[Unit]:
    """The units of a model at ``weight`` or ``channel`` granularity."""
    if granularity == "weight":
        return [Unit(layer.name, layer.numel, (layer.name,)) for layer in layers if layer.prunable]
    if granularity == "channel":
        return [
            Unit(
                "+".join(group.members),
                group.size,
                tuple(group.members),
                tuple(group.norms),
                group.id,
            )
            for group in graph.prunable_groups()
        ]
    raise SpecError(
        f"search spaces support granularity weight or channel, not {granularity!r}; "
        "n:m masks come from searchprune.core.masks.nm_mask"
    )


class CostModel:
    """Sparsity, FLOPs and params fractions as functions of per-unit removed counts."""

    def __init__(self, layers: list[LayerInfo], graph: DependencyGraph, granularity: str) -> None:
        self.granularity = granularity
        self.units = build_units(layers, graph, granularity)
        self.sizes = np.array([unit.size for unit in self.units], dtype=np.float64)
        numel = np.array([layer.numel for layer in layers], dtype=np.float64)
        positions = np.array([layer.positions for layer in layers], dtype=np.float64)
        bias = np.array(
            [layer.out_channels if layer.has_bias else 0 for layer in layers], dtype=np.float64
        )
        prunable = np.array([layer.prunable for layer in layers])
        self.dense_flops = float((numel * positions).sum())
        self.dense_params = float((numel + bias).sum())
        self.prunable_weights = float(numel[prunable].sum())
        if granularity == "weight":
            index = {layer.name: i for i, layer in enumerate(layers)}
            rows = [index[unit.name] for unit in self.units]
            self._flops_per = positions[rows]
        else:
            self._channel_matrices(layers, graph, numel, positions, bias, prunable)

    def _channel_matrices(
        self,
        layers: list[LayerInfo],
        graph: DependencyGraph,
        numel: np.ndarray,
        positions: np.ndarray,
        bias: np.ndarray,
        prunable: np.ndarray,
    ) -> None:
        column = {unit.group: u for u, unit in enumerate(self.units)}
        n_layers, n_units = len(layers), len(self.units)
        to_out, to_in = np.zeros((n_layers, n_units)), np.zeros((n_layers, n_units))
        out_const, in_const = np.ones(n_layers), np.ones(n_layers)
        for row, layer in enumerate(layers):
            gid = graph.group_of.get(layer.name)
            if gid in column:
                to_out[row, column[gid]] = 1.0
                out_const[row] = 0.0
            source = graph.inputs.get(layer.name)
            if source is None or layer.groups != 1:
                continue
            in_const[row] = 0.0
            for seg_gid, size in source.segments:
                share = size / source.channels
                if seg_gid in column:
                    to_in[row, column[seg_gid]] += share
                else:
                    in_const[row] += share
        self._terms = [to_out, to_in, out_const, in_const, numel, positions, bias]
        self._prunable = prunable

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
        to_out, to_in, out_const, in_const, numel, positions, bias = terms
        prunable = (
            self._prunable if isinstance(keep, np.ndarray) else torch.as_tensor(self._prunable)
        )
        out = keep @ to_out.T + out_const
        effective = numel * out * (keep @ to_in.T + in_const)
        return {
            "sparsity": 1.0 - effective[..., prunable].sum(-1) / self.prunable_weights,
            "flops_fraction": (effective * positions).sum(-1) / self.dense_flops,
            "params_fraction": (effective + bias * out).sum(-1) / self.dense_params,
        }
