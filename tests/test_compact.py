"""compact(): physically smaller models that compute what the masked model computes, and
the exact stats that count what they really hold (params, and FLOPs counted by torch)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.kernels import compact
from searchprune.kernels.check import check_outputs, output_tolerance
from searchprune.problem import Problem
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet, Mnist1dCNN, Mnist1dMLP


class Mobile(nn.Module):
    """Depthwise and grouped convs, a squeeze-excitation gate, biases without BatchNorm,
    a concatenation read by a BatchNorm, a chunk and a flatten into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.grouped = nn.Conv2d(16, 8, 3, stride=2, padding=1, groups=4)
        self.side = nn.Conv2d(1, 8, 2, stride=2)
        self.bn_cat = nn.BatchNorm2d(16)
        self.left = nn.Conv2d(8, 6, 1, bias=False)
        self.right = nn.Conv2d(8, 6, 1, bias=False)
        self.fc = nn.Linear(6 * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, 1, 8, 8)
        h = F.relu(self.bn1(self.expand(x)))
        h = F.relu6(self.depthwise(h))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        h = torch.cat([self.grouped(h * gate), self.side(x)], 1)
        a, b = F.silu(self.bn_cat(h)).chunk(2, 1)
        return self.fc(torch.flatten(F.relu(self.left(a) + self.right(b)), 1))


class Attention(nn.Module):
    """Tokens through multi-head self-attention written out (``q @ kᵀ``, softmax, ``@ v``),
    its heads counted by attributes the reshapes read (as timm's Attention does), then an
    MLP, both residual."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = heads, 6, heads * 6
        self.embed = nn.Linear(8, dim)
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 32), nn.Linear(32, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x.view(-1, 8, 8))
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attention = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, n, self.attn_dim))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class Mixed(nn.Module):
    """MixNet's mixed depthwise conv: channels split by a list attribute of the module,
    each piece through its own kernel size, concatenated again."""

    def __init__(self) -> None:
        super().__init__()
        self.splits = [6, 10]
        self.expand = nn.Conv2d(1, 16, 1)
        self.small = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.large = nn.Conv2d(10, 10, 5, padding=2, groups=10)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(F.relu(self.expand(x.view(-1, 1, 8, 8))), self.splits, 1)
        h = F.relu(self.bn(torch.cat([self.small(a), self.large(b)], 1)))
        return self.fc(h.mean((2, 3)))


MODELS = {
    "attention": (Attention, 64),
    "mixed": (Mixed, 64),
    "digits-mlp": (DigitsMLP, 64),
    "digits-cnn": (DigitsCNN, 64),
    "digits-resnet": (DigitsResNet, 64),
    "mnist1d-mlp": (Mnist1dMLP, 40),
    "mnist1d-cnn": (Mnist1dCNN, 40),
    "mobile": (Mobile, 64),
}


@cache
def _problem(name: str, granularity: str) -> Problem:
    factory, features = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    for module in model.modules():  # non-trivial BatchNorm statistics and affine
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    inputs = torch.randn(16, features)
    task = Task(
        model=model,
        train=(inputs, torch.zeros(16, dtype=torch.long)),
        val=(inputs, torch.zeros(16, dtype=torch.long)),
    )
    budget = Budget("flops", 0.5) if granularity == "channel" else Budget("sparsity", 0.5)
    return Problem(task, budget=budget, granularity=granularity, bn_samples=0, channels_last=False)


def _random_masks(problem: Problem, rng: np.random.Generator) -> tuple[MaskSet, list[Tensor]]:
    """Masks no search would pick: any channels of any unit (some units removed whole:
    one zero channel stays), or any weights, some rows wholly masked (so biases and norms
    decide what stays); and, at channel granularity, each unit's keep-mask."""
    if problem.granularity == "channel":
        keep = []
        for unit in problem.cost.units:
            mask = rng.random(unit.size) < rng.uniform(0.1, 0.9)
            if rng.random() < 0.8:
                mask[rng.integers(unit.size)] = True
            keep.append(torch.from_numpy(mask))
        return problem.cost.channel_masks(keep), keep
    weights = {}
    for layer in problem.layers:
        if not layer.prunable:
            continue
        shape = layer.weight_shape
        row_density = rng.choice([0.0, 0.3, 1.0], size=(shape[0],) + (1,) * (len(shape) - 1))
        weights[layer.name] = torch.from_numpy(rng.random(shape) < row_density)
    return MaskSet("weight", weights=weights), []


