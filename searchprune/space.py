"""Search spaces: how a searcher sees a candidate, and how it becomes a :class:`MaskSet`.

``layer-ratios``
    One real gene per unit (layer at weight granularity, channel group at channel
    granularity): the fraction of the unit to remove. Inside each unit, elements are
    removed in the order of a criterion's scores (magnitude by default), as in AMC
    (He et al. 2018), where the agent picks per-layer ratios and magnitude picks the
    weights.
``binary``
    One bit per channel/unit (1 = keep), as in GA channel pruning (Hu et al. 2018).

Both spaces *repair* any genome so that its decoded masks meet the budget exactly: the
result meets the budget, and giving back one element in every unit would break it. In
``"bound"`` mode (:data:`BudgetMode`, chosen by the searcher: multi-objective searchers
explore cheaper candidates too) only genomes over the budget are repaired.
Repair works on whole batches of genomes at once (it runs per candidate, so it is on
the hot path).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskApplier, MaskSet
from searchprune.core.units import CostModel, Unit
from searchprune.criteria import channel_scores
from searchprune.registry import Registry, SpecError

_EPS = 1e-6

BudgetMode = Literal["exact", "bound"]
"""How repair treats a genome: ``"exact"`` moves every genome onto the budget,
``"bound"`` only those over it."""


def check_budget_mode(mode: str) -> None:
    """:raises ValueError: for a mode other than ``"exact"`` or ``"bound"``."""
    if mode not in get_args(BudgetMode):
        raise ValueError(f"budget mode must be one of {get_args(BudgetMode)}, got {mode!r}")


class BudgetError(SpecError):
    """A budget that cannot be met within the space's bounds."""


def _rank(scores: Tensor) -> Tensor:
    """Position of each element in ascending score order (ties broken by index)."""
    flat = scores.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    rank = torch.empty_like(order, dtype=torch.int32)
    rank[order] = torch.arange(len(order), dtype=torch.int32)
    return rank.view(scores.shape)


