"""The criteria of :mod:`searchprune.criteria` beyond magnitude: shapes and contract,
model state left untouched, values against independent computations, and use through
the one-shot methods and the layer-ratios space."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

import searchprune.criteria.saliency as saliency
from searchprune.core.budget import Budget
from searchprune.core.layers import LayerInfo, discover_layers
from searchprune.core.units import Unit
from searchprune.criteria import CRITERIA, channel_scores
from searchprune.problem import Problem
from searchprune.pruners import make_method
from searchprune.tasks.base import Batch, Split, Task
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet

NEW = ["random", "snip", "grasp", "taylor", "fisher", "obd", "synflow", "l1-filter"]
DATA_DRIVEN = ["snip", "grasp", "taylor", "fisher", "obd"]


def _task(model: nn.Module, samples: int = 200, features: int = 64, classes: int = 10) -> Task:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(samples, features, generator=generator)
    targets = torch.randint(0, classes, (samples,), generator=generator)
    return Task(model, (inputs, targets), (inputs[:20], targets[:20]), batch_size=50)


def _prunable(task: Task, exclude_output: bool = True) -> list[LayerInfo]:
    layers = discover_layers(task.model, task.example_input(), exclude_output=exclude_output)
    return [layer for layer in layers if layer.prunable]


def _score(name: str, task: Task, layers: list[LayerInfo]) -> dict[str, Tensor]:
    return CRITERIA.get(name)(task.model, layers, task)


def _flat(scores: dict[str, Tensor]) -> Tensor:
    return torch.cat([s.reshape(-1) for s in scores.values()])


def _cnn_channels_last() -> nn.Module:
    return DigitsCNN().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _resnet_channels_last() -> nn.Module:
    return DigitsResNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("factory", [DigitsMLP, _cnn_channels_last, _resnet_channels_last])
def test_scores_meet_the_contract_and_leave_the_model_untouched(
    name: str, factory: Callable[[], nn.Module]
) -> None:
    torch.manual_seed(0)
    model = factory()
    task = _task(model)
    layers = _prunable(task)
    model.train()
    first = next(model.children())
    first.eval()  # a mixed train/eval state must come back as it was
    param = next(model.parameters())
    param.grad = torch.ones_like(param)
    modes = [module.training for module in model.modules()]
    state = {key: value.clone() for key, value in model.state_dict().items()}

    scores = _score(name, task, layers)

    assert list(scores) == [layer.name for layer in layers]
    for layer in layers:
        value = scores[layer.name]
        assert value.shape == layer.weight_shape
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        assert value.is_contiguous()
        assert torch.isfinite(value).all() and (value >= 0).all()
    assert [module.training for module in model.modules()] == modes
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    assert param.grad is not None and torch.equal(param.grad, torch.ones_like(param))
    assert all(p.grad is None for p in list(model.parameters())[1:])


class _Untouchable:
    """A split that fails when read."""

    def __iter__(self) -> Iterator[Batch]:
        raise AssertionError("this split must not be read")


@pytest.mark.parametrize("name", NEW)
def test_criteria_read_the_train_split_only(name: str) -> None:
    torch.manual_seed(0)
    base = _task(DigitsMLP())
    layers = _prunable(base)
    task = Task(base.model, base.split("train"), _Untouchable(), test=_Untouchable())
    assert torch.equal(_flat(_score(name, task, layers)), _flat(_score(name, base, layers)))


# --- values against independent computations on a tiny network ----------------------


def _tiny() -> tuple[Task, list[LayerInfo]]:
    """A 5-7-3 tanh network on 100 samples (two mini-batches: 64 + 36), both layers scored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    task = _task(model, samples=100, features=5, classes=3)
    return task, _prunable(task, exclude_output=False)


def _inputs(task: Task) -> Batch:
    tensors = task.split("train").tensors
    assert tensors is not None
    return tensors


def _loss_of(task: Task, inputs: Tensor, targets: Tensor) -> Callable[..., Tensor]:
    """Mean loss as a function of the two weight matrices."""

    def loss(w0: Tensor, w1: Tensor) -> Tensor:
        logits = functional_call(task.model, {"0.weight": w0, "2.weight": w1}, (inputs,))
        return F.cross_entropy(logits, targets)

    return loss


def _tiny_weights(task: Task) -> tuple[Tensor, Tensor]:
    params = dict(task.model.named_parameters())
    return params["0.weight"].detach(), params["2.weight"].detach()


