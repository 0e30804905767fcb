"""``MaskSet``: one boolean keep-mask per prunable layer, and its in-place application.

Granularities:

- ``weight``: any weight may be removed (unstructured; Han et al. 2015).
- ``channel`` (``unit`` for Linear): whole output channels are removed, together with
  the bias, the BatchNorm affine parameters and the residual partners of their
  dependency group (:mod:`searchprune.core.graph`).
- ``n:m``: in every run of ``m`` consecutive input weights of an output row, ``n`` are
  kept (semi-structured sparsity, e.g. 2:4 on NVIDIA Ampere; Mishra et al. 2021).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

GRANULARITIES = ("weight", "channel", "unit", "n:m")
_NM = re.compile(r"^(\d+):(\d+)$")


def parse_granularity(value: str) -> str:
    """Normalize a granularity name (``unit`` is ``channel``; ``2:4`` is an ``n:m``)."""
    if value == "unit":
        return "channel"
    if value in ("weight", "channel") or _NM.match(value):
        return value
    raise ValueError(
        f"unknown granularity {value!r}; use weight, channel (or unit), or n:m such as 2:4"
    )


def weight_attrs(module: nn.Module) -> tuple[str, str]:
    """The attributes holding a layer's weight and bias (``nn.MultiheadAttention`` keeps
    its packed input projection in ``in_proj_weight`` and ``in_proj_bias``)."""
    if isinstance(module, nn.MultiheadAttention):
        return "in_proj_weight", "in_proj_bias"
    return "weight", "bias"


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` highest-scored of every ``m`` consecutive weights along each output
    row (the input dimension, flattened with the kernel), e.g. 2:4 sparsity.

    :raises ValueError: when a row's length is not a multiple of ``m``.
    """
    if not 0 < n <= m:
        raise ValueError(f"n:m granularity needs 0 < n <= m, got {n}:{m}")
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(
            f"n:m granularity {n}:{m} needs each output row's length ({rows.shape[1]}) to be a "
            f"multiple of {m}"
        )
    blocks = rows.reshape(rows.shape[0], -1, m)
    top = blocks.topk(n, dim=-1).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(scores.shape)


class MaskSet:
    """Boolean keep-masks (True = kept) for prunable layers, plus channel masks for norms.

    ``weights`` maps a layer name to a mask of its weight's shape. ``channels`` maps a
    layer or BatchNorm name to a keep-mask over its output channels; for a layer, its
    bias follows it, and at channel granularity its weight does too (the weight mask is
    then the channel mask broadcast over the other dims).
    """

    def __init__(
        self,
        granularity: str,
        weights: Mapping[str, Tensor] | None = None,
        channels: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.granularity = granularity
        self.weights: dict[str, Tensor] = {k: v.bool() for k, v in (weights or {}).items()}
        self.channels: dict[str, Tensor] = {k: v.bool() for k, v in (channels or {}).items()}

    def weight_mask(self, layer: str, shape: tuple[int, ...]) -> Tensor:
        """The full weight-shaped keep-mask of ``layer`` (all True if unmasked)."""
        if layer in self.weights:
            return self.weights[layer]
        if layer in self.channels:
            channel = self.channels[layer]
            return channel.view(-1, *([1] * (len(shape) - 1))).expand(shape)
        return torch.ones(shape, dtype=torch.bool)

    def layer_names(self) -> list[str]:
        return sorted(set(self.weights) | set(self.channels))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskSet):
            return NotImplemented
        return (
            self.granularity == other.granularity
            and self.weights.keys() == other.weights.keys()
            and self.channels.keys() == other.channels.keys()
            and all(torch.equal(v, other.weights[k]) for k, v in self.weights.items())
            and all(torch.equal(v, other.channels[k]) for k, v in self.channels.items())
        )

    def __repr__(self) -> str:
        return (
            f"MaskSet(granularity={self.granularity!r}, weights={sorted(self.weights)}, "
            f"channels={sorted(self.channels)})"
        )

    # ------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> None:
        """Write the masks to a compressed ``.npz`` (readable without searchprune)."""
        arrays: dict[str, np.ndarray] = {"__granularity__": np.array(self.granularity)}
        for name, mask in self.weights.items():
            arrays[f"weight/{name}"] = mask.cpu().numpy()
        for name, mask in self.channels.items():
            arrays[f"channel/{name}"] = mask.cpu().numpy()
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> MaskSet:
        with np.load(path) as data:
            weights, channels = {}, {}
            for key in data.files:
                if key.startswith("weight/"):
                    weights[key[len("weight/") :]] = torch.from_numpy(data[key].copy())
                elif key.startswith("channel/"):
                    channels[key[len("channel/") :]] = torch.from_numpy(data[key].copy())
            return cls(str(data["__granularity__"]), weights, channels)

    # ----------------------------------------------- torch.nn.utils.prune bridge
    def to_torch_prune(self, model: nn.Module) -> None:
        """Attach these masks with :func:`torch.nn.utils.prune.custom_from_mask`.

        Masked layers then carry ``weight_orig`` and a ``weight_mask`` buffer, as with any
        of torch's own pruning methods; ``prune.remove`` makes the pruning permanent.
        """
        modules = dict(model.named_modules())
        for name in self.layer_names():
            module = modules[name]
            weight_attr, bias_attr = weight_attrs(module)
            weight = getattr(module, weight_attr, None)
            if not isinstance(weight, Tensor) or (
                name not in self.weights and weight.dim() < 2
            ):  # a norm's channel mask: no weight pruning
                continue
            shape = tuple(weight.shape)
            mask = self.weight_mask(name, shape).to(weight.device)
            prune.custom_from_mask(module, weight_attr, mask)
            if name in self.channels and getattr(module, bias_attr, None) is not None:
                prune.custom_from_mask(module, bias_attr, self.channels[name].to(weight.device))

    @classmethod
    def from_torch_prune(cls, model: nn.Module, granularity: str = "weight") -> MaskSet:
        """Read the ``weight_mask`` buffers that torch's pruning left on ``model``."""
        weights = {
            name: getattr(module, f"{weight_attrs(module)[0]}_mask").detach().cpu().bool()
            for name, module in model.named_modules()
            if hasattr(module, f"{weight_attrs(module)[0]}_mask")
        }
        if not weights:
            raise ValueError("the model carries no torch.nn.utils.prune masks (no weight_mask)")
        return cls(granularity, weights)


