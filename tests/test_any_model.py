"""Any model a user brings: torchvision and timm classifiers and a Transformer language
model, each through dependency groups, a search step at channel and weight granularity,
and a compact export that computes what the masked model does, with the params and
FLOPs the stats claimed (counted independently, by ``torch.utils.flop_counter``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.evaluate.local import LocalEvaluator
from searchprune.kernels import compact
from searchprune.kernels.check import check_outputs
from searchprune.problem import Problem
from searchprune.tasks.base import Task

zoo = pytest.importorskip("zoo")
try:
    tv = zoo.import_torchvision()
    timm = zoo.import_timm()
except ImportError:  # the vision extra is not installed
    pytest.skip("torchvision and timm are needed", allow_module_level=True)


class TinyLanguageModel(nn.Module):
    """Embedding, a two-layer ``nn.TransformerEncoder`` and a Linear head predicting the
    token after the sequence."""

    def __init__(self, vocab: int = 50, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 8 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden: Tensor = self.encoder(self.embed(tokens))
        logits: Tensor = self.head(hidden[:, -1])
        return logits


def _images(size: int) -> Callable[[], Tensor]:
    return lambda: torch.randn(2, 3, size, size)


def _convnext() -> nn.Module:
    config = tv.models.convnext.CNBlockConfig
    return tv.models.convnext.ConvNeXt([config(32, 64, 1), config(64, None, 1)], num_classes=10)


# name: (model, inputs, prunable groups at channel granularity)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor], int]] = {
    "resnet18": (lambda: tv.models.resnet18(num_classes=10), _images(32), 12),
    "mobilenet_v2": (
        lambda: tv.models.mobilenet_v2(width_mult=0.25, num_classes=10),
        _images(32),
        24,
    ),
    "mobilenet_v3_small": (
        lambda: tv.models.mobilenet_v3_small(width_mult=0.5, num_classes=10),
        _images(32),
        26,
    ),
    "efficientnet_b0": (lambda: tv.models.efficientnet_b0(num_classes=10), _images(32), 40),
    "densenet": (
        lambda: tv.models.DenseNet(8, (2, 2), 16, num_classes=10),
        _images(32),
        10,
    ),
    "googlenet": (
        lambda: tv.models.GoogLeNet(num_classes=10, aux_logits=False, init_weights=False),
        _images(32),
        57,
    ),
    "shufflenet_v2": (lambda: tv.models.shufflenet_v2_x0_5(num_classes=10), _images(32), 21),
    "resnext": (
        lambda: tv.models.ResNet(
            tv.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=8
        ),
        _images(32),
        13,
    ),
    "convnext": (_convnext, _images(32), 4),
    "regnet_y_400mf": (lambda: tv.models.regnet_y_400mf(num_classes=10), _images(32), 53),
    "vit": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            depth=2,
            num_classes=10,
        ),
        _images(32),
        4,
    ),
    "transformer_lm": (TinyLanguageModel, lambda: torch.randint(0, 50, (2, 12)), 4),
    "vit_torchvision": (
        lambda: tv.models.VisionTransformer(32, 8, 2, 4, 32, 128, num_classes=10),
        _images(32),
        4,
    ),
}


def _problem(name: str, budget: Budget, granularity: str) -> tuple[Problem, Tensor]:
    build, inputs, _ = MODELS[name]
    torch.manual_seed(0)
    model = zoo.make_realistic(build().eval())
    x = inputs()
    targets = torch.zeros(len(x), dtype=torch.long)
    task = Task(model=model, train=(x, targets), val=(x, targets))
    return Problem(task, budget=budget, granularity=granularity, bn_samples=0), x


def _real_flops(model: nn.Module, x: Tensor) -> int:
    """MACs of one sample, by torch's own FLOP counter (which counts 2 per MAC)."""
    return zoo.count_flops(model, x[:1]) // 2


