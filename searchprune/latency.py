"""Latency as a budget and a metric: a latency curve measured under the real kernels.

Timing every candidate would cost more than scoring it, so the latency of the pruned
model *as it would be deployed* is measured once, when the run starts, at a few uniform
pruning ratios, and interpolated in between:

- channel granularity: the compacted model (:func:`searchprune.kernels.compact`),
  against its FLOPs fraction;
- weight granularity: the masked model with every layer on the fastest of dense, CSR,
  BSR and gather-scatter kernels (:func:`searchprune.kernels.sparsify`, ``auto``),
  against its params (kept weights) fraction.

The curve is piecewise linear through the measured points after an isotonic
(non-decreasing) least-squares fit: more weights never predict a faster model, and one
noisy point is averaged with its neighbour instead of lifting the curve.
A ``latency_ms`` budget becomes the FLOPs or params budget the curve predicts, so repair
and every searcher work unchanged; every candidate gets a predicted ``latency_ms`` in its
stats (the ``latency_aware`` fitness and plug-in fitnesses read it), and the report
measures the best model's real latency. Measurements: one thread, the task's example
batch (one sample), warm-up, median of repeated runs
(:func:`searchprune.kernels.median_latency`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.graph import DependencyGraph
from searchprune.core.layers import LayerInfo
from searchprune.core.masks import MaskSet
from searchprune.core.units import CostModel
from searchprune.kernels import compact, median_latency, sparsify
from searchprune.registry import SpecError
from searchprune.space import LayerRatioSpace

RATIOS = {
    "channel": (0.0, 0.2, 0.4, 0.6, 0.8),
    "weight": (0.0, 0.5, 0.8, 0.9, 0.95, 0.98),
}
AXES = {"channel": "flops_fraction", "weight": "params_fraction"}
KERNELS = {"channel": "compact model", "weight": "sparsify auto"}


def measure_ms(model: nn.Module, example: Tensor, repeats: int = 30) -> float:
    """Median latency of ``model`` on ``example`` in milliseconds, on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return 1e3 * median_latency(lambda: model(example), repeats=repeats, warmup=5)
    finally:
        torch.set_num_threads(threads)


def deployed(
    model: nn.Module,
    masks: MaskSet,
    layers: list[LayerInfo],
    graph: DependencyGraph,
    granularity: str,
    example: Tensor,
) -> nn.Module:
    """``model`` pruned by ``masks`` as it runs: compacted at channel granularity, else on
    the fastest kernel per layer for ``example`` (both copies; ``model`` is untouched)."""
    if granularity == "channel":
        return compact(model, masks, layers, graph)
    return sparsify(model, example, masks=masks, format="auto", repeats=5)[0]


def non_decreasing_fit(values: np.ndarray) -> np.ndarray:
    """The least-squares non-decreasing sequence closest to ``values`` (isotonic
    regression by pooling adjacent violators: a point measured slower than the next one
    is averaged with it, so one noisy point does not lift the whole curve)."""
    blocks: list[list[float]] = []  # [mean, count] per pooled block
    for value in values.tolist():
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (mean_b, count_b), (mean_a, count_a) = blocks.pop(), blocks.pop()
            count = count_a + count_b
            blocks.append([(mean_a * count_a + mean_b * count_b) / count, count])
    return np.repeat([mean for mean, _ in blocks], [int(count) for _, count in blocks])


@dataclass(frozen=True)
class LatencyModel:
    """Latency in ms against one cost fraction (``axis``), interpolated between measured
    ``points`` after their non-decreasing fit."""

    axis: str  # "flops_fraction" or "params_fraction"
    kernels: str  # how the measured models ran
    points: tuple[tuple[float, float], ...]  # (fraction, measured ms), fraction ascending

    def to_json(self) -> str:
        """The measured curve as JSON, for the run directory (a resumed run and an export
        reuse it; :meth:`searchprune.rundir.RunDir.save_latency_model` writes it)."""
        return json.dumps({"axis": self.axis, "kernels": self.kernels, "points": self.points})

    @classmethod
    def load(cls, path: Path) -> LatencyModel:
        data = json.loads(path.read_text())
        points = tuple((float(f), float(ms)) for f, ms in data["points"])
        return cls(data["axis"], data["kernels"], points)

    @cached_property
    def _curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The fractions and their fitted latencies (fitted once: predictions run per
        candidate)."""
        fractions, times = np.array(self.points, dtype=np.float64).T
        return fractions, non_decreasing_fit(times)

    def predict(self, fraction: float) -> float:
        """Predicted latency in ms at cost ``fraction`` (held flat beyond the points)."""
        fractions, times = self._curve
        return float(np.interp(fraction, fractions, times))

    def budget(self, target_ms: float) -> Budget:
        """The FLOPs (channel) or params (weight) budget whose predicted latency is
        ``target_ms``: the largest fraction the curve keeps within the target.

        :raises SpecError: when even the first point (the most pruning the space allows,
            every layer at its largest ratio) is predicted slower than the target.
        """
        fractions, times = self._curve
        kind = "flops" if self.axis == "flops_fraction" else "params"
        lowest_fraction, fastest = float(fractions[0]), float(times[0])
        if target_ms < fastest:
            raise SpecError(
                f"budget.latency_ms={target_ms} cannot be met: the measured latency curve "
                f"({self.kernels}) predicts {fastest:.4f} ms at the most pruning the space "
                f"allows (points: {[(round(f, 3), round(ms, 4)) for f, ms in self.points]}). "
                "Raise budget.latency_ms or space.max_ratio."
            )
        fraction = float(fractions[-1])
        if target_ms < times[-1]:
            above = int(np.searchsorted(times, target_ms, side="right"))  # first point slower
            low_f, high_f = fractions[above - 1], fractions[above]
            low_t, high_t = times[above - 1], times[above]
            fraction = float(low_f + (high_f - low_f) * (target_ms - low_t) / (high_t - low_t))
        return Budget(kind, float(min(max(fraction, lowest_fraction), 0.999)))

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
        """Measure the deployed model at uniform ratios up to ``max_ratio`` (the last
        point is the most pruning the space allows)."""
        granularity = cost.granularity
        axis = AXES[granularity]
        decoder = LayerRatioSpace(cost, Budget("flops", 0.999), weight_scores, max_ratio=max_ratio)
        ratios = sorted({r for r in RATIOS[granularity] if r < max_ratio} | {max_ratio})
        points = []
        for ratio in ratios:
            genome = np.full(decoder.dim, ratio)
            masks: MaskSet = decoder.decode(genome)
            fraction = float(cost.fractions(decoder.removed(genome))[axis][0])
            runnable = deployed(model, masks, layers, graph, granularity, example)
            points.append((fraction, measure_ms(runnable, example)))
        return cls(axis, KERNELS[granularity], tuple(sorted(points)))