def _memory_view(tensor: Tensor) -> Tensor:
    """A 1-D view of a dense tensor's elements in memory order (any memory format)."""
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


class MaskApplier:
    """Applies a :class:`MaskSet` to a model in place and restores it bit-exactly.

    The dense values of every maskable tensor are copied once, when the applier is built;
    applying a mask is then one ``torch.mul(dense, mask, out=param)`` per tensor, and
    restoring is one ``copy_``: no deepcopy of the model per candidate. BatchNorm running
    statistics are saved too, so a recalibration can be undone.

    Masks that remove the ``k`` lowest-ranked weights of a layer (what the
    ``layer-ratios`` space decodes to) have a faster path, :meth:`apply_ranked`, which
    only writes the weights between the previous ``k`` and the new one.
    """

    def __init__(self, model: nn.Module, layers: list[str], norms: list[str]) -> None:
        self.model = model
        self._tensors: dict[str, tuple[Tensor, Tensor]] = {}
        self._weight: dict[str, str] = {}  # name -> key of its weight in _tensors
        self._bias: dict[str, str] = {}
        for name in [*layers, *norms]:
            self._register(name)
        self._touched: set[str] = set()
        self._orders: dict[str, Tensor] = {}
        self._views: dict[str, tuple[Tensor, Tensor]] = {}
        self._prefix: dict[str, int] = {}  # weight key -> k zeroed by apply_ranked

    def _register(self, name: str) -> None:
        """Keep dense copies of module ``name``'s maskable tensors."""
        module = self.model.get_submodule(name)
        weight_attr, bias_attr = weight_attrs(module)
        self._weight[name], self._bias[name] = f"{name}.{weight_attr}", f"{name}.{bias_attr}"
        attrs = (weight_attr, bias_attr, "running_mean", "running_var", "num_batches_tracked")
        for attr in attrs:
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                self._tensors[f"{name}.{attr}"] = (tensor.data, tensor.detach().clone())

    def __getstate__(self) -> dict[str, object]:
        """Pickle the dense copies only: the live tensors are the model's own, and must be
        found again in the unpickled model (pickling would otherwise copy them apart)."""
        state = self.__dict__.copy()
        state["_tensors"] = {key: dense for key, (_, dense) in self._tensors.items()}
        state["_views"] = {}  # views of the live tensors are made again after unpickling
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        dense_copies = state.pop("_tensors")
        self.__dict__.update(state)
        self._tensors = {}
        for key, dense in dense_copies.items():  # type: ignore[attr-defined]
            module_name, _, attr = key.rpartition(".")
            live = getattr(self.model.get_submodule(module_name), attr)
            self._tensors[key] = (live.data, dense)

    def _set(self, key: str, mask: Tensor) -> None:
        live, dense = self._tensors[key]
        torch.mul(dense, mask.to(dense.device), out=live)
        self._touched.add(key)
        self._prefix.pop(key, None)

    def set_orders(self, orders: Mapping[str, Tensor]) -> None:
        """Register, per layer, its flat weight indices from lowest to highest score."""
        for name, order in orders.items():
            live = self._tensors[self._weight[name]][0]
            order = order.to(torch.int64)
            if not live.is_contiguous():
                # logical (row-major) index -> offset in memory, so channels_last works too
                offsets = torch.arange(live.numel()).as_strided(live.shape, live.stride())
                order = offsets.reshape(-1)[order]
            self._orders[self._weight[name]] = order.to(live.device)

    def apply_ranked(self, removed: Mapping[str, int]) -> None:
        """Zero the ``removed[layer]`` lowest-ranked weights of each layer (ranks from
        :meth:`set_orders`) and undo everything else; equal to :meth:`apply` with the
        matching masks, but writes only what changed since the previous call."""
        keys = {self._weight[name] for name in removed}
        if not self._touched <= keys:
            for key in self._touched - keys:
                live, dense = self._tensors[key]
                live.copy_(dense)
                self._prefix.pop(key, None)
            self._touched &= keys
        for name, count in removed.items():
            key = self._weight[name]
            flat, dense_flat = self._flat_views(key)
            current = self._prefix.get(key)
            if current is None:
                if key in self._touched:
                    flat.copy_(dense_flat)
                current = 0
            order = self._orders[key]
            if count > current:
                flat.index_fill_(0, order[current:count], 0.0)
            elif count < current:
                back = order[count:current]
                flat.index_copy_(0, back, dense_flat.index_select(0, back))
            self._prefix[key] = count
            self._touched.add(key)

    def _flat_views(self, key: str) -> tuple[Tensor, Tensor]:
        """1-D memory-order views of a weight and its dense copy (made once, then kept)."""
        views = self._views.get(key)
        if views is None:
            live, dense = self._tensors[key]
            views = self._views[key] = (_memory_view(live), _memory_view(dense))
        return views

    def apply(self, masks: MaskSet) -> None:
        """Zero what ``masks`` removes, undoing any previous mask first.

        Tensors the new mask overwrites whole are not restored first (this runs once
        per candidate).
        """
        overwritten = {self._weight[name] for name in masks.weights}
        for key in self._touched - overwritten:
            live, dense = self._tensors[key]
            live.copy_(dense)
            self._prefix.pop(key, None)
        self._touched &= overwritten
        for name, mask in masks.weights.items():
            self._set(self._weight[name], mask)
        for name, channel in masks.channels.items():
            if name not in self._weight:  # a module masked for the first time (a LayerNorm)
                self._register(name)
            key = self._weight.get(name, "")
            if name not in masks.weights and key in self._tensors:
                live = self._tensors[key][0]
                self._set(key, channel.view(-1, *([1] * (live.dim() - 1))))
            if self._bias.get(name, "") in self._tensors:
                self._set(self._bias[name], channel)

    def mark_stats_changed(self) -> None:
        """Record that BatchNorm running statistics were changed (by recalibration)."""
        self._touched.update(
            key
            for key in self._tensors
            if key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )

    def restore(self) -> None:
        """Put back the dense values of everything changed since the last restore."""
        for key in self._touched:
            live, dense = self._tensors[key]
            live.copy_(dense)
        self._touched.clear()
        self._prefix.clear()

    @contextmanager
    def applied(self, masks: MaskSet) -> Iterator[nn.Module]:
        """Context manager: the model with ``masks`` applied, restored on exit."""
        self.apply(masks)
        try:
            yield self.model
        finally:
            self.restore()


@torch.no_grad()
def apply_masks(model: nn.Module, masks: MaskSet) -> None:
    """Zero in ``model`` what ``masks`` removes (weights, and biases/BatchNorm affine of
    removed channels), permanently."""
    modules = dict(model.named_modules())
    for name in masks.layer_names():
        module = modules[name]
        weight_attr, bias_attr = weight_attrs(module)
        weight = getattr(module, weight_attr, None)
        if isinstance(weight, Tensor) and name in masks.weights:
            weight.mul_(masks.weights[name].to(weight.device))
        if name in masks.channels:
            keep = masks.channels[name].to(weight.device if weight is not None else "cpu")
            for attr in (weight_attr, bias_attr):
                tensor = getattr(module, attr, None)
                masked_already = attr == weight_attr and name in masks.weights
                if isinstance(tensor, Tensor) and not masked_already:
                    tensor.mul_(keep.view(-1, *([1] * (tensor.dim() - 1))))
