"""Discovery of prunable layers and their dense params and FLOPs.

FLOPs are counted as multiply-accumulates (MACs) per sample, the convention of most
pruning papers (e.g. He et al. 2018, AMC): a Linear or Conv layer costs
``weight.numel() * output_positions`` MACs, where ``output_positions`` is the number of
spatial output positions (1 for a Linear on a 2-D input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from searchprune.registry import SpecError

PRUNABLE_TYPES: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
}


class NoPrunableLayerError(SpecError):
    """The model has no layer that can be pruned."""


@dataclass(frozen=True)
class LayerInfo:
    """One Linear/Conv layer: its shape, dense params and dense FLOPs (MACs per sample).

    ``prunable`` is False for layers kept dense (the output layer by default); they are
    still counted in the model's params and FLOPs.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    has_bias: bool
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    positions: int
    prunable: bool
    order: int

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1] * self.groups

    @property
    def numel(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def params(self) -> int:
        return self.numel + (self.out_channels if self.has_bias else 0)

    @property
    def flops(self) -> int:
        return self.numel * self.positions


def _spatial_positions(output: Tensor, kind: str) -> int:
    if kind == "linear":
        return math.prod(output.shape[1:-1]) if output.dim() > 2 else 1
    return math.prod(output.shape[2:])


@torch.no_grad()
def discover_layers(
    model: nn.Module,
    example_input: Tensor,
    *,
    exclude_output: bool = True,
    exclude: Sequence[str] = (),
) -> list[LayerInfo]:
    """Find every Linear/Conv1d/Conv2d layer of ``model`` in the order it is called.

    A forward pass on ``example_input`` records each layer's output shape (for FLOPs).
    The last layer called is the output layer and is kept dense when ``exclude_output``
    is true; layers named in ``exclude`` are kept dense too. Layers never called by the
    forward pass are left out.

    :raises NoPrunableLayerError: when no layer is left to prune.
    """
    candidates = {
        name: module for name, module in model.named_modules() if type(module) in PRUNABLE_TYPES
    }
    unknown = sorted(set(exclude) - set(candidates))
    if unknown:
        raise SpecError(
            f"space.exclude names {unknown}, which are not Linear/Conv layers of the model; "
            f"its layers are: {sorted(candidates)}"
        )
    seen: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name not in seen:
                seen[name] = _spatial_positions(output, PRUNABLE_TYPES[type(module)])
                order.append(name)

        return hook

    for name, module in candidates.items():
        handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(example_input.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    kept_dense = set(exclude)
    if exclude_output and order:
        kept_dense.add(order[-1])
    layers = []
    for index, name in enumerate(order):
        module = candidates[name]
        kind = PRUNABLE_TYPES[type(module)]
        is_conv = isinstance(module, nn.Conv1d | nn.Conv2d)
        layers.append(
            LayerInfo(
                name=name,
                kind=kind,
                weight_shape=tuple(module.weight.shape),
                has_bias=getattr(module, "bias", None) is not None,
                groups=module.groups if is_conv else 1,
                kernel_size=tuple(module.kernel_size) if is_conv else (),
                stride=tuple(module.stride) if is_conv else (),
                positions=seen[name],
                prunable=name not in kept_dense,
                order=index,
            )
        )
    if not any(layer.prunable for layer in layers):
        found = ", ".join(layer.name for layer in layers) or "none"
        raise NoPrunableLayerError(
            f"model {type(model).__name__} has no prunable layer (Linear/Conv1d/Conv2d "
            f"called in forward, other than the output layer); found: {found}. "
            "Set space.exclude_output: false to allow pruning the output layer."
        )
    return layers
