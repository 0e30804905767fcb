"""sparsify(): CSR, BSR, compact and 2:4 layers compute what the masked dense layers compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet, nm_mask
from searchprune.kernels import sparsify
from searchprune.kernels.gather import GatherScatterLayer, has_dead_rows_or_columns
from searchprune.kernels.semi_structured import is_two_four, semi_structured_available
from searchprune.kernels.sparse import SparseConv, SparseLinear, candidate_kinds
from searchprune.problem import Problem
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, Mnist1dCNN


def _random_candidate(
    factory: type[nn.Module], features: int, budget: Budget, granularity: str = "weight"
) -> tuple[Problem, MaskSet, torch.Tensor]:
    """A problem over a fresh ``factory()`` model on random inputs, one repaired random
    candidate's masks, and the inputs."""
    torch.manual_seed(0)
    inputs = torch.randn(32, features)
    labels = torch.zeros(32, dtype=torch.long)
    problem = Problem(
        Task(factory(), (inputs, labels), (inputs, labels)),
        budget=budget,
        granularity=granularity,
        channels_last=False,
    )
    genome = problem.space.repair(problem.space.sample(np.random.default_rng(0), 1))[0]
    return problem, problem.space.decode(genome), inputs


@pytest.mark.parametrize("factory, features", [(DigitsCNN, 64), (Mnist1dCNN, 40)])
@pytest.mark.parametrize("kind", ["csr", "bsr", "auto"])
def test_sparse_models_equal_the_masked_model(
    factory: type[nn.Module], features: int, kind: str
) -> None:
    problem, masks, inputs = _random_candidate(factory, features, Budget("sparsity", 0.9))
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
        swapped = [model.get_submodule(name) for name in chosen]
        assert all(isinstance(m, (SparseLinear, SparseConv)) for m in swapped)
        assert all(m.kind == kind for m in swapped)
    else:  # which kernel is fastest depends on the machine; compact needs dead rows/columns
        assert set(chosen.values()) <= {"dense", "csr", "bsr", "compact"}
        dead = {layer.name: _has_dead_lines(problem, masks, layer.name) for layer in problem.layers}
        assert all(dead[name] for name, kernel in chosen.items() if kernel == "compact")


def _has_dead_lines(problem: Problem, masks: MaskSet, name: str) -> bool:
    mask = masks.weight_mask(name, problem.model.get_submodule(name).weight.shape)
    lines = mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1)
    return not bool(lines.any(1).all() and lines.any(0).all())


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


@pytest.mark.parametrize("factory, features", [(DigitsCNN, 64), (Mnist1dCNN, 40)])
def test_compact_kernels_equal_the_masked_model_under_channel_pruning(
    factory: type[nn.Module], features: int
) -> None:
    problem, masks, inputs = _random_candidate(
        factory, features, Budget("flops", 0.4), granularity="channel"
    )
    model, chosen = sparsify(problem.model, inputs, masks=masks, format="compact")
    with problem.masked(masks) as masked, torch.inference_mode():
        expected = masked(inputs)
        got = model(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert set(chosen.values()) == {"compact"}
    inner = [m.inner for m in model.modules() if isinstance(m, GatherScatterLayer)]
    original = [problem.model.get_submodule(name) for name in chosen]
    assert sum(m.weight.numel() for m in inner) < sum(m.weight.numel() for m in original)
    with problem.masked(masks) as masked:
        kinds = [candidate_kinds(masked.get_submodule(name)) for name in chosen]
    # every layer but the output one loses whole output channels or units
    assert all(k == ["dense", "csr", "bsr", "compact"] for k in kinds[:-1])


def test_compact_kernel_keeps_dead_rows_at_their_bias() -> None:
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight[1:4] = 0  # three dead output units
        layer.weight[:, 0] = 0  # one dead input
    compact_layer = GatherScatterLayer(layer)
    assert compact_layer.inner.weight.shape == (2, 5)
    assert has_dead_rows_or_columns(layer) and "compact" in candidate_kinds(layer)
    x = torch.randn(4, 6)
    torch.testing.assert_close(compact_layer(x), layer(x))
    with torch.no_grad():
        layer.weight.zero_()  # nothing alive at all: outputs are the bias
    torch.testing.assert_close(GatherScatterLayer(layer)(x), layer.bias.expand(4, 5))
    assert not has_dead_rows_or_columns(nn.Linear(6, 5))


@given(rows=st.integers(1, 6), groups=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_two_four_detection_matches_nm_masks(rows: int, groups: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, 4 * groups, generator=generator)
    weight = scores * nm_mask(scores, 2, 4)
    assert is_two_four(weight)
    weight[0, :3] = 1.0  # three nonzeros in the first group of four
    assert not is_two_four(weight)
    assert not is_two_four(torch.ones(rows, 4 * groups + 2))  # rows not in groups of four


@pytest.mark.skipif(
    semi_structured_available("cuda"), reason="checks the error raised without a capable GPU"
)
def test_two_four_without_a_capable_gpu_is_a_clear_error() -> None:
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.mul_(nm_mask(layer.weight.abs(), 2, 4))
    with pytest.raises(ValueError, match=r"layer: 2:4 kernels run on CUDA GPUs .* use format"):
        sparsify(layer, torch.randn(4, 64), format="2:4")
    assert "2:4" not in candidate_kinds(layer)


@pytest.mark.skipif(
    not semi_structured_available("cuda"), reason="needs a CUDA GPU of capability 8.0+"
)
def test_two_four_kernels_equal_the_masked_model_on_a_gpu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64)).cuda().half()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(nm_mask(layer.weight.abs(), 2, 4))
    x = torch.randn(32, 128, device="cuda", dtype=torch.half)
    sparse, chosen = sparsify(model, x, format="2:4")
    assert chosen == {"0": "2:4", "2": "2:4"}
    torch.testing.assert_close(sparse(x), model(x), rtol=1e-2, atol=1e-2)
    _, auto_chosen = sparsify(model, x, format="auto")
    assert set(auto_chosen.values()) <= {"dense", "csr", "bsr", "2:4"}


@pytest.mark.parametrize(
    "layer, shape",
    [(nn.Linear(6, 5), (6,)), (nn.Conv2d(4, 6, 3, padding=1), (4, 5, 5))],
)
def test_a_traced_compact_kernel_runs_at_any_batch_size(
    layer: nn.Module, shape: tuple[int, ...]
) -> None:
    with torch.no_grad():
        layer.weight[1:3] = 0  # dead outputs
        layer.weight[:, 0] = 0  # a dead input
    compact_layer = GatherScatterLayer(layer).eval()
    traced = torch.jit.trace(compact_layer, torch.randn(1, *shape))
    x = torch.randn(7, *shape)
    torch.testing.assert_close(traced(x), layer(x), rtol=1e-4, atol=1e-5)
