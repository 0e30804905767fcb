"""One layer run on only its live rows and columns: the per-layer "compact" kernel.

A pruned layer whose weight has whole zero output rows (channels or units) or zero
input columns can run as a smaller dense layer: gather the live input channels, run the
kept submatrix, and scatter its outputs into a tensor holding the bias of the dead rows
(a dead row outputs its bias alone). Unlike :func:`searchprune.kernels.compact`, which
rebuilds the whole model along its dependency groups, this keeps every layer's input and
output shapes, so ``sparsify`` can choose it layer by layer, next to dense, CSR and BSR.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from searchprune.kernels.compact import in_layout_of, shrunk_layer

Layer = nn.Linear | nn.Conv1d | nn.Conv2d


def live_rows_and_columns(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean masks of the output rows and input columns (channels) of ``weight`` that
    hold a nonzero."""
    live = weight.detach().reshape(weight.shape[0], weight.shape[1], -1).ne(0)
    return live.flatten(1).any(1), live.any(2).any(0)


def has_dead_rows_or_columns(layer: Layer) -> bool:
    """Whether ``layer``'s weight has a whole zero output row or input column."""
    rows, columns = live_rows_and_columns(layer.weight)
    return not bool(rows.all() and columns.all())


class GatherScatterLayer(nn.Module):
    """``layer`` computed on the nonzero rows and columns of its weight only.

    The scatter is shape-free (so a traced copy runs at any batch size): the inner
    outputs get one zero channel appended, every output channel picks its source (a live
    row, or the zero channel for a dead one), and the dead rows' bias is added.

    :raises ValueError: for grouped convolutions (their input channels are tied to
        output groups) and for layers that are not Linear/Conv1d/Conv2d.
    """

    live_inputs: Tensor
    source: Tensor
    dead_bias: Tensor

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise ValueError(f"gather-scatter kernels take Linear/Conv layers, not {layer}")
        if not isinstance(layer, nn.Linear) and layer.groups != 1:
            raise ValueError("gather-scatter kernels support groups=1 convolutions only")
        weight = layer.weight.detach()
        live_rows, live_columns = (_at_least_one(live) for live in live_rows_and_columns(weight))
        live_outputs, live_inputs = live_rows.nonzero().flatten(), live_columns.nonzero().flatten()
        self.channel_dim = -1 if isinstance(layer, nn.Linear) else 1
        self.all_inputs = len(live_inputs) == weight.shape[1]
        self.all_outputs = len(live_outputs) == weight.shape[0]
        self.register_buffer("live_inputs", live_inputs)
        source = torch.full((weight.shape[0],), len(live_outputs), dtype=torch.long)
        source[live_outputs] = torch.arange(len(live_outputs))
        self.register_buffer("source", source.to(weight.device))
        bias = layer.bias.detach() if layer.bias is not None else weight.new_zeros(len(weight))
        dead_bias = bias.clone()
        dead_bias[live_outputs] = 0
        view = (-1,) if isinstance(layer, nn.Linear) else (-1,) + (1,) * (weight.dim() - 2)
        self.register_buffer("dead_bias", dead_bias.reshape(view))
        self.inner = shrunk_layer(layer, live_rows, live_columns)

    def forward(self, x: Tensor) -> Tensor:
        if not self.all_inputs:
            x = in_layout_of(x.index_select(self.channel_dim, self.live_inputs), x)
        y: Tensor = self.inner(x)
        if self.all_outputs:
            return y
        zero = torch.zeros_like(y.narrow(self.channel_dim, 0, 1))
        padded = torch.cat([y, zero], dim=self.channel_dim)
        return padded.index_select(self.channel_dim, self.source) + self.dead_bias


def _at_least_one(live: Tensor) -> Tensor:
    """``live``, with entry 0 marked live when none is (an all-zero slice keeps the inner
    layer's shapes valid and still computes the bias alone)."""
    if bool(live.any()):
        return live
    marked = live.clone()
    marked[0] = True
    return marked
