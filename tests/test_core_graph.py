"""Layer discovery, FLOPs, and dependency groups derived from the traced graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.core.budget import Budget
from searchprune.core.graph import DependencyGraph, build_dependency_graph
from searchprune.core.layers import LayerInfo, NoPrunableLayerError, discover_layers
from searchprune.core.masks import MaskSet, apply_masks
from searchprune.kernels import compact
from searchprune.kernels.check import check_outputs
from searchprune.problem import Problem
from searchprune.space import BudgetError
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet, Mnist1dCNN


def _layers_and_graph(
    model: nn.Module, example: Tensor, **options: object
) -> tuple[list[LayerInfo], DependencyGraph]:
    model.eval()
    layers = discover_layers(model, example, **options)  # type: ignore[arg-type]
    return layers, build_dependency_graph(model, example, layers)


def _group_of(graph: DependencyGraph, layer: str) -> int:
    """The one group all output rows of ``layer`` belong to."""
    ids = {g.id for g in graph.groups if np.isin(graph.rows[layer], g.elements).any()}
    assert len(ids) == 1, f"{layer} spans groups {ids}"
    return ids.pop()


def _group(graph: DependencyGraph, layer: str):  # type: ignore[no-untyped-def]
    return graph.groups[_group_of(graph, layer)]


# --------------------------------------------------------------------- discovery
def test_mlp_layers_params_and_flops() -> None:
    layers, _ = _layers_and_graph(DigitsMLP(), torch.randn(1, 64))
    assert [layer.weight_shape for layer in layers] == [(300, 64), (100, 300), (10, 100)]
    assert [layer.prunable for layer in layers] == [True, True, False]
    assert sum(layer.params for layer in layers) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert [layer.flops for layer in layers] == [64 * 300, 300 * 100, 100 * 10]


def test_conv_flops_count_output_positions() -> None:
    layers, _ = _layers_and_graph(Mnist1dCNN(), torch.randn(1, 40))
    # lengths 40 -> 19 -> 10 -> 5 with the published strides and paddings
    assert [layer.positions for layer in layers] == [19, 10, 5, 1]
    assert layers[0].flops == 25 * 1 * 5 * 19
    assert layers[1].flops == 25 * 25 * 3 * 10


class _Tokens(nn.Module):
    """A Linear on (batch, tokens, features), a Linear subclass, a weight used through
    F.linear by another module, a conv3d and a transposed conv, an Embedding."""

    class MyLinear(nn.Linear):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = _Tokens.MyLinear(8, 12)
        self.shared = nn.Linear(12, 12)
        self.conv3 = nn.Conv3d(1, 2, 3, padding=1)
        self.up = nn.ConvTranspose1d(12, 4, 2, stride=2)
        self.head = nn.Linear(4 * 10 + 2 * 5 * 4 * 4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.mix(self.embed(tokens))  # (1, 5, 12): 5 positions
        x = F.linear(x, self.shared.weight, self.shared.bias)  # the weight, used functionally
        y = self.up(x.transpose(1, 2))  # (1, 4, 10) from 5 input positions
        z = self.conv3(torch.ones(1, 1, 5, 4, 4))
        return self.head(torch.cat([y.flatten(1), z.flatten(1)], 1))


def test_layers_found_by_isinstance_and_functional_use_and_positions() -> None:
    layers = discover_layers(_Tokens(), torch.randint(0, 20, (1, 5)))
    by_name = {layer.name: layer for layer in layers}
    assert [layer.name for layer in layers] == ["embed", "mix", "shared", "up", "conv3", "head"]
    assert by_name["embed"].kind == "embedding" and by_name["embed"].flops == 0
    assert by_name["mix"].positions == 5 and by_name["mix"].flops == 8 * 12 * 5
    assert by_name["shared"].positions == 5  # F.linear(x, self.shared.weight): still counted
    assert by_name["up"].kind == "conv_transpose1d" and by_name["up"].positions == 5
    assert by_name["conv3"].kind == "conv3d" and by_name["conv3"].positions == 5 * 4 * 4


def test_unknown_layer_types_are_named_once_and_weight_standardization_is_kept_dense() -> None:
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = StdConv(3, 4, 3)
            self.bilinear = nn.Bilinear(4, 4, 2)
            self.fc = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.conv(x).mean((2, 3))
            return self.fc(self.bilinear(h, h))

    class StdConv(nn.Conv2d):  # weight standardization: not linear in its weight
        def forward(self, x: Tensor) -> Tensor:
            w = self.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
            return F.conv2d(x, w, self.bias)

    with pytest.warns(UserWarning) as record:
        layers = discover_layers(Bilinear(), torch.randn(1, 3, 6, 6), exclude_output=False)
    messages = [str(w.message) for w in record]
    assert sum("Bilinear" in m for m in messages) == 1
    assert any("kept dense" in m and "'conv'" in m for m in messages)
    conv = next(layer for layer in layers if layer.name == "conv")
    assert conv.reparameterized and not conv.prunable and conv.positions == 16


def test_model_without_prunable_layer_gets_a_clear_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(NoPrunableLayerError, match="no prunable layer.*exclude_output"):
        discover_layers(model, torch.randn(1, 4))


def test_exclude_names_unknown_layer() -> None:
    with pytest.raises(ValueError, match="space.exclude names"):
        discover_layers(DigitsMLP(), torch.randn(1, 64), exclude=["nope"])


# --------------------------------------------------------------------- groups
def test_flatten_into_linear_maps_each_channel_to_a_block() -> None:
    layers, graph = _layers_and_graph(DigitsCNN(), torch.randn(1, 64))
    fc = next(layer for layer in layers if layer.kind == "linear")
    last_conv = [layer for layer in layers if layer.kind == "conv2d"][-1]
    cols = graph.cols[fc.name]
    assert cols is not None and cols.shape == (32 * 16,)
    # 32 channels of 4x4: each channel's element repeats over its 16 columns
    np.testing.assert_array_equal(
        cols.reshape(32, 16), np.repeat(graph.rows[last_conv.name], 16).reshape(32, 16)
    )


def test_residual_adds_tie_groups_and_batchnorm_follows() -> None:
    layers, graph = _layers_and_graph(DigitsResNet(), torch.randn(1, 64))
    convs = [layer.name for layer in layers if layer.kind == "conv2d"]
    stem_group = _group(graph, convs[0])
    # the identity block adds its second conv to the stem's output: same group
    assert len(stem_group.members) == 2 and stem_group.prunable
    # the downsampling block ties its second conv to the 1x1 shortcut conv
    tied = [g for g in graph.groups if len(g.members) == 2 and g.id != stem_group.id]
    assert len(tied) == 1
    kernels = {next(la for la in layers if la.name == m).kernel_size for m in tied[0].members}
    assert (1, 1) in kernels
    for group in graph.prunable_groups():  # every conv group carries its members' BatchNorms
        assert len(group.norms) == len(group.members)
    assert not _group(graph, layers[-1].name).prunable


class _Mobile(nn.Module):
    """Pointwise -> depthwise -> grouped conv, a squeeze-excitation gate, a concat
    followed by a BatchNorm, and a chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.grouped = nn.Conv2d(16, 8, 3, padding=1, groups=4)
        self.side = nn.Conv2d(3, 8, 1)
        self.bn_cat = nn.BatchNorm2d(16)
        self.left = nn.Conv2d(8, 5, 1)
        self.right = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.expand(x)))
        h = self.depthwise(h)
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        h = h * gate
        h = torch.cat([self.grouped(h), self.side(x)], 1)
        a, b = F.relu(self.bn_cat(h)).chunk(2, 1)
        return self.fc((self.left(a) + self.right(b)).mean((2, 3)))