class BudgetRepair:
    """Maps per-unit ratios to removed counts that meet a budget exactly.

    A unit keeps at least one element, unless it is ``droppable`` (the network can lose
    it whole, as a residual branch's inner conv) and its upper bound is 1.

    Ratios are shifted in logit space by one common offset ``t`` (so their order and
    relative shape are kept), clipped to each unit's bounds, and rounded to counts; the
    smallest ``t`` whose counts meet the budget is found by a vectorized grid search.
    """

    def __init__(
        self,
        cost: CostModel,
        budget: Budget,
        lower: np.ndarray,
        upper: np.ndarray,
        droppable: np.ndarray | None = None,
    ) -> None:
        self.cost, self.budget = cost, budget
        sizes = cost.sizes
        self.k_min = np.ceil(lower * sizes - 1e-9)
        most = np.floor(upper * sizes + 1e-9)
        whole = np.zeros(len(sizes), dtype=bool) if droppable is None else droppable
        self.k_max = np.where(whole, most, np.minimum(most, sizes - 1))
        best = float(cost.fractions(self.k_max)[budget.stat])
        if not budget.met_by(best):
            word = "at least" if budget.removes else "at most"
            raise BudgetError(
                f"budget.{budget.kind}={budget.target} cannot be met: removing the most each "
                f"layer allows (space.max_ratio and space.layer_bounds) reaches "
                f"{budget.stat} {best:.4f}, and the budget asks for {word} {budget.target}. "
                f"Relax budget.{budget.kind} or raise space.max_ratio.{cost.frozen_note()}"
            )

    def met(self, removed: np.ndarray) -> np.ndarray:
        value = self.cost.fractions(removed)[self.budget.stat]
        return (
            value >= self.budget.target - 1e-12
            if self.budget.removes
            else (value <= self.budget.target + 1e-12)
        )

    def least_count(self, removed: np.ndarray, unit: int) -> np.ndarray:
        """For each row of ``removed`` ``(P, U)``: the least count of ``unit`` in
        ``[k_min, k_max]`` with which the row meets the budget, the other units as they
        are (``k_max`` where none does). Removing more never un-meets a budget, so this
        is a bisection, vectorized over the rows."""
        trial = np.array(removed, dtype=np.float64, ndmin=2)
        low = np.full(len(trial), self.k_min[unit])
        high = np.full(len(trial), self.k_max[unit])
        while (low < high).any():
            middle = np.floor((low + high) / 2)
            trial[:, unit] = middle
            ok = self.met(trial)
            high = np.where(ok & (low < high), middle, high)
            low = np.where(~ok & (low < high), middle + 1, low)
        return low

    def _counts(self, logits: np.ndarray, shift: np.ndarray) -> np.ndarray:
        ratios = 1.0 / (1.0 + np.exp(-(logits[:, None, :] + shift[..., None])))
        return np.clip(np.round(ratios * self.cost.sizes), self.k_min, self.k_max)

    def removed_counts(self, ratios: np.ndarray, mode: BudgetMode = "exact") -> np.ndarray:
        """Counts ``(P, U)`` meeting the budget for ratio genomes ``(P, U)``: exactly on it,
        or, in ``"bound"`` mode, as they are for genomes already within it."""
        check_budget_mode(mode)
        if mode == "exact":
            return self._exact_counts(ratios)
        direct = np.clip(np.round(ratios * self.cost.sizes), self.k_min, self.k_max)
        within = self.met(direct)
        if not within.all():
            direct[~within] = self._exact_counts(ratios[~within])
        return direct

    def _exact_counts(self, ratios: np.ndarray) -> np.ndarray:
        logits = _logit(ratios)
        return self._counts(logits, self.shifts(logits)[:, None])[:, 0]

    def shifts(self, logits: np.ndarray) -> np.ndarray:
        """For each row of unit logits ``(P, U)``, the smallest common shift ``t`` (to
        within one count) whose clipped, rounded counts meet the budget."""
        n = len(logits)
        low, high = np.full(n, -40.0), np.full(n, 40.0)
        steps = np.linspace(0.0, 1.0, 33)
        for _ in range(12):
            grid = low[:, None] + (high - low)[:, None] * steps  # (P, G)
            counts = self._counts(logits, grid)  # (P, G, U)
            ok = self.met(counts)
            ok[:, -1] = True
            first = ok.argmax(axis=1)
            rows = np.arange(n)
            at_low = first == 0
            previous = np.maximum(first - 1, 0)
            done = at_low | (np.abs(counts[rows, first] - counts[rows, previous]).max(axis=1) <= 1)
            high = grid[rows, first]
            low = np.where(at_low, low, grid[rows, previous])
            if done.all():
                break
        return high

    def global_counts(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        """Counts ``(U,)`` that remove the lowest-scored elements of the whole network,
        one threshold across units (as global magnitude pruning does, Han et al. 2015),
        each unit within ``[k_min, k_max]``: the fewest such removals that meet the
        budget. ``scores`` holds one score array per unit."""
        ordered = [np.sort(np.asarray(unit, dtype=np.float64)) for unit in scores]
        base = self.k_min.copy()
        eligible = [
            part[int(low) : int(high)]
            for part, low, high in zip(ordered, self.k_min, self.k_max, strict=True)
        ]
        owner = np.concatenate([np.full(len(e), u) for u, e in enumerate(eligible)])
        owner = owner[np.argsort(np.concatenate(eligible), kind="stable")].astype(np.int64)

        def removed(taken: int) -> np.ndarray:
            return base + np.bincount(owner[:taken], minlength=len(base))

        low, high = 0, len(owner)  # taking every eligible element reaches k_max: met
        while low < high:
            middle = (low + high) // 2
            if self.met(removed(middle)[None, :])[0]:
                high = middle
            else:
                low = middle + 1
        return removed(high)


def _logit(ratios: np.ndarray) -> np.ndarray:
    clipped = np.clip(ratios, _EPS, 1.0 - _EPS)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class Space(ABC):
    """A genome encoding: sampling, budget repair and decoding into masks."""

    name: str
    kind: str  # "real" or "binary"

    def __init__(
        self,
        cost: CostModel,
        budget: Budget,
        weight_scores: Mapping[str, Tensor],
        *,
        min_ratio: float = 0.0,
        max_ratio: float | None = None,
        layer_bounds: Mapping[str, tuple[float, float]] | None = None,
        droppable: np.ndarray | None = None,
    ) -> None:
        self.cost, self.budget = cost, budget
        self.units: list[Unit] = cost.units
        self._unit_names = [unit.name for unit in self.units]
        self.granularity = cost.granularity
        self.droppable = (
            np.zeros(len(self.units), dtype=bool) if droppable is None else np.asarray(droppable)
        )
        self.lower, self.upper = self._bounds(min_ratio, max_ratio, layer_bounds or {})
        self.repairer = self._repairer()
        if self.granularity == "weight":
            self.unit_scores = [weight_scores[unit.name].reshape(-1) for unit in self.units]
        else:
            self.unit_scores = [channel_scores(dict(weight_scores), unit) for unit in self.units]
        self._ranks = [
            _rank(weight_scores[unit.name]) if self.granularity == "weight" else _rank(scores)
            for unit, scores in zip(self.units, self.unit_scores, strict=True)
        ]

    def _bounds(
        self,
        min_ratio: float,
        max_ratio: float | None,
        layer_bounds: Mapping[str, tuple[float, float]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-unit ratio bounds; without ``max_ratio``, the granularity's default, and 1
        for a unit the network can lose whole."""
        most = max_ratio if max_ratio is not None else default_max_ratio(self.granularity)
        if not 0.0 <= min_ratio <= most <= 1.0:
            raise SpecError(
                f"space.min_ratio={min_ratio} and space.max_ratio={most} must satisfy "
                "0 <= min_ratio <= max_ratio <= 1"
            )
        lower = np.full(len(self.units), float(min_ratio))
        upper = np.full(len(self.units), float(most))
        if max_ratio is None:
            upper[self.droppable] = 1.0
        known = {layer for unit in self.units for layer in unit.layers}
        for layer, (low, high) in layer_bounds.items():
            if layer not in known:
                raise SpecError(
                    f"space.layer_bounds names {layer!r}, which is not a prunable layer; "
                    f"prunable layers: {sorted(known)}"
                )
            for u, unit in enumerate(self.units):
                if layer in unit.layers:
                    lower[u], upper[u] = low, high
        return lower, upper

    def _repairer(self) -> BudgetRepair:
        return BudgetRepair(self.cost, self.budget, self.lower, self.upper, self.droppable)

    @property
    def dim(self) -> int:
        """Length of a genome."""
        return len(self.units) if self.kind == "real" else int(self.cost.sizes.sum())

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` random (unrepaired) genomes, shape ``(n, dim)``."""

    @abstractmethod
    def repair(self, genomes: np.ndarray, mode: BudgetMode = "exact") -> np.ndarray:
        """Genomes ``(P, dim)`` moved to the nearest point that meets the budget: every
        genome onto it (``mode="exact"``), or only those over it (``"bound"``)."""

    @abstractmethod
    def removed(self, genomes: np.ndarray) -> np.ndarray:
        """Removed counts per unit ``(P, U)`` of repaired genomes."""

    @abstractmethod
    def decode(self, genome: np.ndarray) -> MaskSet:
        """The masks of one repaired genome."""

    @abstractmethod
    def encode(self, masks: MaskSet) -> np.ndarray:
        """The genome ``(dim,)`` that describes ``masks`` (a baseline's, say) as closely as
        this space can: the allocation (each unit's removed share) for ratio spaces, the
        very channels for ``binary``. Not repaired."""

    def unit_keeps(self, masks: MaskSet) -> list[np.ndarray]:
        """Each unit's keep-mask over its elements (weights, or channel elements), read
        from ``masks``; a unit ``masks`` does not mention is kept whole."""
        keeps = []
        for unit in self.units:
            name = unit.layers[0]
            if self.granularity == "weight":
                if name in masks.weights:
                    keep = masks.weights[name].reshape(-1)
                elif name in masks.channels:  # channel masks spread over each row's weights
                    rows = masks.channels[name]
                    keep = rows.repeat_interleave(unit.size // len(rows))
                else:
                    keep = torch.ones(unit.size, dtype=torch.bool)
            elif name in masks.channels:
                keep = unit.per_element(name, masks.channels[name].float()) >= 0.5
            else:
                keep = torch.ones(unit.size, dtype=torch.bool)
            keeps.append(keep.cpu().numpy().astype(bool))
        return keeps

    def unit_removed(self, masks: MaskSet) -> np.ndarray:
        """Removed elements per unit ``(U,)`` of ``masks``."""
        return np.array([float((~keep).sum()) for keep in self.unit_keeps(masks)])

    def prepare(self, applier: MaskApplier) -> None:  # noqa: B027 (optional hook)
        """Register with ``applier`` what :meth:`apply` needs (called once)."""

    def apply(self, genome: np.ndarray, removed: np.ndarray, applier: MaskApplier) -> None:
        """Apply one repaired genome's masks to the model in place (the hot path);
        ``removed`` is its row of :meth:`removed`."""
        applier.apply(self.decode(genome))

    def figures(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        """Count-model sparsity, FLOPs and params fractions of repaired genomes."""
        return self.cost.fractions(self.removed(genomes))

    def _channel_masks(self, keep: list[Tensor]) -> MaskSet:
        return self.cost.channel_masks(keep)


SPACES: Registry[type[Space]] = Registry("space", "space.name")


_COMMON = (
    "cost",
    "budget",
    "weight_scores",
    "min_ratio",
    "max_ratio",
    "layer_bounds",
    "droppable",
)


def space_settings(name: str) -> list[str]:
    """The settings of space ``name`` beyond the ones every space takes (``width`` of
    ``reference-ratios``, ``knots`` of ``depth-schedule``): its ``space.<key>`` keys."""
    parameters = inspect.signature(SPACES.get(name).__init__).parameters
    return [
        key
        for key, parameter in parameters.items()
        if key != "self" and key not in _COMMON and parameter.kind == parameter.KEYWORD_ONLY
    ]


def check_space_settings(name: str, settings: Mapping[str, object]) -> None:
    """:raises SpecError: naming ``space.<key>`` for a setting space ``name`` does not take."""
    known = space_settings(name)
    for key in settings:
        if key not in known:
            offer = f"its settings: {', '.join(known)}" if known else "it takes none"
            raise SpecError(f"space.{key}: the {name} space has no setting {key!r}; {offer}")


def default_max_ratio(granularity: str) -> float:
    """The most of a layer a space removes unless ``space.max_ratio`` says otherwise:
    0.99 of its weights, 0.9 of its channels (a layer keeps a tenth of its units); a
    channel group the network can lose whole (``droppable``: a residual branch's inner
    conv, found by :meth:`Problem.droppable_units`) may be removed entirely."""
    return 0.99 if granularity == "weight" else 0.9


@SPACES.register(
    "layer-ratios", "a pruning ratio per layer (or channel group), ranked by a criterion"
)
class LayerRatioSpace(Space):
    """Per-unit pruning ratios in ``[lower, upper]``; see the module docstring."""

    name, kind = "layer-ratios", "real"

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.lower, self.upper, size=(n, self.dim))

    def repair(self, genomes: np.ndarray, mode: BudgetMode = "exact") -> np.ndarray:
        genomes = np.atleast_2d(np.asarray(genomes, dtype=np.float64))
        return self.repairer.removed_counts(genomes, mode) / self.cost.sizes

    def removed(self, genomes: np.ndarray) -> np.ndarray:
        return np.round(np.atleast_2d(genomes) * self.cost.sizes)

    def prepare(self, applier: MaskApplier) -> None:
        if self.granularity == "weight":
            applier.set_orders(
                {
                    unit.name: torch.argsort(rank.reshape(-1))
                    for unit, rank in zip(self.units, self._ranks, strict=True)
                }
            )

    def apply(self, genome: np.ndarray, removed: np.ndarray, applier: MaskApplier) -> None:
        """At weight granularity, zero each layer's lowest-ranked weights through
        :meth:`MaskApplier.apply_ranked`, which writes only what changed since the
        previous candidate (no mask is built)."""
        if self.granularity != "weight":
            super().apply(genome, removed, applier)
            return
        applier.apply_ranked(
            dict(zip(self._unit_names, removed.astype(np.int64).tolist(), strict=True)),
        )

    def decode(self, genome: np.ndarray) -> MaskSet:
        removed = self.removed(genome)[0].astype(np.int64)
        if self.granularity == "weight":
            return MaskSet(
                "weight",
                weights={
                    unit.name: rank >= int(k)
                    for unit, rank, k in zip(self.units, self._ranks, removed, strict=True)
                },
            )
        return self._channel_masks(
            [rank >= int(k) for rank, k in zip(self._ranks, removed, strict=True)]
        )

    def encode(self, masks: MaskSet) -> np.ndarray:
        """Each unit's removed share in ``masks``, clipped to the space's bounds."""
        return np.clip(self.unit_removed(masks) / self.cost.sizes, self.lower, self.upper)


@SPACES.register("binary", "one keep-bit per channel/unit (channel granularity)")
class BinarySpace(Space):
    """One bit per channel of every prunable group (1 = keep); see the module docstring."""

    name, kind = "binary", "binary"

    def __init__(
        self, cost: CostModel, budget: Budget, weight_scores: Mapping[str, Tensor], **bounds: object
    ) -> None:
        if cost.granularity != "channel":
            raise SpecError(
                "space.name=binary needs space.granularity: channel (one bit per channel or "
                "unit); use space.name: layer-ratios for weight granularity"
            )
        super().__init__(cost, budget, weight_scores, **bounds)  # type: ignore[arg-type]
        self._offsets = np.concatenate([[0], np.cumsum(cost.sizes.astype(np.int64))])
        self._score_rank = [rank.numpy().astype(np.int64) for rank in self._ranks]

    def _slices(self) -> list[slice]:
        return [
            slice(int(a), int(b))
            for a, b in zip(self._offsets[:-1], self._offsets[1:], strict=True)
        ]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        keep_probability = rng.uniform(0.05, 0.95, size=(n, 1))
        return rng.random((n, self.dim)) < keep_probability

    def removed(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(genomes).astype(bool)
        return np.stack([(~genomes[:, s]).sum(axis=1) for s in self._slices()], axis=1).astype(
            np.float64
        )

    def repair(self, genomes: np.ndarray, mode: BudgetMode = "exact") -> np.ndarray:
        """Meet the budget by pruning the lowest-scored kept channels of a unit, or by
        restoring its highest-scored pruned ones, as few as the budget requires."""
        genomes = np.atleast_2d(genomes).astype(bool)
        targets = self.repairer.removed_counts(self.removed(genomes) / self.cost.sizes, mode)
        repaired = np.empty_like(genomes)
        for u, part in enumerate(self._slices()):
            bits = genomes[:, part]
            size = bits.shape[1]
            priority = bits * size + self._score_rank[u][None, :]  # pruned first, low score first
            order = np.argsort(priority, axis=1, kind="stable")
            position = np.argsort(order, axis=1, kind="stable")
            repaired[:, part] = position >= targets[:, u : u + 1]
        return repaired

    def encode(self, masks: MaskSet) -> np.ndarray:
        """The keep-bits of ``masks``' channels."""
        return np.concatenate(self.unit_keeps(masks))

    def decode(self, genome: np.ndarray) -> MaskSet:
        bits = np.asarray(genome, dtype=bool)
        return self._channel_masks([torch.from_numpy(bits[s].copy()) for s in self._slices()])


@SPACES.register(
    "reference-ratios",
    "per-unit ratios within space.width of the criterion's global allocation",
)
class ReferenceRatioSpace(LayerRatioSpace):
    """Per-unit pruning ratios in a box around a reference allocation.

    The reference is what one global threshold on the space's criterion removes at the
    budget (global magnitude pruning, Han et al. 2015, with each unit held within its
    bounds): a strong allocation on deep networks, where a random allocation of 20-100
    ratios almost never is. Each ratio may move ``width`` either way from it (within
    the bounds), so every genome the space samples is a perturbation of the reference,
    the box's centre (where CMA-ES starts its mean): the search refines the heuristic's
    allocation instead of rediscovering it, a trust region around a known-good point
    (as in AutoML for model compression that starts from a rule, He et al. 2018).
    Genomes, repair and decoding are those of ``layer-ratios``.
    """

    name = "reference-ratios"

    def __init__(
        self,
        cost: CostModel,
        budget: Budget,
        weight_scores: Mapping[str, Tensor],
        *,
        width: float = 0.2,
        min_ratio: float = 0.0,
        max_ratio: float | None = None,
        layer_bounds: Mapping[str, tuple[float, float]] | None = None,
        droppable: np.ndarray | None = None,
    ) -> None:
        super().__init__(
            cost,
            budget,
            weight_scores,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            layer_bounds=layer_bounds,
            droppable=droppable,
        )
        if not 0.0 < width <= 1.0:
            raise SpecError(f"space.width={width} must be in (0, 1]: how far a ratio may move")
        scores = [unit.numpy() for unit in self.unit_scores]
        self.reference = self.repairer.global_counts(scores) / cost.sizes
        self.lower = np.maximum(self.lower, self.reference - width)
        self.upper = np.minimum(self.upper, self.reference + width)
        self.repairer = self._repairer()


@SPACES.register(
    "depth-schedule",
    "space.knots pruning ratios over depth, interpolated for every unit",
)
class DepthScheduleSpace(LayerRatioSpace):
    """A pruning-ratio schedule over depth: ``knots`` genes, whatever the depth.

    Knot ``j`` is the ratio at relative depth ``j / (knots - 1)``; each unit's ratio is
    the knots' linear interpolation, in logit space, at the unit's depth (the mean
    position of its layers in execution order, so a residual stream sits mid-stage).
    A schedule of a few numbers is how allocations are often described by hand (prune
    deeper layers more, or less; Li et al. 2017 measure per-depth sensitivity), and it
    keeps the search's dimension fixed as networks deepen, at the cost of not treating
    two units at the same depth differently.

    Repair shifts every knot by one common logit offset, which shifts every unit's
    logit by the same offset: the budget repair of ``layer-ratios``, so repaired knots
    decode onto the budget (they may leave the knots' range; each unit's count stays
    within its own bounds). :meth:`encode` fits knots to an allocation by least squares
    in logit space. Units are decoded (and applied) as in ``layer-ratios``.
    """

    name = "depth-schedule"

    def __init__(
        self,
        cost: CostModel,
        budget: Budget,
        weight_scores: Mapping[str, Tensor],
        *,
        knots: int = 5,
        min_ratio: float = 0.0,
        max_ratio: float | None = None,
        layer_bounds: Mapping[str, tuple[float, float]] | None = None,
        droppable: np.ndarray | None = None,
    ) -> None:
        super().__init__(
            cost,
            budget,
            weight_scores,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            layer_bounds=layer_bounds,
            droppable=droppable,
        )
        if knots < 2:
            raise SpecError(f"space.knots={knots} must be at least 2 (a line over depth)")
        self.knots = knots
        order = {name: i for i, name in enumerate(cost.graph.rows)}
        depth = np.array([np.mean([order[name] for name in unit.layers]) for unit in self.units])
        span = depth.max() - depth.min()
        self.depth = (depth - depth.min()) / span if span > 0 else np.zeros(len(depth))
        # hat functions: each unit's row holds its two neighbouring knots' weights
        position = self.depth * (knots - 1)
        left = np.minimum(np.floor(position).astype(np.int64), knots - 2)
        right_share = position - left
        self.interpolation = np.zeros((len(self.units), knots))
        rows = np.arange(len(self.units))
        self.interpolation[rows, left] = 1.0 - right_share
        self.interpolation[rows, left + 1] = right_share
        self.unit_lower, self.unit_upper = self.lower, self.upper
        self.lower = np.full(knots, float(self.unit_lower.min()))
        self.upper = np.full(knots, float(self.unit_upper.max()))

    @property
    def dim(self) -> int:
        return self.knots

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.lower, self.upper, size=(n, self.dim))

    def _unit_logits(self, genomes: np.ndarray) -> np.ndarray:
        return _logit(np.atleast_2d(np.asarray(genomes, dtype=np.float64))) @ self.interpolation.T

    def removed(self, genomes: np.ndarray) -> np.ndarray:
        ratios = _sigmoid(self._unit_logits(genomes))
        return np.clip(
            np.round(ratios * self.cost.sizes), self.repairer.k_min, self.repairer.k_max
        )

    def repair(self, genomes: np.ndarray, mode: BudgetMode = "exact") -> np.ndarray:
        check_budget_mode(mode)
        genomes = np.atleast_2d(np.asarray(genomes, dtype=np.float64))
        knots = _logit(genomes)
        todo = np.ones(len(genomes), dtype=bool)
        if mode == "bound":
            todo = ~self.repairer.met(self.removed(genomes))
        if not todo.any():
            return genomes.copy()
        shift = np.zeros(len(genomes))
        shift[todo] = self.repairer.shifts(knots[todo] @ self.interpolation.T)
        nudge = np.full(len(genomes), 1e-9)
        while True:  # floating point may round a count the other way after the shift
            repaired = _sigmoid(knots + shift[:, None])
            short = todo & ~self.repairer.met(self.removed(repaired))
            if not short.any():
                break
            shift[short] += nudge[short]
            nudge[short] *= 4.0
        repaired[~todo] = genomes[~todo]
        return repaired

    def encode(self, masks: MaskSet) -> np.ndarray:
        """The knots whose interpolation is closest, in logit space, to each unit's
        removed share in ``masks`` (least squares), clipped to the knots' range."""
        shares = np.clip(self.unit_removed(masks) / self.cost.sizes, 0.01, 0.99)
        fitted, *_ = np.linalg.lstsq(self.interpolation, _logit(shares), rcond=None)
        return np.clip(_sigmoid(fitted), self.lower, self.upper)
