"""Layer discovery, FLOPs, and dependency groups derived from the traced graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from searchprune.core.graph import build_dependency_graph
from searchprune.core.layers import NoPrunableLayerError, discover_layers
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet, Mnist1dCNN


def _layers_and_graph(model: nn.Module, features: int):  # type: ignore[no-untyped-def]
    example = torch.randn(1, features)
    layers = discover_layers(model, example)
    return layers, build_dependency_graph(model, example, layers)


def test_mlp_layers_params_and_flops() -> None:
    layers, _ = _layers_and_graph(DigitsMLP(), 64)
    assert [layer.weight_shape for layer in layers] == [(300, 64), (100, 300), (10, 100)]
    assert [layer.prunable for layer in layers] == [True, True, False]
    assert sum(layer.params for layer in layers) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert [layer.flops for layer in layers] == [64 * 300, 300 * 100, 100 * 10]


def test_conv_flops_count_output_positions() -> None:
    layers, _ = _layers_and_graph(Mnist1dCNN(), 40)
    # lengths 40 -> 19 -> 10 -> 5 with the published strides and paddings
    assert [layer.positions for layer in layers] == [19, 10, 5, 1]
    assert layers[0].flops == 25 * 1 * 5 * 19
    assert layers[1].flops == 25 * 25 * 3 * 10


def test_flatten_into_linear_maps_each_channel_to_a_block() -> None:
    layers, graph = _layers_and_graph(DigitsCNN(), 64)
    fc = next(layer for layer in layers if layer.kind == "linear")
    source = graph.inputs[fc.name]
    assert source is not None
    ((gid, channels),) = source.segments
    assert channels == 32 and source.repeat == 16  # 32 channels of 4x4
    last_conv = [layer for layer in layers if layer.kind == "conv2d"][-1]
    assert graph.group_of[last_conv.name] == gid


def test_residual_adds_tie_groups_and_batchnorm_follows() -> None:
    model = DigitsResNet()
    layers, graph = _layers_and_graph(model, 64)
    by_member = {member: group for group in graph.groups for member in group.members}
    convs = [layer.name for layer in layers if layer.kind == "conv2d"]
    stem = convs[0]
    stem_group = by_member[stem]
    # the identity block adds its second conv to the stem's output: same group
    assert len(stem_group.members) == 2 and stem_group.prunable
    # the downsampling block ties its second conv to the 1x1 shortcut conv
    tied = [g for g in graph.groups if len(g.members) == 2 and g is not stem_group]
    assert len(tied) == 1
    shortcut_kernels = {
        layers[[lay.name for lay in layers].index(m)].kernel_size for m in tied[0].members
    }
    assert (1, 1) in shortcut_kernels
    # every conv group carries the BatchNorms of all its members
    for group in graph.groups:
        if group.prunable:
            assert len(group.norms) == len(group.members)
    output_group = by_member[layers[-1].name]
    assert not output_group.prunable


def test_untraceable_model_falls_back_with_a_warning() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.a(x)
            if hidden.sum() > 0:  # data-dependent control flow defeats torch.fx
                hidden = hidden.relu()
            return self.b(hidden)

    model = Dynamic()
    layers = discover_layers(model, torch.randn(1, 4))
    with pytest.warns(UserWarning, match="could not trace"):
        graph = build_dependency_graph(model, torch.randn(1, 4), layers)
    assert not graph.traced and [g.members for g in graph.groups] == [["a"], ["b"]]


def test_model_without_prunable_layer_gets_a_clear_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(NoPrunableLayerError, match="no prunable layer.*exclude_output"):
        discover_layers(model, torch.randn(1, 4))


def test_exclude_names_unknown_layer() -> None:
    with pytest.raises(ValueError, match="space.exclude names"):
        discover_layers(DigitsMLP(), torch.randn(1, 64), exclude=["nope"])
