"""Tests for the built-in tasks: data splits, models, training and the weight cache."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from searchprune.tasks import BUILTIN_TASKS, Split, Task, load_builtin_task, score_model
from searchprune.tasks.data import load_digits_splits, load_mnist1d_splits
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet, Mnist1dCNN, Mnist1dMLP
from searchprune.tasks.train import train_loop

MODELS: list[tuple[type[nn.Module], int]] = [
    (DigitsMLP, 64),
    (DigitsCNN, 64),
    (DigitsResNet, 64),
    (Mnist1dMLP, 40),
    (Mnist1dCNN, 40),
]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread, and a fresh default cache so no test writes to ``~/.cache``."""
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(tmp_path / "cache"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding digits-mlp (seed 0), trained once per session."""
    cache = tmp_path_factory.mktemp("searchprune-cache")
    load_builtin_task("digits-mlp", cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def digits_splits() -> dict[str, tuple[Tensor, Tensor]]:
    return load_digits_splits()


def _class_counts(targets: Tensor) -> Tensor:
    return torch.bincount(targets, minlength=10)


def test_digits_splits_shapes_and_dtypes(digits_splits: dict[str, tuple[Tensor, Tensor]]) -> None:
    sizes = {name: len(pair[0]) for name, pair in digits_splits.items()}
    assert sizes == {"train": 1077, "val": 270, "test": 450}
    for inputs, targets in digits_splits.values():
        assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
        assert inputs.shape[1] == 64
        assert float(inputs.min()) >= 0.0 and float(inputs.max()) <= 1.0


def test_digits_splits_partition_the_data(digits_splits: dict[str, tuple[Tensor, Tensor]]) -> None:
    from sklearn.datasets import load_digits

    # the 1797 digits images are all distinct, so rows identify samples
    rows = {name: {tuple(row.tolist()) for row in pair[0]} for name, pair in digits_splits.items()}
    assert rows["train"].isdisjoint(rows["val"])
    assert rows["train"].isdisjoint(rows["test"])
    assert rows["val"].isdisjoint(rows["test"])
    images = torch.from_numpy(load_digits().data / 16.0).float()
    assert set().union(*rows.values()) == {tuple(row.tolist()) for row in images}


def test_val_splits_are_stratified(digits_splits: dict[str, tuple[Tensor, Tensor]]) -> None:
    val_counts = _class_counts(digits_splits["val"][1])
    assert int(val_counts.max() - val_counts.min()) <= 2
    # the val share of each class is ~20% of that class's training part
    train_counts = _class_counts(digits_splits["train"][1])
    share = val_counts.float() / (val_counts + train_counts).float()
    assert torch.allclose(share, torch.full_like(share, 0.2), atol=0.02)


def test_val_split_depends_on_seed_but_test_does_not() -> None:
    first, second = load_digits_splits(0), load_digits_splits(1)
    assert torch.equal(first["test"][0], second["test"][0])
    assert not torch.equal(first["val"][0], second["val"][0])
    assert torch.equal(first["val"][0], load_digits_splits(0)["val"][0])


def test_mnist1d_builds_offline_as_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("mnist1d data must be generated locally, not downloaded")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    np.random.seed(123)
    splits = load_mnist1d_splits()
    assert {name: tuple(pair[0].shape) for name, pair in splits.items()} == {
        "train": (3200, 40),
        "val": (800, 40),
        "test": (1000, 40),
    }
    assert all(pair[0].dtype == torch.float32 for pair in splits.values())
    assert all(pair[1].dtype == torch.int64 for pair in splits.values())
    assert int(_class_counts(splits["val"][1]).min()) >= 78
    # the generator reseeds numpy globally; the loader puts the caller's state back
    assert np.random.random() == np.random.RandomState(123).random()


@pytest.mark.parametrize(("model_cls", "features"), MODELS)
def test_models_output_logits_and_trace(model_cls: type[nn.Module], features: int) -> None:
    model = model_cls().eval()
    inputs = torch.randn(5, features)
    assert model(inputs).shape == (5, 10)
    traced = torch.fx.symbolic_trace(model)
    assert torch.allclose(traced(inputs), model(inputs))
    assert traced(torch.randn(1, features)).shape == (1, 10)


def test_model_parameter_counts() -> None:
    counts = {cls.__name__: sum(p.numel() for p in cls().parameters()) for cls, _ in MODELS}
    assert counts["DigitsMLP"] == 50_610
    assert counts["DigitsCNN"] == 38_282
    assert counts["Mnist1dMLP"] == 15_210
    assert counts["Mnist1dCNN"] == 5_210


def test_train_loop_is_reproducible_and_leaves_eval_mode() -> None:
    data = (torch.randn(64, 40), torch.randint(0, 10, (64,)))

    def trained() -> nn.Module:
        torch.manual_seed(0)
        return train_loop(Mnist1dMLP(), Split(data), steps=5, lr=1e-2, batch_size=16, seed=3)

    first, second = trained(), trained()
    assert not first.training
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_builtin_digits_mlp_is_accurate(digits_cache: Path) -> None:
    task = load_builtin_task("digits-mlp", cache_dir=digits_cache)
    assert task.name == "digits-mlp"
    assert task.info["params"] == 50_610
    assert not task.model.training
    assert task.test is not None
    assert score_model(task.model, task.split("test")).accuracy > 0.93


def test_second_load_hits_the_cache(digits_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(digits_cache))
    start = time.perf_counter()
    first = load_builtin_task("digits-mlp")
    second = load_builtin_task("digits-mlp")
    assert time.perf_counter() - start < 2.0
    assert first.info["cached"] is True and "trained_seconds" not in first.info
    first_weights, second_weights = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(first_weights[key], second_weights[key]) for key in first_weights)
    assert [p.name for p in digits_cache.iterdir()] == [Path(first.info["cache_file"]).name]


def test_cache_file_names_task_seed_and_recipe(digits_cache: Path) -> None:
    name = Path(load_builtin_task("digits-mlp", cache_dir=digits_cache).info["cache_file"]).name
    recipe_hash = BUILTIN_TASKS["digits-mlp"].recipe_hash(DigitsMLP())
    assert name == f"digits-mlp-seed0-{recipe_hash}.pt"


def test_recipe_hash_changes_with_the_recipe() -> None:
    spec = BUILTIN_TASKS["digits-mlp"]
    longer = dataclasses.replace(spec, steps=spec.steps + 1)
    assert spec.recipe_hash(DigitsMLP()) != longer.recipe_hash(DigitsMLP())


def test_builtin_task_names() -> None:
    assert set(BUILTIN_TASKS) == {
        "digits-mlp",
        "digits-cnn",
        "digits-resnet",
        "mnist1d-mlp",
        "mnist1d-cnn",
        "mnist1d-resnet",
        "digits-deepcnn",
    }


def test_unknown_task_name_suggests_close_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'digts-mlp'") as excinfo:
        load_builtin_task("digts-mlp", cache_dir=tmp_path)
    message = str(excinfo.value)
    assert "did you mean 'digits-mlp'" in message
    assert all(name in message for name in BUILTIN_TASKS)
    assert not list(tmp_path.iterdir())


def test_without_test_drops_the_test_split(digits_cache: Path) -> None:
    task = load_builtin_task("digits-mlp", cache_dir=digits_cache)
    searchable = task.without_test()
    assert isinstance(searchable, Task)
    assert searchable.test is None and task.test is not None
    assert searchable.model is task.model
    with pytest.raises(ValueError, match="no 'test' split"):
        searchable.split("test")
    assert len(searchable.split("val")) == 270
