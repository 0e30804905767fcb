"""Structured training-time pruning: budget-aware L0 gates and group lasso.

``l0-bar``: Budget-Aware Regularization (Lemaire, Achkar & Jodoin 2019, "Structured
Pruning of Neural Networks with Budget-Aware Regularization") on the hard-concrete L0
gates of Louizos, Welling & Kingma 2018 ("Learning Sparse Neural Networks through L0
Regularization"). ``group-lasso``: filter-wise group lasso (Wen et al. 2016, "Learning
Structured Sparsity in Deep Neural Networks").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.masks import apply_masks
from searchprune.core.units import CostModel, Unit
from searchprune.problem import Problem
from searchprune.pruners.base import METHODS, MethodResult
from searchprune.pruners.oneshot import global_masks_from_scores
from searchprune.pruners.training import TrainingMethod, TrainingParams, trained_copy

TEMPERATURE = 2.0 / 3.0
STRETCH = (-0.1, 1.1)
_GATES = "_l0_gates"


def hard_concrete_sample(log_alpha: Tensor) -> Tensor:
    """A reparameterized hard-concrete sample (Louizos et al. 2018, eq. 10):
    ``s = σ((log u - log(1 - u) + log α) / β)``, ``z = min(1, max(0, s (ζ - γ) + γ))``
    with ``u ~ U(0, 1)``, ``β = 2/3``, ``(γ, ζ) = (-0.1, 1.1)``."""
    u = torch.rand_like(log_alpha).clamp(1e-6, 1.0 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / TEMPERATURE)
    return (s * (STRETCH[1] - STRETCH[0]) + STRETCH[0]).clamp(0.0, 1.0)


def hard_concrete_deterministic(log_alpha: Tensor) -> Tensor:
    """The test-time gate ``min(1, max(0, σ(log α) (ζ - γ) + γ))`` (Louizos et al. 2018)."""
    s = torch.sigmoid(log_alpha)
    return (s * (STRETCH[1] - STRETCH[0]) + STRETCH[0]).clamp(0.0, 1.0)


def hard_concrete_active(log_alpha: Tensor) -> Tensor:
    """``P(z > 0) = σ(log α - β log(-γ / ζ))`` (Louizos et al. 2018, eq. 12)."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(-STRETCH[0] / STRETCH[1]))


def bar_barrier(volume: Tensor, a: float, b: float, eps: float = 1e-3) -> Tensor:
    """BAR's barrier (Lemaire et al. 2019, eq. 6): ``f(V, a, b) = 0`` for ``V <= a``,
    ``(V - a)² / (b - V)`` for ``a < V < b`` and ``∞`` beyond; here ``b - V`` is floored
    at ``eps`` so a noisy step past the budget gets a large, finite pull back."""
    excess = torch.clamp(volume - a, min=0.0)
    return excess * excess / torch.clamp(b - volume, min=eps)


def expected_kept(cost: CostModel, kind: str, keep: Tensor) -> Tensor:
    """The budget's kept fraction (``1 - sparsity``, FLOPs or params) for per-unit
    expected kept shares ``keep``, differentiably (:meth:`CostModel.channel_fractions` on
    tensors; gates independent)."""
    figures = cost.channel_fractions(keep)
    if kind == "flops":
        return figures["flops_fraction"]
    if kind == "params":
        return figures["params_fraction"]
    return 1.0 - figures["sparsity"]


def kept_target(budget: Budget) -> float:
    """The budget as a kept fraction (``1 - sparsity`` for sparsity budgets)."""
    return 1.0 - budget.target if budget.removes else budget.target


