"""``Problem`` = task + space + budget + fitness: everything needed to score a genome.

The problem holds the task *without* its test split: nothing that scores candidates can
reach test data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

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
from searchprune.registry import SpecError
from searchprune.space import SPACES, Space, check_space_settings, default_max_ratio
from searchprune.tasks.base import Split, Task

_NORMS = NORM_TYPES  # every per-channel norm: masked with its channels, recalibrated


def _head(split: Split, count: int) -> Split:
    """The first ``count`` samples of ``split``, in its order, as one tensor split."""
    if split.tensors is not None:
        inputs, targets = split.tensors
        return Split((inputs[:count], targets[:count]), split.batch_size)
    parts: list[tuple[Tensor, Tensor]] = []
    taken = 0
    for inputs, targets in split:
        parts.append((inputs, targets))
        taken += len(targets)
        if taken >= count:
            break
    inputs = torch.cat([part[0] for part in parts])[:count]
    targets = torch.cat([part[1] for part in parts])[:count]
    return Split((inputs, targets), split.batch_size)


@dataclass
class Evaluation:
    """The score of one candidate: its fitness, metrics (val figures and budget figures)
    and, when a configured penalty replaced a failed fitness, the error."""

    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Fidelity:
    """Multi-fidelity scoring of a batch, as one rung of successive halving (Jamieson &
    Talwalkar 2016; Li et al. 2017, Hyperband): every candidate is scored on the first
    ``shard`` of the val split (BatchNorm recalibrated on the same share of the
    calibration samples), and only the best ``promote`` share of the batch (at least
    one) is scored again on all of it. The others keep their shard fitness, marked by
    ``metrics["fidelity"] = shard``; promoted ones carry ``fidelity = 1``. Each
    candidate's ``forward_samples`` counts the samples its forward passes took."""

    shard: float
    promote: float

    def __post_init__(self) -> None:
        if not 0.0 < self.shard < 1.0 or not 0.0 < self.promote <= 1.0:
            raise SpecError(
                f"evaluator.fidelity: shard={self.shard} must be in (0, 1) and "
                f"promote={self.promote} in (0, 1]"
            )


