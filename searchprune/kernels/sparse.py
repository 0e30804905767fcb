"""``sparsify``: run pruned Linear and Conv layers on sparse or smaller kernels.

Kernels, per layer:

- ``csr`` / ``bsr``: on CPU the fast route is a sparse weight on the *left* of the
  transposed input, ``torch.addmm(bias_column, W_sparse, x.T).T`` (``F.linear`` with a
  CSR weight was several times slower at batch > 1 here). Convolutions unfold their
  input (im2col) and take the same route.
- ``compact``: only the weight's live rows and columns, as a smaller dense layer between
  a gather and a scatter (:mod:`searchprune.kernels.gather`); pays off for channel and
  unit pruning.
- ``2:4``: semi-structured sparse tensor cores on CUDA GPUs of capability 8.0+
  (:mod:`searchprune.kernels.semi_structured`).

Converting to a sparse format costs more than a dense forward pass, so sparse layers are
for the final model and latency measurement, not per candidate. ``format="auto"`` times
every layer on its own input at the target batch size and device, dense against every
kernel that applies (``compact`` where rows or columns are dead, ``2:4`` where the GPU
and the weight allow it), and keeps the fastest.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.core.masks import MaskSet, apply_masks
from searchprune.kernels.gather import GatherScatterLayer, Layer, has_dead_rows_or_columns
from searchprune.kernels.semi_structured import (
    SemiStructuredLinear,
    is_two_four,
    semi_structured_available,
)

Format = Literal["dense", "csr", "bsr", "compact", "2:4", "auto"]
SEMI_STRUCTURED = "2:4"
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PLAIN_FORWARDS = {nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward}


def _to_sparse(weight: Tensor, kind: str, blocksize: int) -> Tensor:
    """``weight`` in CSR or BSR form with 32-bit indices (the product with int32
    indices measured 8-25% faster than with torch's default int64 ones here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        if kind == "csr":
            wide = weight.to_sparse_csr()
            build = torch.sparse_csr_tensor
        else:
            wide = weight.to_sparse_bsr((blocksize, blocksize))
            build = torch.sparse_bsr_tensor
        if weight.numel() >= 2**31:  # int32 cannot index it
            return wide
        return build(wide.crow_indices().int(), wide.col_indices().int(), wide.values(), wide.shape)


def _sparse_affine(weight: Tensor, bias: Tensor | None, columns: Tensor) -> Tensor:
    """``weight @ columns + bias`` with the sparse weight on the left (the fast CPU route)."""
    if bias is None:
        return torch.sparse.mm(weight, columns)
    return torch.addmm(bias, weight, columns)


def _bias_column(layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> Tensor | None:
    """The layer's bias as an ``(out, 1)`` column, the shape ``addmm`` adds to ``W @ x.T``."""
    return None if layer.bias is None else layer.bias.detach().reshape(-1, 1).clone()


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored and multiplied in CSR or BSR form.

    ``bias`` is kept as an ``(out_features, 1)`` column.
    """

    weight: Tensor
    bias: Tensor | None

    def __init__(self, layer: nn.Linear, kind: str, blocksize: int = 16) -> None:
        super().__init__()
        self.kind, self.in_features, self.out_features = kind, layer.in_features, layer.out_features
        self.register_buffer("weight", _to_sparse(layer.weight.detach(), kind, blocksize))
        self.register_buffer("bias", _bias_column(layer))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # the common case, without reshapes
            return _sparse_affine(self.weight, self.bias, x.T).T
        out = _sparse_affine(self.weight, self.bias, x.reshape(-1, self.in_features).T)
        return out.T.reshape(*x.shape[:-1], self.out_features)

    def columns_product(self, columns: Tensor) -> Tensor:
        """``W @ columns + bias`` for inputs laid out one per column."""
        return _sparse_affine(self.weight, self.bias, columns)


class SparseConv(nn.Module):
    """A Conv1d/Conv2d layer run as im2col followed by a sparse matrix product.

    The weight, flattened to ``(out_channels, in_channels * kernel)``, lives in
    ``matrix``: a :class:`SparseLinear` (CSR/BSR) or a
    :class:`~searchprune.kernels.semi_structured.SemiStructuredLinear` (2:4).
    """

    def __init__(
        self, layer: nn.Conv1d | nn.Conv2d, kind: str, blocksize: int = 16, name: str = "layer"
    ) -> None:
        super().__init__()
        if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError("sparse convolutions support groups=1 and numeric zero padding")
        self.kind, self.one_d = kind, isinstance(layer, nn.Conv1d)
        pad = tuple(layer.padding)
        self.kernel = (1, *layer.kernel_size) if self.one_d else tuple(layer.kernel_size)
        self.stride = (1, *layer.stride) if self.one_d else tuple(layer.stride)
        self.padding = (0, *pad) if self.one_d else pad
        self.dilation = (1, *layer.dilation) if self.one_d else tuple(layer.dilation)
        self.out_channels = layer.out_channels
        self.matrix = _matrix_layer(_as_linear(layer), kind, blocksize, name)

    def forward(self, x: Tensor) -> Tensor:
        images = x.unsqueeze(2) if self.one_d else x
        columns = F.unfold(images, self.kernel, self.dilation, self.padding, self.stride)
        batch, rows, positions = columns.shape
        flat = columns.permute(1, 0, 2).reshape(rows, batch * positions)
        out = self.matrix.columns_product(flat)
        out = out.reshape(self.out_channels, batch, positions).permute(1, 0, 2)
        span = self.dilation[0] * (self.kernel[0] - 1) + 1
        height = (images.shape[2] + 2 * self.padding[0] - span) // self.stride[0] + 1
        result = out.reshape(batch, self.out_channels, height, -1)
        return result.squeeze(2) if self.one_d else result


def _as_linear(layer: nn.Conv1d | nn.Conv2d) -> nn.Linear:
    """The convolution's weight as a Linear layer over its unfolded input columns."""
    matrix = layer.weight.detach().reshape(layer.out_channels, -1)
    linear = nn.Linear(matrix.shape[1], matrix.shape[0], bias=layer.bias is not None)
    linear = linear.to(device=matrix.device, dtype=matrix.dtype)
    with torch.no_grad():
        linear.weight.copy_(matrix)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


def _matrix_layer(
    layer: nn.Linear, kind: str, blocksize: int, name: str
) -> SparseLinear | SemiStructuredLinear:
    if kind == SEMI_STRUCTURED:
        return SemiStructuredLinear(layer, name)
    return SparseLinear(layer, kind, blocksize)


def _sparse_layer(layer: nn.Module, kind: str, blocksize: int, name: str = "layer") -> nn.Module:
    """``layer`` (Linear, Conv1d or Conv2d) on kernel ``kind``."""
    if kind == "dense":
        return layer
    if kind == "compact":
        return GatherScatterLayer(layer)
    if isinstance(layer, nn.Linear):
        return _matrix_layer(layer, kind, blocksize, name)
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
    return SparseConv(layer, kind, blocksize, name)


def median_latency(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` calls (no grad); CUDA work
    is waited for before each clock reading."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def candidate_kinds(layer: Layer) -> list[str]:
    """The kernels ``auto`` times for ``layer``: dense, CSR and BSR always; ``compact``
    when whole rows or columns are dead; ``2:4`` when the GPU and the weight allow it."""
    kinds = ["dense", "csr", "bsr"]
    if has_dead_rows_or_columns(layer):
        kinds.append("compact")
    weight = layer.weight.detach()
    if semi_structured_available(weight.device) and is_two_four(weight):
        kinds.append(SEMI_STRUCTURED)
    return kinds


def _fastest(layer: Layer, example: Tensor, blocksize: int, repeats: int) -> str:
    timings = {}
    for kind in candidate_kinds(layer):
        try:
            candidate = _sparse_layer(layer, kind, blocksize)
        except (RuntimeError, ValueError):
            continue  # e.g. BSR blocks that do not tile the weight, a 2:4 shape refused
        timings[kind] = median_latency(partial(candidate, example), repeats=repeats)
    return min(timings, key=timings.__getitem__)


def _layer_inputs(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    inputs: dict[str, Tensor] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs.setdefault(name, args[0].detach())

        return record

    handles = [
        module.register_forward_hook(recorder(name))
        for name, module in model.named_modules()
        # a subclass with its own forward (timm's Conv2dSame pads, ScaledStdConv2d
        # standardizes) computes something the kernels do not: it stays as it is
        if isinstance(module, _LAYERS) and type(module).forward in _PLAIN_FORWARDS
    ]
    with torch.inference_mode():
        model(example)
    for handle in handles:
        handle.remove()
    return inputs


def sparsify(
    model: nn.Module,
    example: Tensor,
    *,
    masks: MaskSet | None = None,
    format: Format = "auto",
    blocksize: int = 16,
    repeats: int = 10,
    layers: list[str] | None = None,
) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` (with ``masks`` applied, if given) whose Linear/Conv layers run
    on the chosen kernels, and the kernel each layer got.

    ``example`` is an input batch at the target batch size and device (``auto`` times
    each layer on it); ``layers`` limits the swap to those names (default: every Linear
    and Conv layer).
    """
    sparse_model = copy.deepcopy(model).eval()
    if masks is not None:
        apply_masks(sparse_model, masks)
    inputs = _layer_inputs(sparse_model, example)
    chosen: dict[str, str] = {}
    for name, layer_input in inputs.items():
        if layers is not None and name not in layers:
            continue
        module = sparse_model.get_submodule(name)
        assert isinstance(module, _LAYERS)  # _layer_inputs records only these
        kind = _fastest(module, layer_input, blocksize, repeats) if format == "auto" else format
        chosen[name] = kind
        replacement = _sparse_layer(module, kind, blocksize, name or "layer")
        if not name:  # the model is itself a single layer
            return replacement, chosen
        parent_name, _, child = name.rpartition(".")
        setattr(sparse_model.get_submodule(parent_name), child, replacement)
    return sparse_model, chosen