def test_depthwise_grouped_gate_concat_and_chunk() -> None:
    _, graph = _layers_and_graph(_Mobile(), torch.randn(1, 3, 8, 8))
    expand = _group(graph, "expand")
    # a depthwise conv's output channel i is its input channel i; the gate multiplies them
    np.testing.assert_array_equal(graph.rows["depthwise"], graph.rows["expand"])
    np.testing.assert_array_equal(graph.rows["se_expand"], graph.rows["expand"])
    assert set(expand.members) == {"expand", "depthwise", "se_expand"}
    assert expand.norms == ["bn1"] and expand.prunable
    # the grouped conv keeps its groups equal: its i-th input channel in every group of 4
    # is one element, and so is its i-th output channel in every group of 2
    assert expand.size == 4
    assert len(set(graph.rows["grouped"].tolist())) == 2
    # the BatchNorm after the concat carries both sides' channels; chunk(2) ties the i-th
    # channel of each half: side's i-th with grouped's i-th
    assert _group(graph, "grouped").members == ["grouped", "side"]
    np.testing.assert_array_equal(graph.rows["side"], graph.rows["grouped"])
    np.testing.assert_array_equal(
        graph.norms["bn_cat"], np.concatenate([graph.rows["grouped"], graph.rows["side"]])
    )
    cols_left, cols_right = graph.cols["left"], graph.cols["right"]
    assert cols_left is not None and cols_right is not None
    np.testing.assert_array_equal(cols_left, cols_right)
    np.testing.assert_array_equal(graph.rows["left"], graph.rows["right"])  # added


class _ChannelsLast(nn.Module):
    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16, elementwise_affine=affine)
        self.d = nn.Linear(16, 4)
        self.e = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.b(torch.sigmoid(self.a(x)))  # sigmoid(0) = 0.5 reaches b
        h = self.c(h.permute(0, 2, 3, 1))  # channels last: a Linear on (B, H, W, C)
        h = F.gelu(self.d(self.norm(h)))
        return self.e(h.mean((1, 2)))


