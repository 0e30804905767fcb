"""The output check: float rounding passes, a different function does not."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from searchprune.kernels.check import check_models, check_outputs


class Offset(nn.Module):
    """A layer whose outputs pass through a large offset and back: the same function
    either way, with rounding error of about 1e4 float eps of the outputs' scale (past
    the float32 tolerance of 1000 eps, as compounding rounding in a 150-layer net is)."""

    def __init__(self, halves: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(64, 64)
        self.halves = halves

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        if self.halves:
            return ((h + 5e3) + 5e3) - 1e4
        return (h + 1e4) - 1e4


def test_rounding_past_the_float32_tolerance_passes_in_float64() -> None:
    inputs = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    whole, halves = Offset(), Offset(halves=True)
    with pytest.raises(ValueError, match="differs from the masked model"):
        check_outputs(halves(inputs), whole(inputs), "in float32 alone")
    worst = check_models(halves, whole, inputs, "the same function")
    assert worst > 0.0  # the two really round differently
    wrong = Offset(halves=True)
    with torch.no_grad():
        wrong.layer.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="in float64 differs from the masked model"):
        check_models(wrong, whole, inputs, "another function")


def test_a_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match=r"outputs of shape \(2, 3\), expected \(2, 4\)"):
        check_outputs(torch.zeros(2, 3), torch.zeros(2, 4), "x")
