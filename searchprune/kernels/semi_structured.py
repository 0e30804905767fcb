"""2:4 semi-structured sparse layers on NVIDIA GPUs (compute capability 8.0 and newer).

In 2:4 ("semi-structured") sparsity at most two of every four consecutive weights along
a row are nonzero; Ampere and newer tensor cores skip the zeros, halving the work of a
matrix product (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). Torch
stores such a weight compressed with :func:`torch.sparse.to_sparse_semi_structured`
(CUTLASS or cuSPARSELt) for float16 and bfloat16. A float32 layer is converted to
float16 here, and its input and output cast around the product, so the layer stays a
drop-in replacement (expect float16 rounding in its outputs).

Weights get the pattern from :func:`searchprune.core.masks.nm_mask` (``nm_mask(scores,
2, 4)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

HALF_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)
ROW_MULTIPLE, COLUMN_MULTIPLE = 32, 64  # what both torch backends accept for 16-bit weights


def semi_structured_available(device: torch.device | str) -> bool:
    """Whether 2:4 kernels can run on ``device`` (a CUDA GPU of capability 8.0+)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def is_two_four(weight: Tensor) -> bool:
    """Whether every four consecutive weights of each row hold at most two nonzeros."""
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[1] % 4:
        return False
    return bool(rows.ne(0).reshape(rows.shape[0], -1, 4).sum(2).le(2).all())


def check_semi_structured(weight: Tensor, name: str = "layer") -> None:
    """Raise a :class:`ValueError` naming ``name`` and the fix when ``weight`` cannot be
    stored in 2:4 form: not on a capable GPU, not 2:4 sparse, or a shape torch refuses."""
    if not semi_structured_available(weight.device):
        raise ValueError(
            f"{name}: 2:4 kernels run on CUDA GPUs of compute capability 8.0+ (Ampere or "
            f"newer); this weight is on {weight.device}. Move the model and the example "
            "input to such a GPU, or use format csr, bsr or auto."
        )
    if not is_two_four(weight):
        raise ValueError(
            f"{name}: the weight is not 2:4 sparse (at most 2 nonzeros in every 4 "
            "consecutive inputs); make its mask with searchprune.core.masks.nm_mask(scores, 2, 4)"
        )
    rows, columns = weight.shape[0], weight[0].numel()
    if rows % ROW_MULTIPLE or columns % COLUMN_MULTIPLE:
        raise ValueError(
            f"{name}: 2:4 kernels need a weight of (multiple of {ROW_MULTIPLE}) x (multiple "
            f"of {COLUMN_MULTIPLE}); this one is {rows} x {columns}"
        )


class SemiStructuredLinear(nn.Module):
    """A Linear layer whose 2:4 sparse weight is multiplied by the GPU's sparse tensor
    cores (see the module docstring for dtypes)."""

    def __init__(self, layer: nn.Linear, name: str = "layer") -> None:
        super().__init__()
        weight = layer.weight.detach()
        check_semi_structured(weight, name)
        dtype = weight.dtype if weight.dtype in HALF_DTYPES else torch.float16
        compressed = torch.sparse.to_sparse_semi_structured(weight.to(dtype).contiguous())
        self.weight = nn.Parameter(compressed, requires_grad=False)
        bias = None if layer.bias is None else layer.bias.detach().to(dtype).clone()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        out = F.linear(flat, self.weight, self.bias).to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def columns_product(self, columns: Tensor) -> Tensor:
        """``W @ columns + bias`` for inputs laid out one per column."""
        out: Tensor = self(columns.T.contiguous()).T
        return out