class Problem:
    """Scores genomes of a :class:`Space` on a task's val split under a budget.

    With a ``latency_ms`` budget or ``predict_latency``, a latency curve is measured when
    the problem is built (:class:`~searchprune.latency.LatencyModel`; ``latency`` passes
    one measured before, as a resumed run does) and every candidate's stats carry its
    predicted ``latency_ms``. ``space_settings`` are the space's own settings (``width``
    of ``reference-ratios``, ``knots`` of ``depth-schedule``). With ``fidelity``, batches
    are scored at two fidelities (:class:`Fidelity`). With ``selection_samples``, that
    many train samples after the calibration ones (so never the same ones) form a
    ``selection`` split on which :meth:`score` can re-score the top candidates before
    the best is picked; like the rest of train, the model has seen them in training
    (EagleEye, Li et al. 2020, also scores candidates on a train subset), and no test
    sample is ever among them.
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
        space_settings: Mapping[str, Any] | None = None,
        fidelity: Fidelity | None = None,
        selection_samples: int = 0,
    ) -> None:
        self.task = task.without_test()
        self.fidelity = fidelity
        self._selection_samples = selection_samples
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
        check_space_settings(space, space_settings or {})
        norms = [name for name, module in self.model.named_modules() if isinstance(module, _NORMS)]
        self._maskable = ([layer.name for layer in prunable], norms)
        self.space: Space = SPACES.get(space)(
            self.cost,
            self.budget,
            self.weight_scores,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            layer_bounds=layer_bounds,
            droppable=self.droppable_units(),
            **(space_settings or {}),
        )
        if bn_samples is None:
            bn_samples = 512 if norms else 0
        self._bn_samples = bn_samples if norms else 0
        self._place()

    @torch.inference_mode()
    def droppable_units(self) -> np.ndarray:
        """Which units (channel groups) the network can lose whole: with every channel of
        the unit removed, two different val inputs still give different outputs, so some
        path (a residual shortcut) bypasses it. Removing a residual branch's inner conv
        drops the block, which deep residual networks survive (Veit et al. 2016); removing
        a plain layer cuts the network. All False at weight granularity."""
        droppable = np.zeros(len(self.cost.units), dtype=bool)
        inputs = self.task.split("val").first_batch()[0][:2].to(self.device)
        if self.granularity != "channel" or len(inputs) < 2:
            return droppable
        applier = MaskApplier(self.model, *self._maskable)
        try:
            for u, unit in enumerate(self.cost.units):
                keep = [torch.ones(other.size, dtype=torch.bool) for other in self.cost.units]
                keep[u] = torch.zeros(unit.size, dtype=torch.bool)
                applier.apply(self.cost.channel_masks(keep))
                outputs = self.model(inputs)
                droppable[u] = not torch.equal(outputs[0], outputs[1])
        finally:
            applier.restore()
        return droppable

    def _place(self) -> None:
        """(Re)build what lives on ``self.device``: the applier's dense copies and ranks,
        the val/train tensors and the calibration batch."""
        self.applier = MaskApplier(self.model, *self._maskable)
        self.space.prepare(self.applier)
        self.val = self.task.split("val").to(self.device)
        self.train = self.task.split("train").to(self.device)
        self._bn_batch = self._calibration_batch(self._bn_samples) if self._bn_samples else None
        self._rungs = {"val": (self.val, self._bn_batch)}
        if self.fidelity is not None:
            shard = _head(self.val, math.ceil(self.fidelity.shard * len(self.val)))
            calibration = self._bn_batch
            if calibration is not None:
                calibration = calibration[: math.ceil(self.fidelity.shard * len(calibration))]
            self._rungs["shard"] = (shard, calibration)
        if self._selection_samples:
            self._rungs["selection"] = (self._selection_split(), self._bn_batch)

    def _selection_split(self) -> Split:
        """The ``selection_samples`` train samples after the calibration ones."""
        skip = self._bn_samples
        head = _head(self.train, skip + self._selection_samples).tensors
        assert head is not None
        inputs, targets = head
        if len(inputs) <= skip:
            raise SpecError(
                f"selection.samples={self._selection_samples}: the train split has "
                f"{len(inputs)} samples and BatchNorm calibration uses the first {skip}, "
                "which leaves none to select on; lower fitness.bn_samples or turn selection "
                "off (selection.top_k: 0)"
            )
        return Split((inputs[skip:], targets[skip:]), self.task.batch_size)

    @property
    def selection(self) -> Split | None:
        """The selection split (None unless ``selection_samples`` was given)."""
        return self._rungs["selection"][0] if "selection" in self._rungs else None

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
    def _recalibrate(self, batch: Tensor | None = None) -> None:
        """Re-estimate BatchNorm statistics of the masked model on train inputs
        (EagleEye, Li et al. 2020): pruning shifts them, and stale ones mislead fitness.
        ``batch`` defaults to the calibration batch."""
        batch = self._bn_batch if batch is None else batch
        assert batch is not None
        norms = [m for m in self.model.modules() if isinstance(m, _NORMS)]
        momenta = [m.momentum for m in norms]
        for module in norms:
            module.reset_running_stats()
            module.momentum = None
            module.train()
        self.applier.mark_stats_changed()
        self.model(batch)
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
        self,
        masks: MaskSet | Callable[[], MaskSet],
        stats: dict[str, float],
        label: str,
        rung: str = "val",
    ) -> Evaluation:
        """Score the model as it is now masked, on ``rung``'s split (``val``, its
        ``shard`` or the ``selection`` split); ``masks`` (or a function that builds
        them, called only if the fitness asks) describe it to the fitness."""
        split, calibration = self._rungs[rung]
        if calibration is not None:
            self._recalibrate(calibration)
        ctx = FitnessContext(
            model=self.model,
            val=split,
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
    def score(
        self, genomes: np.ndarray, labels: Sequence[str], split: str = "val"
    ) -> list[Evaluation]:
        """Score repaired genomes ``(P, dim)``; ``labels`` name them in error messages.

        ``split`` is ``val`` (at two fidelities when the problem has a :class:`Fidelity`)
        or ``selection``. The model is left dense afterwards.
        """
        if split not in ("val", "selection") or split not in self._rungs:
            raise ValueError(f"this problem scores on {sorted(self._rungs)}, not {split!r}")
        if split == "selection" or self.fidelity is None:
            return self._score_rung(genomes, labels, split)
        low = self._score_rung(genomes, labels, "shard")
        count = max(1, math.ceil(self.fidelity.promote * len(genomes)))
        promoted = np.argsort([-e.fitness for e in low], kind="stable")[:count]
        high = self._score_rung(genomes[promoted], [labels[i] for i in promoted], "val")
        spent = {name: self._samples(name) for name in ("shard", "val")}
        for evaluation in low:
            evaluation.metrics.update(fidelity=self.fidelity.shard, forward_samples=spent["shard"])
        for index, evaluation in zip(promoted.tolist(), high, strict=True):
            evaluation.metrics.update(
                fidelity=1.0, forward_samples=spent["shard"] + spent["val"]
            )
            low[index] = evaluation
        return low

    def _samples(self, rung: str) -> float:
        """Samples one candidate's forward passes take on ``rung``: calibration and split."""
        split, calibration = self._rungs[rung]
        return float(len(split) + (len(calibration) if calibration is not None else 0))

    def _score_rung(
        self, genomes: np.ndarray, labels: Sequence[str], rung: str
    ) -> list[Evaluation]:
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
                results[index] = self._score(decode, stats, labels[index], rung)
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
