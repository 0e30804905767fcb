"""Gradient saliency criteria from the pruning literature (SNIP, GraSP, Taylor, Fisher,
OBD, SynFlow), registered into :data:`~searchprune.criteria.base.CRITERIA` when
:mod:`searchprune.criteria` is imported.

Every criterion maps ``(model, layers, task)`` to one non-negative, finite float32 CPU
tensor per layer, of the layer's weight shape, higher meaning *keep*. The data-driven
ones read only the ``train`` split: its first :data:`SAMPLES` samples, in the split's
fixed order, cut into mini-batches of :data:`BATCH_SIZE`. The loss is ``task.loss``
(a mean over the mini-batch); "the gradient" ``g`` is that of the mean loss over all
:data:`SAMPLES` samples.

The criteria score a *trained* model, so they run it in eval mode: BatchNorm uses its
running statistics and dropout is off, which makes the scores deterministic (SNIP and
GraSP were proposed at initialization, in train mode). Weights are substituted through
:func:`torch.func.functional_call`, never written: the model's parameters, buffers,
``.grad`` fields and per-module train/eval flags are the same afterwards, and frozen
(``requires_grad=False``) weights are scored too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from searchprune.core.layers import LayerInfo
from searchprune.criteria.base import CRITERIA, Scores, layer_scores
from searchprune.tasks.base import Batch, LossFn, Task

SAMPLES = 512
"""Train samples read by the data-driven criteria (the first ones, in split order)."""
BATCH_SIZE = 64
"""Mini-batch size: Taylor sums per-mini-batch terms; the others only bound memory."""
SEED = 0
"""Seed of OBD's Hutchinson probes."""
OBD_PROBES = 8
"""Rademacher probes per mini-batch in OBD's Hutchinson estimate of ``diag(H)``."""
SYNFLOW_ROUNDS = 100
"""Pruning rounds of SynFlow's iterative schedule (Tanaka et al. 2020 use 100)."""
SYNFLOW_DENSITY = 0.1
"""Density SynFlow's schedule prunes down to: the ranking is that of pruning to it."""


# --- shared helpers -----------------------------------------------------------------