def _gradient(task: Task, inputs: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
    weights = [w.clone().requires_grad_() for w in _tiny_weights(task)]
    return torch.autograd.grad(_loss_of(task, inputs, targets)(*weights), weights)


def _expected(name: str, task: Task) -> list[Tensor]:
    inputs, targets = _inputs(task)
    weights = _tiny_weights(task)
    if name == "snip":  # |g w|, g over all samples
        return [
            (g * w).abs() for g, w in zip(_gradient(task, inputs, targets), weights, strict=True)
        ]
    if name == "taylor":  # sum over mini-batches of 64 of (g_b w)^2
        parts = [
            _gradient(task, inputs[start : start + 64], targets[start : start + 64])
            for start in (0, 64)
        ]
        return [sum((g[i] * weights[i]).square() for g in parts) for i in range(2)]  # type: ignore[misc]
    if name == "fisher":  # 1/2 w^2 mean_n g_n^2, per-sample gradients by a plain loop
        squares = [torch.zeros_like(w) for w in weights]
        for n in range(len(targets)):
            for acc, g in zip(
                squares, _gradient(task, inputs[n : n + 1], targets[n : n + 1]), strict=True
            ):
                acc += g.square()
        return [0.5 * s / len(targets) * w.square() for s, w in zip(squares, weights, strict=True)]
    assert name == "grasp"  # theta * Hg, shifted by its global minimum
    gradient = _gradient(task, inputs, targets)
    _, hg = torch.autograd.functional.hvp(_loss_of(task, inputs, targets), weights, gradient)
    values = [w * p for w, p in zip(weights, hg, strict=True)]
    lowest = min(float(v.min()) for v in values)
    return [v - lowest for v in values]


@pytest.mark.parametrize("name", ["snip", "taylor", "fisher", "grasp"])
def test_values_match_an_independent_computation(name: str) -> None:
    task, layers = _tiny()
    scores = _score(name, task, layers)
    for layer, expected in zip(layers, _expected(name, task), strict=True):
        torch.testing.assert_close(scores[layer.name], expected, rtol=1e-4, atol=1e-7)


def test_obd_hutchinson_estimate_approaches_the_exact_hessian_diagonal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task, layers = _tiny()
    inputs, targets = _inputs(task)
    weights = _tiny_weights(task)
    hessian = torch.autograd.functional.hessian(_loss_of(task, inputs, targets), weights)
    diagonals = [
        hessian[i][i].reshape(w.numel(), w.numel()).diagonal() for i, w in enumerate(weights)
    ]
    exact = torch.cat(
        [
            0.5 * d.clamp(min=0) * w.reshape(-1).square()
            for d, w in zip(diagonals, weights, strict=True)
        ]
    )

    def correlation(probes: int) -> float:
        monkeypatch.setattr(saliency, "OBD_PROBES", probes)
        estimate = _flat(_score("obd", task, layers))
        return float(torch.corrcoef(torch.stack([estimate, exact]))[0, 1])

    assert correlation(2000) > 0.95
    assert correlation(8) > 0.5
    # one probe gives negative diagonal estimates: clamped at 0, not folded by |.|
    monkeypatch.setattr(saliency, "OBD_PROBES", 1)
    assert (_flat(_score("obd", task, layers)) == 0).any()


def _reference_synflow(model: nn.Module, names: list[str], rounds: int) -> list[Tensor]:
    """Tanaka et al.'s loop, written like their code: an abs-valued float64 copy, masks
    multiplied into the weights in place, ``sum(model(ones)).backward()``. Returns the
    flat scores of each round (the last one under the final masks)."""
    clone = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in clone.state_dict().values():
            tensor.abs_()
    params = dict(clone.named_parameters())
    weights = [params[name] for name in names]
    dense = [w.detach().clone() for w in weights]
    masks = [torch.ones_like(w) for w in weights]
    total = sum(w.numel() for w in weights)
    history = []
    for round_ in range(rounds + 1):
        with torch.no_grad():
            for weight, original, mask in zip(weights, dense, masks, strict=True):
                weight.copy_(original * mask)
        clone.zero_grad()
        clone(torch.ones(1, 64, dtype=torch.float64)).sum().backward()
        scores = torch.cat([(w.grad * w).abs().reshape(-1) for w in weights])  # type: ignore[operator]
        history.append(scores)
        if round_ == rounds:
            return history
        alive = torch.cat([m.reshape(-1) for m in masks]).bool()
        keep = round(saliency.SYNFLOW_DENSITY ** ((round_ + 1) / rounds) * total)
        candidates = torch.where(alive, scores, torch.tensor(-1.0, dtype=torch.float64))
        kept = torch.zeros(total, dtype=torch.bool)
        kept[candidates.argsort(descending=True, stable=True)[:keep]] = True
        masks = [
            m.view_as(w).double()
            for m, w in zip(kept.split([w.numel() for w in weights]), weights, strict=True)
        ]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("rounds", [1, 3])
def test_synflow_ranking_reproduces_the_iterative_masks(
    rounds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saliency, "SYNFLOW_ROUNDS", rounds)
    torch.manual_seed(0)
    model = DigitsMLP()
    task = _task(model)
    layers = _prunable(task)
    ranks = _flat(_score("synflow", task, layers)).double()
    history = _reference_synflow(model, [f"{layer.name}.weight" for layer in layers], rounds)

    total = len(ranks)
    assert torch.equal(ranks.sort().values, torch.arange(total, dtype=torch.float64))
    alive = torch.ones(total, dtype=torch.bool)
    for round_, scores in enumerate(history):
        keep = round(saliency.SYNFLOW_DENSITY ** ((round_ + 1) / rounds) * total)
        if round_ == rounds:
            keep = 0  # the survivors: ranked by the final scores
        block = alive & (ranks < total - keep)  # removed in this round
        by_rank = scores[block][ranks[block].argsort()]
        assert (by_rank[1:] >= by_rank[:-1] * (1 - 1e-9)).all()
        if keep:
            assert by_rank.max() <= scores[alive & ~block].min() * (1 + 1e-9)
        alive &= ~block


def test_synflow_reads_no_data_and_keeps_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    task = _task(DigitsMLP())
    layers = _prunable(task)
    reference = _score("synflow", task, layers)
    inputs, targets = _inputs(task)
    nan = torch.full_like(inputs, float("nan"))
    nan_task = Task(task.model, (nan, targets), (nan, targets))
    assert torch.equal(_flat(_score("synflow", nan_task, layers)), _flat(reference))

    def refuse(self: Split) -> Iterator[Batch]:
        raise AssertionError("SynFlow iterated a split")

    monkeypatch.setattr(Split, "__iter__", refuse)
    assert torch.equal(_flat(_score("synflow", task, layers)), _flat(reference))
    # pruning to the schedule's density by the ranking leaves every layer connected
    total = sum(s.numel() for s in reference.values())
    kept = total - round(saliency.SYNFLOW_DENSITY * total)
    assert all((scores >= kept).any() for scores in reference.values())


def test_l1_filter_scores_each_filter_by_its_l1_norm() -> None:
    torch.manual_seed(0)
    model = _cnn_channels_last()
    task = _task(model)
    layers = _prunable(task)
    scores = _score("l1-filter", task, layers)
    modules = dict(model.named_modules())
    for layer in layers:
        weight = modules[layer.name].weight.detach()
        norms = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
        rows = scores[layer.name].reshape(weight.shape[0], -1)
        assert torch.equal(rows, rows[:, :1].expand_as(rows))
        torch.testing.assert_close(rows[:, 0], norms)
        channels = channel_scores(scores, Unit(layer.name, weight.shape[0], (layer.name,)))
        assert torch.equal(channels.argsort(stable=True), norms.argsort(stable=True))


# --- on a trained model, and through the one-shot methods and the search space ------


def test_criteria_are_deterministic_and_rank_unlike_magnitude(digits_mlp_task: Task) -> None:
    layers = _prunable(digits_mlp_task)
    magnitude = _flat(_score("magnitude", digits_mlp_task, layers)).argsort(stable=True)
    orders = {}
    for name in DATA_DRIVEN:
        first = _score(name, digits_mlp_task, layers)
        assert torch.equal(_flat(first), _flat(_score(name, digits_mlp_task, layers)))
        orders[name] = _flat(first).argsort(stable=True)
        assert not torch.equal(orders[name], magnitude)
    assert not torch.equal(orders["taylor"], orders["fisher"])
    assert not torch.equal(orders["taylor"], orders["snip"])


@pytest.mark.parametrize("name", NEW)
def test_one_shot_methods_meet_the_budget(name: str, digits_mlp_task: Task) -> None:
    problem = Problem(digits_mlp_task, budget=Budget("sparsity", 0.8), criterion=name)
    for kind in ("global", "layer"):
        masks = make_method(f"{name}-{kind}").run(problem).masks
        assert problem.exact_stats(masks)["sparsity"] >= 0.8 - 1e-9


@pytest.mark.parametrize("name", ["synflow", "grasp", "l1-filter"])
def test_channel_pruning_with_batchnorm(name: str, digits_resnet_task: Task) -> None:
    problem = Problem(
        digits_resnet_task, budget=Budget("flops", 0.6), granularity="channel", criterion=name
    )
    stats = problem.exact_stats(make_method(f"{name}-global").run(problem).masks)
    assert problem.budget.met_by(stats[problem.budget.stat])


def test_layer_ratio_space_searches_with_synflow_scores(digits_mlp_task: Task) -> None:
    problem = Problem(digits_mlp_task, budget=Budget("sparsity", 0.8), criterion="synflow")
    genomes = problem.space.repair(problem.space.sample(np.random.default_rng(0), 4))
    evaluations = problem.score(genomes, [f"g{i}" for i in range(len(genomes))])
    assert all(e.metrics["sparsity"] >= 0.8 - 1e-9 for e in evaluations)
    assert all(0.0 <= e.fitness <= 1.0 for e in evaluations)