def test_nonzero_maps_freeze_and_layer_norm_runs_on_zero_padded_channels() -> None:
    model = _ChannelsLast()
    layers, graph = _layers_and_graph(model, torch.randn(1, 3, 4, 4))
    assert "maps a removed channel's 0 to a nonzero value" in str(_group(graph, "a").frozen)
    assert _group(graph, "b").prunable  # permuted channels reach the Linear c
    c_cols = graph.cols["c"]
    assert c_cols is not None
    np.testing.assert_array_equal(c_cols, graph.rows["b"])
    assert next(la for la in layers if la.name == "c").positions == 16
    # the LayerNorm's statistics mix c's channels: compact runs it on zero-padded input
    elements, dim, affine = graph.padded["norm"]
    np.testing.assert_array_equal(elements, graph.rows["c"])
    assert (dim, affine) == (3, True) and _group(graph, "c").prunable
    keep = torch.arange(16) % 3 != 0
    masks = MaskSet("channel", channels={"c": keep, "norm": keep})
    small = compact(model, masks, layers, graph)
    assert small.get_submodule("d").in_features == int(keep.sum())
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    x = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        check_outputs(small(x), masked(x), "compact with a LayerNorm")
    # without an affine to mask, a normalized zero is not zero: the channels stay
    _, plain = _layers_and_graph(_ChannelsLast(affine=False), torch.randn(1, 3, 4, 4))
    assert "nonzero" in str(_group(plain, "c").frozen)


def test_fixed_sizes_and_positions_in_the_code_freeze_what_they_pin() -> None:
    class Pinned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 6, 1)
            self.c = nn.Conv2d(3, 4, 1)
            self.d = nn.Conv2d(4, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            h = torch.cat([h[:, :3] + 1.0, h[:, 3:]], 1)  # a bound written in the code
            g = self.c(x)
            g = g.view(1, 2, g.size(1) // 2, 4, 4).flatten(1, 2)  # 2 is written in the code
            return self.b(h).sum() + self.d(g).sum()

    _, graph = _layers_and_graph(Pinned(), torch.randn(1, 3, 4, 4), exclude_output=False)
    a_groups = {g.id: g for g in graph.groups if np.isin(graph.rows["a"], g.elements).any()}
    frozen = [g for g in a_groups.values() if not g.prunable]
    assert sum(g.size for g in frozen) == 3 and "positions fixed" in str(frozen[0].frozen)
    assert sum(g.size for g in a_groups.values() if g.prunable) == 5
    # view(1, 2, 2, ...) pins the dim of size 2; channels may still leave along the other
    assert _group(graph, "c").prunable and _group(graph, "c").size == 2


def test_untraceable_submodule_is_kept_whole_and_the_rest_traced() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(8, 8)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                return self.inner(x).relu()
            return self.inner(x)

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Dynamic(), nn.Linear(8, 6), nn.Linear(6, 2))
    with pytest.warns(UserWarning, match=r"2 \(Dynamic\) could not be traced.*frozen"):
        _, graph = _layers_and_graph(model, torch.randn(1, 4))
    assert graph.traced
    assert "could not be traced" in str(_group(graph, "2.inner").frozen)
    assert _group(graph, "3").prunable  # after the opaque module, channels are followed
    assert not _group(graph, "0").prunable  # they feed the opaque module


def test_container_that_only_chains_its_children_is_traced_through_them() -> None:
    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                [nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4)) for _ in range(2)]
            )

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:  # control flow that does not change what is called
                pass
            for block in self.blocks:
                x = block(x)
            return x

    model = nn.Sequential(Chain(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="traced as the chain of the 2 submodules"):
        _, graph = _layers_and_graph(model, torch.randn(1, 4))
    assert _group(graph, "0.blocks.0.0").prunable and _group(graph, "0.blocks.1.0").prunable


def test_untraceable_model_freezes_every_channel_with_a_warning() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            hidden = self.a(x)
            if hidden.sum() > 0:  # in the root's own forward: nothing to trace around
                hidden = hidden.relu()
            return self.b(hidden)

    model = Dynamic()
    layers = discover_layers(model, torch.randn(1, 4))
    with pytest.warns(UserWarning, match="could not trace"):
        graph = build_dependency_graph(model, torch.randn(1, 4), layers)
    assert not graph.traced and not graph.prunable_groups()
    assert [g.members for g in graph.groups] == [["a"], ["b"]]


def test_an_unreachable_channel_budget_names_what_is_frozen_and_why() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
    x = torch.randn(8, 4)
    task = Task(model=model, train=(x, torch.zeros(8)), val=(x, torch.zeros(8)))
    with pytest.raises(BudgetError, match=r"8 channels: reaches 2 through an operation that"):
        Problem(task, budget=Budget("flops", 0.5), granularity="channel")
