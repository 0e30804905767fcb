"""sparsify(): CSR/BSR layers compute what the masked dense layers compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from searchprune.core.budget import Budget
from searchprune.kernels import sparsify
from searchprune.kernels.sparse import SparseConv, SparseLinear
from searchprune.problem import Problem
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, Mnist1dCNN


@pytest.mark.parametrize("factory, features", [(DigitsCNN, 64), (Mnist1dCNN, 40)])
@pytest.mark.parametrize("kind", ["csr", "bsr", "auto"])
def test_sparse_models_equal_the_masked_model(
    factory: type[nn.Module], features: int, kind: str
) -> None:
    torch.manual_seed(0)
    inputs = torch.randn(32, features)
    labels = torch.zeros(32, dtype=torch.long)
    problem = Problem(
        Task(factory(), (inputs, labels), (inputs, labels)),
        budget=Budget("sparsity", 0.9),
        channels_last=False,
    )
    masks = problem.space.decode(
        problem.space.repair(problem.space.sample(np.random.default_rng(0), 1))[0]
    )
    blocksize = 1 if kind == "bsr" else 16  # BSR blocks must tile every weight
    model, chosen = sparsify(
        problem.model, inputs, masks=masks, format=kind, blocksize=blocksize, repeats=2
    )
    with problem.masked(masks) as masked, torch.inference_mode():
        expected = masked(inputs)
    with torch.inference_mode():
        got = model(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert set(chosen) == {layer.name for layer in problem.layers}
    if kind != "auto":
        swapped = [m for m in model.modules() if isinstance(m, (SparseLinear, SparseConv))]
        assert len(swapped) == len(problem.layers) and all(m.kind == kind for m in swapped)
    else:
        assert set(chosen.values()) <= {"dense", "csr", "bsr"}


def test_sparse_conv_rejects_grouped_convolutions() -> None:
    with pytest.raises(ValueError, match="groups=1"):
        SparseConv(nn.Conv2d(4, 4, 3, groups=2), "csr")


def test_a_bare_layer_is_swapped_too() -> None:
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    model, chosen = sparsify(layer, x, format="csr")
    assert isinstance(model, SparseLinear) and chosen == {"": "csr"}
    torch.testing.assert_close(model(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["csr", "bsr"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_takes_any_leading_shape_and_uses_int32_indices(
    kind: str, bias: bool
) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(32, 48, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) > 0.8)
    sparse = SparseLinear(layer, kind, blocksize=16)
    assert sparse.weight.crow_indices().dtype == torch.int32
    for shape in [(5, 32), (3, 5, 32), (32,)]:
        x = torch.randn(shape)
        torch.testing.assert_close(sparse(x), layer(x), rtol=1e-4, atol=1e-5)