def _search_step(problem: Problem) -> None:
    results = LocalEvaluator(problem).evaluate(problem.space.sample(np.random.default_rng(0), 2))
    assert len(results) == 2
    for result in results:
        assert math.isfinite(result.fitness)
        metrics = result.evaluation.metrics
        assert problem.budget.met_by(metrics[problem.budget.stat])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channel_search_and_compact_export(name: str) -> None:
    problem, x = _problem(name, Budget("flops", 0.5), "channel")
    assert len(problem.graph.prunable_groups()) == MODELS[name][2]
    _search_step(problem)
    genome = problem.space.repair(problem.space.sample(np.random.default_rng(1), 1))[0]
    masks = problem.space.decode(genome)
    small = compact(problem.model, masks, problem.layers, problem.graph)
    with problem.masked(masks) as masked, torch.no_grad():
        expected = masked(x)
    with torch.no_grad():
        check_outputs(small(x), expected, f"compact {name}")
    stats = problem.exact_stats(masks)
    assert stats["flops_fraction"] <= 0.5 + 1e-9
    assert stats["params"] == sum(p.numel() for p in small.parameters())
    assert stats["params"] < sum(p.numel() for p in problem.model.parameters())
    assert stats["flops"] == _real_flops(small, x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weight_search_and_compact_export(name: str) -> None:
    problem, x = _problem(name, Budget("sparsity", 0.5), "weight")
    _search_step(problem)
    genome = problem.space.repair(problem.space.sample(np.random.default_rng(1), 1))[0]
    masks = problem.space.decode(genome)
    small = compact(problem.model, masks, problem.layers, problem.graph)
    with problem.masked(masks) as masked, torch.no_grad():
        expected = masked(x)
    with torch.no_grad():
        check_outputs(small(x), expected, f"compact {name}")
    # at weight granularity the stats are the masked model's nonzero weights
    zeros = sum(int((layer.weight(small) == 0).sum()) for layer in problem.layers)
    stats = problem.exact_stats(masks)
    assert stats["params"] == sum(p.numel() for p in small.parameters()) - zeros
    nonzero_macs = sum(
        int(layer.weight(small).count_nonzero()) * layer.positions for layer in problem.layers
    )
    attention = sum(len(positions) * macs for positions, macs in problem.graph.products)
    assert stats["flops"] == nonzero_macs + attention + problem.graph.other_flops
    assert stats["sparsity"] >= 0.5 - 1e-9


def test_multihead_attention_loses_heads_in_a_module_that_can_have_fewer() -> None:
    """nn.MultiheadAttention in nn.TransformerEncoderLayer: a head's packed q, k, v rows
    and its out_proj columns leave together; compact swaps in a module with fewer heads,
    which the encoder layer calls as before (and keeps off its fused path)."""
    problem, x = _problem("transformer_lm", Budget("flops", 0.5), "channel")
    name = "encoder.layers.0.self_attn"
    heads = next(unit for unit in problem.cost.units if unit.layers == (name,))
    assert heads.size == 4
    assert np.bincount(heads.element_of[name]).tolist() == [3 * 8] * 4
    keep = [torch.ones(unit.size, dtype=torch.bool) for unit in problem.cost.units]
    keep[problem.cost.units.index(heads)] = torch.tensor([True, False, True, False])
    masks = problem.cost.channel_masks(keep)
    small = compact(problem.model, masks, problem.layers, problem.graph)
    attention = small.get_submodule(name)
    assert attention.num_heads == 2 and attention.in_proj_weight.shape == (48, 32)
    assert small.get_submodule(f"{name}.out_proj").in_features == 16
    with problem.masked(masks) as masked, torch.no_grad():
        expected = masked(x)
    with torch.no_grad():
        check_outputs(small(x), expected, "language model without two heads")
    stats = problem.exact_stats(masks)
    assert stats["params"] == sum(p.numel() for p in small.parameters())
    assert stats["flops"] == _real_flops(small, x)


def test_attention_heads_leave_whole_and_the_module_is_told() -> None:
    """timm's Attention: a head's q, k and v rows and its proj columns are one element;
    compact sets the module's head count and width."""
    problem, x = _problem("vit", Budget("flops", 0.5), "channel")
    heads = [unit for unit in problem.cost.units if unit.layers == ("blocks.0.attn.qkv",)]
    assert len(heads) == 1 and heads[0].size == 3  # vit_tiny: 3 heads of 64
    assert np.bincount(heads[0].element_of["blocks.0.attn.qkv"]).tolist() == [3 * 64] * 3
    keep = [torch.ones(unit.size, dtype=torch.bool) for unit in problem.cost.units]
    keep[problem.cost.units.index(heads[0])] = torch.tensor([True, False, True])
    masks = problem.cost.channel_masks(keep)
    small = compact(problem.model, masks, problem.layers, problem.graph)
    attention = small.get_submodule("blocks.0.attn")
    assert (attention.num_heads, attention.attn_dim) == (2, 128)
    assert attention.qkv.out_features == 3 * 128 and attention.proj.in_features == 128
    with problem.masked(masks) as masked, torch.no_grad():
        expected = masked(x)
    with torch.no_grad():
        check_outputs(small(x), expected, "vit without a head")