class UnitGates(nn.Module):
    """One hard-concrete gate per channel of every unit; ``log α = scale · raw`` (the scale
    is a learning-rate multiplier for Adam). In training mode :meth:`sample` draws one
    ``z`` per unit for the whole forward pass, so a unit's layers share it."""

    def __init__(self, units: list[Unit], init_log_alpha: float, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.raw = nn.ParameterList(
            nn.Parameter(torch.full((unit.size,), init_log_alpha / scale)) for unit in units
        )
        self.current: list[Tensor] = []

    def log_alphas(self) -> list[Tensor]:
        return [self.scale * raw for raw in self.raw]

    def sample(self) -> None:
        draw = hard_concrete_sample if self.training else hard_concrete_deterministic
        self.current = [draw(log_alpha) for log_alpha in self.log_alphas()]

    def active(self) -> Tensor:
        """``P(z > 0)`` of every channel of every unit, concatenated."""
        return torch.cat([hard_concrete_active(log_alpha) for log_alpha in self.log_alphas()])

    def expected_keep(self) -> Tensor:
        """Per unit, the expected share of its channels kept, ``mean P(z > 0)``."""
        return torch.stack([hard_concrete_active(a).mean() for a in self.log_alphas()])


def gated_modules(unit: Unit) -> tuple[str, ...]:
    """The modules whose outputs a unit's gate multiplies: its BatchNorms when it has
    some (gating before a BatchNorm would be normalized away), else its layers."""
    return unit.norms or unit.layers


def _broadcast(gate: Tensor, like: Tensor) -> Tensor:
    """``gate`` over dim 1 of an activation ``like`` (batch first)."""
    return gate.view(1, -1, *([1] * (like.dim() - 2)))


def per_row(values: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Per-output-channel ``values`` over dim 0 of a weight-shaped tensor of ``shape``."""
    return values.view(-1, *([1] * (len(shape) - 1))).expand(shape)


@contextmanager
def attached_gates(model: nn.Module, units: list[Unit], gates: UnitGates) -> Iterator[None]:
    """Register ``gates`` as a submodule of ``model`` (so its optimizer trains them) and
    hook the gated modules' outputs; both are removed on exit."""
    model.add_module(_GATES, gates)
    handles = [model.register_forward_pre_hook(lambda module, args: gates.sample())]
    for index, unit in enumerate(units):
        for name in gated_modules(unit):

            def hook(module: nn.Module, args: Any, output: Tensor, index: int = index) -> Tensor:
                return output * _broadcast(gates.current[index], output)

            handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        delattr(model, _GATES)


@torch.no_grad()
def fold_gates(model: nn.Module, units: list[Unit], gates: Tensor | list[Tensor]) -> None:
    """Multiply each unit's deterministic gates into the weights and biases of its gated
    modules, so the plain model computes what the gated one did.

    :raises ValueError: for a gated module without a per-channel weight (non-affine norm).
    """
    for unit, gate in zip(units, gates, strict=True):
        for name in gated_modules(unit):
            module = model.get_submodule(name)
            weight = getattr(module, "weight", None)
            if not isinstance(weight, Tensor):
                raise ValueError(f"l0-bar cannot fold its gates into {name!r} (no weight)")
            for tensor in (weight, getattr(module, "bias", None)):
                if isinstance(tensor, Tensor):
                    tensor.mul_(per_row(gate.to(tensor), tensor.shape))


def unit_scores(problem: Problem, per_unit: list[Tensor]) -> dict[str, Tensor]:
    """Weight-shaped scores whose channel scores (summed over a unit's layers by
    :func:`~searchprune.criteria.base.channel_scores`) equal ``per_unit``."""
    shapes = {layer.name: layer.weight_shape for layer in problem.layers if layer.prunable}
    scores = {name: torch.ones(shape) for name, shape in shapes.items()}
    for unit, values in zip(problem.cost.units, per_unit, strict=True):
        for name in unit.layers:
            share = values.detach().float().cpu() / len(unit.layers)
            scores[name] = per_row(share, shapes[name]).contiguous()
    return scores


def budget_schedule(start: float, target: float, progress: float) -> float:
    """BAR's progressively tightened budget: from ``start`` (above the dense cost) down to
    ``target``, on the cubic ramp ``1 - (1 - progress)³`` (fast first, gentle last)."""
    share = 1.0 - (1.0 - min(max(progress, 0.0), 1.0)) ** 3
    return start + (target - start) * share


class BarParams(TrainingParams):
    strength: float = Field(0.01, gt=0.0, description="λ, the weight of the barrier term")
    comfort: float = Field(
        0.9, gt=0.0, lt=1.0, description="a = comfort × final budget: below a no pressure"
    )
    schedule_end: float = Field(
        0.7, gt=0.0, le=1.0, description="share of training when the budget reaches its target"
    )
    init_log_alpha: float = Field(3.0, description="initial gate log α (P(z>0) ≈ 0.99)")
    gate_lr_scale: float = Field(50.0, gt=0.0, description="learning-rate multiplier of gates")
    records: int = Field(10, ge=2, description="expected-cost samples kept in info")


@METHODS.register(
    "l0-bar",
    "hard-concrete channel gates under a budget-aware barrier (Lemaire et al. 2019)",
)
class L0Bar(TrainingMethod):
    """Budget-Aware Regularization (Lemaire et al. 2019) with hard-concrete gates.

    One gate ``z`` per channel of every channel group multiplies that channel's output
    (after its BatchNorm). With ``V`` the expected kept cost fraction of the budget's
    kind (each channel kept with probability ``P(z > 0)``), the loss is
    ``L_data + λ · V · f(V, a, b_t)``: BAR's sparsity term (here ``V`` itself) times its
    barrier, where ``b_t`` shrinks from above the dense cost to the budget ``B`` and
    ``a = comfort · B``. At the end the gates are made deterministic and folded into the
    weights, and the channels of highest ``P(z > 0)`` are kept, exactly at the budget.

    ``info["expected_cost"]`` and ``info["budget_schedule"]`` trace ``V`` and ``b_t``.
    """

    Params = BarParams
    params: BarParams

    def run(self, problem: Problem) -> MethodResult:
        if problem.granularity != "channel":
            raise ValueError(
                "l0-bar prunes channels: set space.granularity to 'channel' "
                f"(got {problem.granularity!r})"
            )
        p, model, units = self.params, trained_copy(problem), problem.cost.units
        gates = UnitGates(units, p.init_log_alpha, p.gate_lr_scale)
        expected = partial(expected_kept, problem.cost, problem.budget.kind)
        target, total = kept_target(problem.budget), self.steps(problem)
        start = float(expected(gates.expected_keep().detach())) + 0.05
        trace: dict[str, list[float]] = {"expected_cost": [], "budget_schedule": []}
        every = max(total // (p.records - 1), 1)

        def penalty(step: int) -> Tensor:
            b = budget_schedule(start, target, step / max(p.schedule_end * total, 1.0))
            volume = expected(gates.expected_keep())
            if step % every == 0 or step == total - 1:
                trace["expected_cost"].append(float(volume.detach()))
                trace["budget_schedule"].append(b)
            return p.strength * volume * bar_barrier(volume, p.comfort * target, b)

        with attached_gates(model, units, gates):
            self.train(problem, model, penalty=penalty)
        with torch.no_grad():
            fold_gates(model, units, [hard_concrete_deterministic(a) for a in gates.log_alphas()])
            active = [hard_concrete_active(a) for a in gates.log_alphas()]
        masks = global_masks_from_scores(problem, unit_scores(problem, active))
        apply_masks(model, masks)
        return MethodResult(masks, model, {"steps": total, **trace})


def group_norms(weight: Tensor) -> Tensor:
    """``||W_g||₂`` of each output channel (filter / unit row) of a weight."""
    return torch.sqrt(weight.flatten(1).pow(2).sum(dim=1) + 1e-12)


def prunable_weights(problem: Problem, model: nn.Module) -> dict[str, Tensor]:
    """The weight parameters of ``model``'s prunable layers, by layer name."""
    weights = {}
    for layer in problem.layers:
        if layer.prunable:
            weight = model.get_submodule(layer.name).weight
            assert isinstance(weight, Tensor)
            weights[layer.name] = weight
    return weights


class GroupLassoParams(TrainingParams):
    strength: float = Field(1e-3, ge=0.0, description="λ of the group-lasso penalty")


@METHODS.register(
    "group-lasso",
    "filter-wise group lasso while fine-tuning, then smallest groups pruned (Wen et al. 2016)",
)
class GroupLasso(TrainingMethod):
    """Structured sparsity learning, filter-wise (Wen et al. 2016): fine-tune on
    ``L_data + λ Σ_l Σ_g ||W_g^(l)||₂`` over the output channels ``g`` of every prunable
    layer, then remove the groups of smallest norm at the budget (every weight scored by
    its group's norm)."""

    Params = GroupLassoParams
    params: GroupLassoParams

    def fit(self, problem: Problem) -> nn.Module:
        """A copy of the problem's model fine-tuned under the group-lasso penalty."""
        model = trained_copy(problem)
        weights = list(prunable_weights(problem, model).values())

        def penalty(step: int) -> Tensor:
            norms = [group_norms(w).sum() for w in weights]
            return self.params.strength * torch.stack(norms).sum()

        return self.train(problem, model, penalty=penalty)

    def run(self, problem: Problem) -> MethodResult:
        model = self.fit(problem)
        weights = prunable_weights(problem, model)
        norms = {name: group_norms(w.detach()).float().cpu() for name, w in weights.items()}
        scores = {name: per_row(n, weights[name].shape).contiguous() for name, n in norms.items()}
        masks = global_masks_from_scores(problem, scores)
        apply_masks(model, masks)
        every = torch.cat(list(norms.values()))
        info = {
            "steps": self.steps(problem),
            "min_group_norm": float(every.min()),
            "mean_group_norm": float(every.mean()),
        }
        return MethodResult(masks, model, info)
