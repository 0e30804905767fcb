"""``Problem`` = task + space + budget + fitness: everything needed to score a genome.

The problem holds the task *without* its test split: nothing that scores candidates can
reach test data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.graph import NORM_TYPES, DependencyGraph, build_dependency_graph
from searchprune.core.layers import LayerInfo, discover_layers
from searchprune.core.masks import MaskApplier, MaskSet, parse_granularity
from searchprune.core.stats import mask_stats
from searchprune.core.units import CostModel
from searchprune.criteria import CRITERIA, Criterion
from searchprune.fitness import (
    FitnessContext,
    FitnessError,
    FitnessFn,
    call_fitness,
    resolve_fitness,
)
from searchprune.latency import LatencyModel
from searchprune.space import SPACES, Space, default_max_ratio
from searchprune.tasks.base import Task

_NORMS = NORM_TYPES  # every per-channel norm: masked with its channels, recalibrated


@dataclass
class Evaluation:
    """The score of one candidate: its fitness, metrics (val figures and budget figures)
    and, when a configured penalty replaced a failed fitness, the error."""

    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class Problem:
    """Scores genomes of a :class:`Space` on a task's val split under a budget.

    With a ``latency_ms`` budget or ``predict_latency``, a latency curve is measured when
    the problem is built (:class:`~searchprune.latency.LatencyModel`; ``latency`` passes
    one measured before, as a resumed run does) and every candidate's stats carry its
    predicted ``latency_ms``.
    """

    def __init__(
        self,
        task: Task,
        *,
        budget: Budget,
        fitness: str | FitnessFn = "accuracy",
        space: str = "layer-ratios",
        granularity: str = "weight",
        criterion: str | Criterion = "magnitude",
        min_ratio: float = 0.0,
        max_ratio: float | None = None,
        layer_bounds: Mapping[str, tuple[float, float]] | None = None,
        exclude_output: bool = True,
        exclude: Sequence[str] = (),
        bn_samples: int | None = None,
        penalty: float | None = None,
        device: str = "cpu",
        channels_last: bool = True,
        predict_latency: bool = False,
        latency: LatencyModel | None = None,
    ) -> None:
        self.task = task.without_test()
        self.fitness = resolve_fitness(fitness)
        self.penalty = penalty
        self.device = torch.device(device)
        self.model = self.task.model.to(self.device).eval()
        if channels_last and any(isinstance(m, nn.Conv2d) for m in self.model.modules()):
            # NHWC convolutions ran 2.8x faster on the digits CNN here (1 thread)
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        example = self.task.example_input().to(self.device)
        self.layers: list[LayerInfo] = discover_layers(
            self.model, example, exclude_output=exclude_output, exclude=exclude
        )
        self.graph: DependencyGraph = build_dependency_graph(self.model, example, self.layers)
        self.granularity = parse_granularity(granularity)
        self.cost = CostModel(self.layers, self.graph, self.granularity)
        prunable = [layer for layer in self.layers if layer.prunable]
        self.criterion = criterion
        self.weight_scores = CRITERIA.resolve(criterion)(self.model, prunable, self.task)
        self.latency: LatencyModel | None = None
        if budget.kind == "latency_ms" or predict_latency:
            budget = self._latency_budget(budget, example, max_ratio, latency)
        self.budget = budget
        self.space: Space = SPACES.get(space)(
            self.cost,
            self.budget,
            self.weight_scores,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            layer_bounds=layer_bounds,
        )
        norms = [name for name, module in self.model.named_modules() if isinstance(module, _NORMS)]
        self._maskable = ([layer.name for layer in prunable], norms)
        if bn_samples is None:
            bn_samples = 512 if norms else 0
        self._bn_samples = bn_samples if norms else 0
        self._place()

    def _place(self) -> None:
        """(Re)build what lives on ``self.device``: the applier's dense copies and ranks,
        the val/train tensors and the calibration batch."""
        self.applier = MaskApplier(self.model, *self._maskable)
        self.space.prepare(self.applier)
        self.val = self.task.split("val").to(self.device)
        self.train = self.task.split("train").to(self.device)
        self._bn_batch = self._calibration_batch(self._bn_samples) if self._bn_samples else None

    def to(self, device: str | torch.device) -> Problem:
        """Move the problem (model, data, masking state) to ``device``, in place; a Ray
        actor given a GPU moves its copy there. The model must be dense (no mask applied)."""
        self.applier.restore()
        self.device = torch.device(device)
        self.model.to(self.device)
        self._place()
        return self

    def _latency_budget(
        self,
        budget: Budget,
        example: Tensor,
        max_ratio: float | None,
        measured: LatencyModel | None,
    ) -> Budget:
        """Take the ``measured`` latency curve, or measure one; turn a ``latency_ms``
        budget into the FLOPs or params budget it predicts (others are returned as they
        are)."""
        if measured is None:
            upper = max_ratio if max_ratio is not None else default_max_ratio(self.granularity)
            measured = LatencyModel.fit(
                self.model, self.layers, self.graph, self.cost, self.weight_scores, example, upper
            )
        self.latency = measured
        return measured.budget(budget.target) if budget.kind == "latency_ms" else budget

    def _calibration_batch(self, samples: int) -> Tensor:
        """The first ``samples`` train inputs, in the split's fixed order."""
        parts, count = [], 0
        for inputs, _ in self.train:
            parts.append(inputs)
            count += len(inputs)
            if count >= samples:
                break
        return torch.cat(parts)[:samples].to(self.device)

    @torch.no_grad()
    def _recalibrate(self) -> None:
        """Re-estimate BatchNorm statistics of the masked model on train inputs
        (EagleEye, Li et al. 2020): pruning shifts them, and stale ones mislead fitness."""
        assert self._bn_batch is not None
        norms = [m for m in self.model.modules() if isinstance(m, _NORMS)]
        momenta = [m.momentum for m in norms]
        for module in norms:
            module.reset_running_stats()
            module.momentum = None
            module.train()
        self.applier.mark_stats_changed()
        self.model(self._bn_batch)
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
            module.eval()

    def masked_copy(self, masks: MaskSet) -> nn.Module:
        """A copy of the model as ``masks`` score it (BatchNorm recalibrated if configured)."""
        with self.masked(masks) as model:
            return copy.deepcopy(model)

    @contextmanager
    def masked(self, masks: MaskSet) -> Iterator[nn.Module]:
        """The model with ``masks`` applied (and BatchNorm recalibrated, when configured),
        in eval mode; dense again on exit."""
        try:
            self._apply(masks)
            yield self.model
        finally:
            self.applier.restore()

    def _apply(self, masks: MaskSet) -> None:
        self.applier.apply(masks)
        if self._bn_batch is not None:
            self._recalibrate()

    def _score(
        self, masks: MaskSet | Callable[[], MaskSet], stats: dict[str, float], label: str
    ) -> Evaluation:
        """Score the model as it is now masked; ``masks`` (or a function that builds
        them, called only if the fitness asks) describe it to the fitness."""
        if self._bn_batch is not None:
            self._recalibrate()
        ctx = FitnessContext(
            model=self.model,
            val=self.val,
            train=self.train,
            device=self.device,
            masks=masks,
            stats=stats,
            loss=self.task.loss,
        )
        try:
            fitness, metrics = call_fitness(self.fitness, ctx, label)
        except FitnessError as error:
            if self.penalty is None:
                raise
            return Evaluation(self.penalty, dict(stats), error=str(error))
        return Evaluation(fitness, {**metrics, **stats})

    @torch.inference_mode()
    def score(self, genomes: np.ndarray, labels: Sequence[str]) -> list[Evaluation]:
        """Score repaired genomes ``(P, dim)``; ``labels`` name them in error messages.

        The model is left dense afterwards.
        """
        figures = self.space.figures(genomes)
        removed = self.space.removed(genomes)
        # neighbours in this order differ little, so in-place masking writes little
        order = np.lexsort(removed.T[np.argsort(self.cost.sizes)])
        results: dict[int, Evaluation] = {}
        try:
            for index in order.tolist():
                genome = genomes[index]
                stats = {key: float(values[index]) for key, values in figures.items()}
                stats["flops"] = stats["flops_fraction"] * self.cost.dense_flops
                stats["params"] = stats["params_fraction"] * self.cost.dense_params
                stats = self._with_latency(stats)
                self.space.apply(genome, removed[index], self.applier)
                decode = partial(self.space.decode, genome)
                results[index] = self._score(decode, stats, labels[index])
            return [results[index] for index in range(len(genomes))]
        finally:
            self.applier.restore()

    @torch.inference_mode()
    def score_masks(self, masks: MaskSet, label: str = "masks") -> Evaluation:
        """Score any masks (a baseline's, a loaded file's), with exact statistics."""
        stats = self.exact_stats(masks)
        try:
            self.applier.apply(masks)
            return self._score(masks, stats, label)
        finally:
            self.applier.restore()

    def exact_stats(self, masks: MaskSet) -> dict[str, float]:
        """Exact sparsity, FLOPs and params of ``masks`` (dead units included)."""
        exact = mask_stats(masks, self.layers, self.graph)
        stats = {
            "sparsity": exact.sparsity,
            "flops_fraction": exact.flops_fraction,
            "params_fraction": exact.params_fraction,
            "flops": float(exact.flops),
            "params": float(exact.params),
        }
        return self._with_latency(stats)

    def _with_latency(self, stats: dict[str, float]) -> dict[str, float]:
        """``stats`` with the predicted ``latency_ms`` added, when latency is measured."""
        if self.latency is not None:
            stats["latency_ms"] = self.latency.predict(stats[self.latency.axis])
        return stats

    def layer_density(self, masks: MaskSet) -> dict[str, float]:
        """Kept fraction of each prunable layer's weights (dead weights count as removed)."""
        density = mask_stats(masks, self.layers, self.graph).layer_density
        return {layer.name: density[layer.name] for layer in self.layers if layer.prunable}

    def dense(self) -> MaskSet:
        """Masks that keep everything (the dense model)."""
        return MaskSet(self.granularity)
