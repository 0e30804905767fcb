"""Latency as a budget and a metric: a latency model fitted by measurement.

Searching on measured latency would time every candidate; instead the latency of the
*compacted* model (:func:`searchprune.kernels.compact`) is measured once at a few
uniform channel ratios and fitted as ``latency = intercept + slope * flops_fraction``
(least squares; on these small models latency does not fall in proportion to FLOPs, and
the intercept captures what does not shrink). A ``latency_ms`` budget becomes the FLOPs
budget the model predicts, so repair and every searcher work unchanged; every candidate
gets a predicted ``latency_ms`` in its stats (a fitness can weigh it), and the report
measures the best model's real latency. Measurements: one thread, batch of one, warm-up,
median of repeated runs (:func:`searchprune.kernels.median_latency`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.graph import DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.core.masks import MaskSet
from searchprune.core.units import CostModel
from searchprune.kernels import compact, median_latency
from searchprune.registry import SpecError
from searchprune.space import LayerRatioSpace

RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)


def measure_ms(model: nn.Module, example: Tensor, repeats: int = 30) -> float:
    """Median latency of ``model`` on ``example`` in milliseconds, on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return 1e3 * median_latency(lambda: model(example), repeats=repeats, warmup=5)
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class LatencyModel:
    """``latency_ms = intercept + slope * flops_fraction``, fitted on measured points."""

    intercept: float
    slope: float
    points: tuple[tuple[float, float], ...]  # (flops fraction, measured ms)

    def predict(self, flops_fraction: float) -> float:
        return self.intercept + self.slope * flops_fraction

    def flops_budget(self, target_ms: float, lowest_fraction: float) -> Budget:
        """The FLOPs budget whose predicted latency is ``target_ms``.

        :raises SpecError: when even ``lowest_fraction`` (the most the space can remove)
            is predicted slower than the target.
        """
        fastest = self.predict(lowest_fraction)
        if target_ms < fastest:
            raise SpecError(
                f"budget.latency_ms={target_ms} cannot be met: the fitted latency model "
                f"predicts {fastest:.4f} ms at the most pruning the space allows (measured "
                f"points: {[(round(f, 3), round(ms, 4)) for f, ms in self.points]}). Raise "
                "budget.latency_ms or space.max_ratio."
            )
        fraction = (target_ms - self.intercept) / self.slope if self.slope > 0 else 1.0
        return Budget("flops", float(min(max(fraction, lowest_fraction), 0.999)))

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        layers: list[LayerInfo],
        graph: DependencyGraph,
        cost: CostModel,
        weight_scores: Mapping[str, Tensor],
        example: Tensor,
        max_ratio: float,
    ) -> LatencyModel:
        """Measure compacted models at uniform channel ratios and fit the line."""
        if cost.granularity != "channel":
            raise SpecError(
                "budget.latency_ms needs space.granularity: channel (latency is measured on "
                "the compacted model, which only channel pruning makes smaller)"
            )
        decoder = LayerRatioSpace(cost, Budget("flops", 0.999), weight_scores, max_ratio=max_ratio)
        points = []
        for ratio in (r for r in RATIOS if r <= max_ratio):
            genome = np.full(decoder.dim, ratio)
            masks: MaskSet = decoder.decode(genome)
            fraction = float(cost.fractions(decoder.removed(genome))["flops_fraction"][0])
            points.append((fraction, measure_ms(compact(model, masks, layers, graph), example)))
        fractions, times = np.array(points).T
        slope, intercept = np.polyfit(fractions, times, 1)
        return cls(float(intercept), float(slope), tuple(points))