@contextmanager
def _scoring(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode with autograd on (even inside ``inference_mode``); yields the model's
    device and restores every module's train/eval flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield next(model.parameters()).device
    finally:
        for module, training in modes:
            module.training = training


def _param_name(layer: str) -> str:
    return f"{layer}.weight" if layer else "weight"


def _weights(model: nn.Module, layers: list[LayerInfo]) -> Scores:
    """Each layer's weight as a detached leaf requiring grad (storage shared, not copied)."""
    return {layer.name: layer.weight(model).detach().requires_grad_() for layer in layers}


def _forward(model: nn.Module, weights: Scores, inputs: Tensor) -> Tensor:
    """``model(inputs)`` with the layers' weights replaced by ``weights``."""
    params = {_param_name(name): weight for name, weight in weights.items()}
    out: Tensor = functional_call(model, params, (inputs,))
    return out


def _train_batches(task: Task, device: torch.device) -> list[Batch]:
    """The first :data:`SAMPLES` train samples in the split's order, on ``device``, in
    mini-batches of :data:`BATCH_SIZE` (whatever the split's own batch size)."""
    inputs, targets, count = [], [], 0
    for batch_inputs, batch_targets in task.split("train"):
        inputs.append(batch_inputs)
        targets.append(batch_targets)
        count += len(batch_targets)
        if count >= SAMPLES:
            break
    if count == 0:
        raise ValueError(f"task {task.name!r} has an empty train split: nothing to score on")
    x = torch.cat(inputs)[:SAMPLES].to(device)
    y = torch.cat(targets)[:SAMPLES].to(device)
    return list(zip(x.split(BATCH_SIZE), y.split(BATCH_SIZE), strict=True))


def _batch_grads(
    model: nn.Module, weights: Scores, batch: Batch, loss: LossFn, *, graph: bool = False
) -> list[Tensor]:
    """Gradient of the batch's mean loss w.r.t. ``weights`` (``graph``: differentiable)."""
    inputs, targets = batch
    value = loss(_forward(model, weights, inputs), targets)
    return list(torch.autograd.grad(value, list(weights.values()), create_graph=graph))


def _loss_grads(
    model: nn.Module, weights: Scores, batches: list[Batch], loss: LossFn
) -> list[Tensor]:
    """Gradient ``g`` of the mean loss over all samples of ``batches``."""
    total = sum(len(targets) for _, targets in batches)
    sums = [torch.zeros_like(w) for w in weights.values()]
    for batch in batches:
        for acc, g in zip(sums, _batch_grads(model, weights, batch, loss), strict=True):
            acc.add_(g, alpha=len(batch[1]) / total)
    return sums


def _hessian_products(
    model: nn.Module, weights: Scores, batch: Batch, loss: LossFn, vectors: list[list[Tensor]]
) -> Iterator[list[Tensor]]:
    """``H v`` for each ``v`` of ``vectors``, ``H`` the Hessian of the batch's mean loss
    w.r.t. ``weights`` (Pearlmutter 1994: double backprop through one graph)."""
    grads = _batch_grads(model, weights, batch, loss, graph=True)
    for vector in vectors:
        dot = torch.stack([(g * v).sum() for g, v in zip(grads, vector, strict=True)]).sum()
        yield list(torch.autograd.grad(dot, list(weights.values()), retain_graph=True))


# --- criteria -----------------------------------------------------------------------


@CRITERIA.register(
    "snip", "|g * w| on a train mini-batch: connection sensitivity (Lee et al. 2019)"
)
def snip(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Connection sensitivity (Lee et al. 2019, "SNIP: Single-shot Network Pruning based
    on Connection Sensitivity"): ``s = |g ⊙ w|``, ``g = ∂L/∂w`` the gradient of the
    mean loss over the first :data:`SAMPLES` train samples (one mini-batch in the paper).

    The paper divides by ``Σ|g ⊙ w|``; a positive constant changes no ranking, so it is
    left out.
    """
    with _scoring(model) as device:
        weights = _weights(model, layers)
        grads = _loss_grads(model, weights, _train_batches(task, device), task.loss)
        values = [(g * w).abs() for g, w in zip(grads, weights.values(), strict=True)]
    return layer_scores(layers, values)


@CRITERIA.register(
    "grasp", "keep weights whose removal most reduces gradient flow (Wang et al. 2020)"
)
def grasp(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Gradient Signal Preservation (Wang, Zhang and Grosse 2020, "Picking Winning
    Tickets Before Training by Preserving Gradient Flow").

    The paper scores removal by ``S(-θ) = -θ ⊙ Hg`` (``g`` the loss gradient, ``H`` the
    Hessian, over the first :data:`SAMPLES` train samples and w.r.t. the scored layers'
    weights) and removes the weights with the *highest* ``S``: removing them reduces the
    gradient norm least. Importance is therefore ``-S = θ ⊙ Hg``, shifted by its global
    minimum over all layers to be non-negative: the values are ordinal only (the shift
    keeps the order within and across layers). ``Hg`` is a Hessian-vector product by
    double backprop. The authors' code divides logits by a temperature (200); this
    follows the paper and does not.
    """
    with _scoring(model) as device:
        weights = _weights(model, layers)
        batches = _train_batches(task, device)
        g = _loss_grads(model, weights, batches, task.loss)
        total = sum(len(targets) for _, targets in batches)
        hg = [torch.zeros_like(w) for w in weights.values()]
        for batch in batches:
            (products,) = _hessian_products(model, weights, batch, task.loss, [g])
            for acc, product in zip(hg, products, strict=True):
                acc.add_(product, alpha=len(batch[1]) / total)
        values = [w.detach() * p for w, p in zip(weights.values(), hg, strict=True)]
        lowest = min(float(v.min()) for v in values)
    return layer_scores(layers, [v - lowest for v in values])


@CRITERIA.register("taylor", "(g * w)^2 summed over train mini-batches (Molchanov et al. 2019)")
def taylor(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """First-order Taylor importance (Molchanov et al. 2019, "Importance Estimation for
    Neural Network Pruning"; first-order expansion of Molchanov et al. 2017):
    ``I = Σ_b (g_b ⊙ w)²``, ``g_b`` the gradient of mini-batch ``b``'s mean loss, summed
    over the :data:`BATCH_SIZE`-sample mini-batches of the first :data:`SAMPLES` train
    samples (the squared change in loss from zeroing ``w``, per mini-batch).
    """
    with _scoring(model) as device:
        weights = _weights(model, layers)
        values = [torch.zeros_like(w) for w in weights.values()]
        for batch in _train_batches(task, device):
            grads = _batch_grads(model, weights, batch, task.loss)
            for acc, g, w in zip(values, grads, weights.values(), strict=True):
                acc.add_((g * w).square())
    return layer_scores(layers, values)


@CRITERIA.register("fisher", "1/2 F_ii w^2, empirical Fisher diagonal (Theis et al. 2018)")
def fisher(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Fisher pruning (Theis et al. 2018, "Faster gaze prediction with dense networks and
    Fisher pruning"): the increase in loss from removing ``w_i`` under a quadratic model
    whose Hessian is the empirical Fisher, ``Δ_i = ½ F_ii w_i²`` with
    ``F_ii = (1/N) Σ_n (∂ℓ_n/∂w_i)²``, ``ℓ_n`` the loss of train sample ``n`` alone, over
    the first :data:`SAMPLES` train samples. Per-sample gradients come from
    :func:`torch.func.vmap` (``task.loss`` must be vmap-compatible, as cross-entropy is);
    using per-sample, not per-mini-batch, gradients is what distinguishes it from
    :func:`taylor`.
    """
    with _scoring(model) as device:
        weights = _weights(model, layers)

        def sample_loss(params: Scores, x: Tensor, y: Tensor) -> Tensor:
            return task.loss(_forward(model, params, x[None]), y[None])

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        batches = _train_batches(task, device)
        total = sum(len(targets) for _, targets in batches)
        sums = [torch.zeros_like(w) for w in weights.values()]
        for inputs, targets in batches:
            with torch.no_grad():  # torch.func.grad still differentiates; no outer graph
                grads = per_sample(weights, inputs, targets)
            for acc, g in zip(sums, grads.values(), strict=True):
                acc.add_(g.square().sum(dim=0))
        values = [0.5 * s / total * w.square() for s, w in zip(sums, weights.values(), strict=True)]
    return layer_scores(layers, values)


@CRITERIA.register("obd", "1/2 h_ii w^2, Hutchinson Hessian diagonal (LeCun et al. 1990)")
def obd(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Optimal Brain Damage (LeCun, Denker and Solla 1990): saliency ``s_i = ½ h_ii w_i²``,
    the loss increase from removing ``w_i`` under a diagonal quadratic model at a minimum.

    ``h_ii``, the Hessian diagonal of the mean loss over the first :data:`SAMPLES` train
    samples w.r.t. the scored weights, is estimated with Hutchinson's estimator
    ``diag(H) ≈ (1/P) Σ_p v_p ⊙ H v_p`` (Bekas et al. 2007), ``P =`` :data:`OBD_PROBES`
    fresh Rademacher (±1) probes per mini-batch from a CPU generator seeded with
    :data:`SEED`, mini-batches weighted by size. LeCun et al. computed ``h_ii`` exactly by
    a backprop pass in a Gauss-Newton approximation, which is never negative; the
    estimate can be, so it is clamped at 0 before multiplying.
    """
    generator = torch.Generator().manual_seed(SEED)
    with _scoring(model) as device:
        weights = _weights(model, layers)
        batches = _train_batches(task, device)
        total = sum(len(targets) for _, targets in batches)
        diagonal = [torch.zeros_like(w) for w in weights.values()]
        for batch in batches:
            probes = [
                [_rademacher(w, generator) for w in weights.values()] for _ in range(OBD_PROBES)
            ]
            products = _hessian_products(model, weights, batch, task.loss, probes)
            for probe, product in zip(probes, products, strict=True):
                for acc, v, hv in zip(diagonal, probe, product, strict=True):
                    acc.add_(v * hv, alpha=len(batch[1]) / (total * OBD_PROBES))
        values = [
            0.5 * h.clamp(min=0) * w.square()
            for h, w in zip(diagonal, weights.values(), strict=True)
        ]
    return layer_scores(layers, values)


def _rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    """A ±1 tensor shaped like ``like``, drawn on the CPU (same draws on any device)."""
    signs = torch.randint(0, 2, like.shape, generator=generator).to(like) * 2 - 1
    return signs


@CRITERIA.register("synflow", "iterative synaptic flow, data-free (Tanaka et al. 2020)")
def synflow(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Iterative Synaptic Flow Pruning (Tanaka et al. 2020, "Pruning neural networks
    without any data by iteratively conserving synaptic flow").

    Every parameter and buffer is replaced by its absolute value (as the authors' code
    does with the state dict), in float64 and eval mode, and the synaptic flow
    ``R = 1ᵀ f(1)`` is the sum of the outputs for one all-ones input of a train sample's
    shape (the shape alone is read: no data value is used). A weight's score is
    ``|θ ⊙ ∂R/∂θ|``.

    A criterion has no budget, so the iterative schedule runs towards
    :data:`SYNFLOW_DENSITY`: in round ``k = 1..K`` (``K =`` :data:`SYNFLOW_ROUNDS`) the
    scores are recomputed with the masks of the previous rounds applied, and the weights
    still kept are cut, globally across the scored layers, to the exponential schedule's
    ``round(d^(k/K) · n)`` highest-scored (``d`` the density, ``n`` the scored weights).
    The survivors are then scored once more under the final mask. The result is a rank,
    ``0..n-1`` (ordinal only): weights removed in earlier rounds rank below those removed
    later, within a round by that round's score, and the survivors rank highest, by the
    final score. Pruning to density ``d`` by this ranking reproduces the iterative masks.
    """
    shape = _input_shape(task)
    with _scoring(model) as device:
        state = {
            name: t.detach().abs().double() if t.is_floating_point() else t
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        ones = torch.ones(shape, dtype=torch.float64, device=device)
        sizes = [math.prod(layer.weight_shape) for layer in layers]
        keep = torch.ones(sum(sizes), dtype=torch.float64, device=device)
        alive = torch.arange(len(keep), device=device)

        def alive_by_score() -> Tensor:
            scores = _flow_scores(model, state, layers, keep.split(sizes), ones)
            return alive[torch.argsort(scores[alive], stable=True)]

        order: list[Tensor] = []  # weights from least to most important
        for round_ in range(1, SYNFLOW_ROUNDS + 1):
            ranked = alive_by_score()
            target = round(SYNFLOW_DENSITY ** (round_ / SYNFLOW_ROUNDS) * len(keep))
            cut = len(ranked) - max(target, 1)
            order.append(ranked[:cut])
            keep[ranked[:cut]] = 0.0
            alive = ranked[cut:]
        order.append(alive_by_score())
        ranks = torch.empty(len(keep), dtype=torch.float64, device=device)
        ranks[torch.cat(order)] = torch.arange(len(keep), dtype=torch.float64, device=device)
    return layer_scores(
        layers,
        [r.view(layer.weight_shape) for r, layer in zip(ranks.split(sizes), layers, strict=True)],
    )


def _input_shape(task: Task) -> torch.Size:
    """Shape of one train input (batch of 1), read from the split's tensors when it has
    them, without iterating it."""
    split = task.split("train")
    inputs = split.tensors[0] if split.tensors is not None else split.first_batch()[0]
    return inputs[:1].shape


def _flow_scores(
    model: nn.Module,
    state: Scores,
    layers: list[LayerInfo],
    masks: tuple[Tensor, ...],
    ones: Tensor,
) -> Tensor:
    """``|θ ⊙ ∂R/∂θ|`` of every scored weight (flat, layers in order), ``θ = |w| ⊙ mask``
    and ``R`` the summed output for the all-ones input, every tensor of ``state`` used."""
    masked = [
        (state[_param_name(layer.name)] * mask.view(layer.weight_shape)).requires_grad_()
        for layer, mask in zip(layers, masks, strict=True)
    ]
    params = {
        **state,
        **{_param_name(layer.name): w for layer, w in zip(layers, masked, strict=True)},
    }
    flow = functional_call(model, params, (ones,)).sum()
    grads = torch.autograd.grad(flow, masked)
    return torch.cat([(g * w).abs().reshape(-1) for g, w in zip(grads, masked, strict=True)])
