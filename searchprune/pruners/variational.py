"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, "Variational Dropout
Sparsifies Deep Neural Networks").

Every prunable weight ``w_ij`` gets the factorized Gaussian posterior
``q(w_ij) = N(θ_ij, σ²_ij)`` with the dropout rate ``α_ij = σ²_ij / θ²_ij`` under the
log-uniform prior. Training maximizes the ELBO with

* the *additive noise reparameterization*: ``θ`` and ``log σ²`` are the parameters, and
  ``log α = log σ² - log θ²`` (clipped to ``[-10, 10]``);
* the *local reparameterization trick*: a layer's pre-activations are sampled instead of
  its weights, ``b = μ + sqrt(v) ⊙ ε`` with ``μ = x θ``, ``v = x² σ²``, ``ε ~ N(0, 1)``;
* the paper's approximation of the KL term (eq. 14),
  ``-KL(q(w_ij) || p(w_ij)) ≈ k1 σ(k2 + k3 log α_ij) - ½ log(1 + α_ij⁻¹) - k1`` with
  ``k1 = 0.63576``, ``k2 = 1.87320``, ``k3 = 1.48695``.

The data term is the mean minibatch loss; the KL sum is divided by the number of train
samples (the ELBO scaled by ``1/N``) and weighted by a warm-up factor growing linearly
from 0 to 1. Weights with ``log α > threshold`` (3, i.e. dropout rate above 0.95) are
the ones the paper removes; here the masks at the problem's budget keep the lowest
``log α`` (importance ``-log α``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.core.masks import apply_masks
from searchprune.problem import Problem
from searchprune.pruners.base import METHODS, MethodResult
from searchprune.pruners.oneshot import global_masks_from_scores
from searchprune.pruners.training import (
    TrainingMethod,
    TrainingParams,
    reinitialize,
    trained_copy,
)

KL_K1, KL_K2, KL_K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_LIMIT = 10.0
_EPS = 1e-8
Variational = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def log_alpha(weight: Tensor, log_sigma2: Tensor) -> Tensor:
    """``log α = log σ² - log θ²``, clipped to ``[-10, 10]`` (additive reparameterization)."""
    raw = log_sigma2 - torch.log(weight * weight + _EPS)
    return raw.clamp(-LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)


def kl_divergence(log_alpha: Tensor) -> Tensor:
    """Elementwise ``KL(q || p) ≈ -(k1 σ(k2 + k3 log α) - ½ log(1 + 1/α) - k1)``
    (Molchanov et al. 2017, eq. 14); it decreases as ``log α`` grows."""
    negative = (
        KL_K1 * torch.sigmoid(KL_K2 + KL_K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - KL_K1
    )
    return -negative


def threshold_keep(log_alphas: dict[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """Keep-masks of the paper's rule: a weight stays while ``log α <= threshold``."""
    return {name: value <= threshold for name, value in log_alphas.items()}


class VariationalLayer(nn.Module):
    """A Linear or Conv layer whose weights carry ``log σ²``: in training mode its output
    is sampled by the local reparameterization trick, in eval mode it is the plain layer."""

    def __init__(self, layer: Variational, init_log_sigma2: float) -> None:
        super().__init__()
        self.layer = layer
        self.log_sigma2 = nn.Parameter(torch.full_like(layer.weight, init_log_sigma2))

    def log_alpha(self) -> Tensor:
        return log_alpha(self.layer.weight, self.log_sigma2)

    def _op(self, inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(inputs, weight, bias)
        return self.layer._conv_forward(inputs, weight, bias)

    def forward(self, inputs: Tensor) -> Tensor:
        if not self.training:
            out: Tensor = self.layer(inputs)
            return out
        mean = self._op(inputs, self.layer.weight, self.layer.bias)
        variance = self._op(inputs * inputs, torch.exp(self.log_sigma2), None)
        return mean + torch.sqrt(variance + _EPS) * torch.randn_like(mean)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def wrap_variational(
    model: nn.Module, names: list[str], init_log_sigma2: float
) -> dict[str, VariationalLayer]:
    """Swap the named layers of ``model`` for :class:`VariationalLayer` wrappers.

    :raises ValueError: for a layer that is not Linear or Conv1d/2d/3d.
    """
    wrapped = {}
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, Variational):
            raise ValueError(f"sparse-vd supports Linear and Conv layers, not {name!r} ({layer})")
        wrapped[name] = VariationalLayer(layer, init_log_sigma2)
        _replace(model, name, wrapped[name])
    return wrapped


def unwrap_variational(model: nn.Module, wrapped: dict[str, VariationalLayer]) -> None:
    """Put the original layers (with ``θ`` as weights) back in place of the wrappers."""
    for name, wrapper in wrapped.items():
        _replace(model, name, wrapper.layer)


class SparseVDParams(TrainingParams):
    warmup: float = Field(
        0.3, ge=0.0, le=1.0, description="share of training over which the KL weight grows 0→1"
    )
    threshold: float = Field(3.0, description="log α above which the paper removes a weight")
    init_log_sigma2: float = Field(-10.0, description="initial log σ² of every weight")
    pretrained: bool = Field(True, description="fine-tune the trained model (else re-initialize)")


@METHODS.register(
    "sparse-vd",
    "sparse variational dropout: per-weight dropout rates learned by the ELBO "
    "(Molchanov et al. 2017)",
)
class SparseVD(TrainingMethod):
    """Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): trains ``θ`` and
    ``log σ²`` of every prunable weight on ``E_q[L_data] + KL(q || p) / N`` (see the
    module docstring), then keeps the weights of lowest ``log α`` at the budget.

    ``info`` holds ``threshold_sparsity`` and ``threshold_compression`` (prunable weights
    over kept ones) of the paper's ``log α > threshold`` rule, and the final KL per sample.
    """

    Params = SparseVDParams
    params: SparseVDParams

    def fit(self, problem: Problem) -> tuple[nn.Module, dict[str, Tensor], float]:
        """Train a variational copy; return the plain trained copy, each prunable layer's
        ``log α`` and the last KL term (per train sample)."""
        p, model = self.params, trained_copy(problem)
        names = [layer.name for layer in problem.layers if layer.prunable]
        warm = max(p.warmup * self.steps(problem), 1.0)
        samples = len(problem.task.split("train"))
        if not p.pretrained:
            reinitialize(model, self.seed)
        wrapped = wrap_variational(model, names, p.init_log_sigma2)

        def kl() -> Tensor:
            terms = [kl_divergence(w.log_alpha()).sum() for w in wrapped.values()]
            return torch.stack(terms).sum() / samples

        self.train(problem, model, penalty=lambda step: min(step / warm, 1.0) * kl())
        with torch.no_grad():
            alphas = {name: w.log_alpha().float().cpu().contiguous() for name, w in wrapped.items()}
            final_kl = float(kl())
        unwrap_variational(model, wrapped)
        return model, alphas, final_kl

    def run(self, problem: Problem) -> MethodResult:
        model, alphas, final_kl = self.fit(problem)
        masks = global_masks_from_scores(problem, {name: -a for name, a in alphas.items()})
        apply_masks(model, masks)
        keep = threshold_keep(alphas, self.params.threshold)
        kept = sum(int(k.sum()) for k in keep.values())
        total = sum(k.numel() for k in keep.values())
        info = {
            "steps": self.steps(problem),
            "threshold_sparsity": 1.0 - kept / total,
            "threshold_compression": total / max(kept, 1),
            "kl_per_sample": final_kl,
        }
        return MethodResult(masks, model, info)