def _macs(model: nn.Module, x: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x[:1])
    return counter.get_total_flops() // 2


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    granularity=st.sampled_from(["channel", "weight"]),
    seed=st.integers(0, 2**31),
)
def test_stats_equal_what_the_compact_model_holds(name: str, granularity: str, seed: int) -> None:
    problem = _problem(name, granularity)
    masks, masks_kept = _random_masks(problem, np.random.default_rng(seed))
    x = problem.val.first_batch()[0]
    small = compact(problem.model, masks, problem.layers, problem.graph)
    with problem.masked(masks) as masked, torch.no_grad():
        expected = masked(x)
    with torch.no_grad():
        check_outputs(small(x), expected, f"compact {name}")
    stats = problem.exact_stats(masks)
    params = sum(p.numel() for p in small.parameters())
    if granularity == "channel":
        assert stats["params"] == params
        assert stats["flops"] == _macs(small, x)
        # the count-based cost model the budget repair uses agrees
        removed = np.array([(~masks_kept[u]).sum() for u in range(len(masks_kept))], float)
        figures = problem.cost.fractions(removed)
        for key in ("flops_fraction", "params_fraction", "sparsity"):
            assert figures[key] == pytest.approx(stats[key], abs=1e-12)
    else:  # the masked weights are still in the compact model, as zeros
        weights = [layer.weight(small) for layer in problem.layers]
        assert stats["params"] == params - sum(int((w == 0).sum()) for w in weights)
        layer_macs = [
            (int(w.count_nonzero()) * layer.positions, w.numel() * layer.positions)
            for w, layer in zip(weights, problem.layers, strict=True)
        ]  # nonzero and dense; the rest of what torch counts is attention products
        products = _macs(small, x) - sum(dense for _, dense in layer_macs)
        assert stats["flops"] == sum(nonzero for nonzero, _ in layer_macs) + products


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_repaired_candidate_compacts_below_the_budget(name: str) -> None:
    problem = _problem(name, "channel")
    genome = problem.space.repair(problem.space.sample(np.random.default_rng(0), 1))[0]
    masks = problem.space.decode(genome)
    small = compact(problem.model, masks, problem.layers, problem.graph)
    x = problem.val.first_batch()[0]
    assert _macs(small, x) <= 0.5 * problem.cost.dense_flops
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in problem.model.parameters()
    )


def test_a_masked_row_with_a_bias_still_feeds_the_next_layer() -> None:
    """A row whose weights are all masked still emits its bias (and a BatchNorm its
    shift): the weights that read it are not dead, and compact keeps the channel."""
    for bias in (True, False):
        model = nn.Sequential(
            nn.Linear(4, 3, bias=bias), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 2)
        )
        x = torch.randn(8, 4)
        problem = Problem(
            Task(model=model, train=(x, torch.zeros(8)), val=(x, torch.zeros(8))),
            budget=Budget("sparsity", 0.1),
        )
        row = torch.ones(3, 4, dtype=torch.bool)
        row[0] = False
        masks = MaskSet("weight", weights={"0": row})
        stats = problem.exact_stats(masks)
        small = compact(problem.model, masks, problem.layers, problem.graph)
        kept_inputs = 3 if bias else 2
        assert small.get_submodule("2").in_features == kept_inputs
        # first layer: 8 of 12 weights; second: 2 per kept input; dense output layer: 4
        assert stats["sparsity"] == pytest.approx(1 - (8 + 2 * kept_inputs) / (12 + 6))


def test_weight_masks_only_drop_channels_left_with_nothing() -> None:
    problem = Problem(_problem("digits-mlp", "channel").task, budget=Budget("sparsity", 0.5))
    masks = problem.space.decode(problem.space.repair(np.full((1, 2), 0.5))[0])
    small = compact(problem.model, masks, problem.layers, problem.graph)
    assert sum(p.numel() for p in small.parameters()) == sum(
        p.numel() for p in problem.model.parameters()
    )


def test_output_tolerance_is_relative_to_the_outputs_scale() -> None:
    expected = torch.tensor([[300.0, -120.0]])
    assert output_tolerance(expected) == pytest.approx(300 * 1000 * torch.finfo().eps)
    check_outputs(expected + 0.01, expected, "deep float32 net")  # 3e-5 of the scale: rounding
    with pytest.raises(ValueError, match=r"max \|diff\| 1.00e\+00"):
        check_outputs(expected + 1.0, expected, "wrong model")
    small = torch.tensor([[3e-3, 1e-3]])
    with pytest.raises(ValueError, match="differs"):
        check_outputs(small + 5e-5, small, "wrong small outputs")  # absolute 1e-4 passed it
    double = expected.double()
    with pytest.raises(ValueError, match="differs"):
        check_outputs(double + 1e-6, double, "float64")


def test_split_sizes_held_by_the_module_are_set_to_what_each_piece_keeps() -> None:
    problem = _problem("mixed", "channel")
    # a unit per piece (each read by its own conv): one channel leaves the first, two the
    # second
    assert [(u.layers, u.size) for u in problem.cost.units] == [
        (("expand", "small"), 6),
        (("expand", "large"), 10),
    ]
    keep = [torch.arange(6) != 0, (torch.arange(10) != 3) & (torch.arange(10) != 4)]
    masks = problem.cost.channel_masks(keep)
    small = compact(problem.model, masks, problem.layers, problem.graph)
    assert small.splits == [5, 8]
    x = problem.val.first_batch()[0]
    with problem.masked(masks) as masked, torch.no_grad():
        check_outputs(small(x), masked(x), "mixed conv")
