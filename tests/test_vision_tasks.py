"""The torchvision and timm tasks on image data the tests write: an ImageFolder tree of
PNGs and CIFAR-10 python batches, built from config dicts as a user's config would be."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import zoo
from searchprune.assemble import build_task
from searchprune.cli import main
from searchprune.config import validate_config
from searchprune.export import load_run_problem
from searchprune.registry import SpecError, UnknownNameError
from searchprune.tasks import Split, Task, score_model
from searchprune.tasks.images import IMAGENET_MEAN, IMAGENET_STD

# before anything imports torchvision (none of the imports above does; see tests/zoo.py)
zoo.import_torchvision()

CLASSES = ("circle", "square", "triangle")
PER_CLASS = 12


def _class_image(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy ``size``x``size`` RGB image whose colour channel ``label`` is bright."""
    pixels = rng.integers(0, 90, size=(size, size, 3))
    pixels[..., label] += 160
    return pixels.astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/<class>/<i>.png``: 3 classes x 12 images of 16x16 pixels."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            Image.fromarray(_class_image(label, rng)).save(root / name / f"{i:02d}.png")
    return root


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """One batch in CIFAR-10's python format: a pickled dict of ``(N, 3072)`` uint8 rows
    (the R, G, B planes of each 32x32 image) and their labels."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as handle:
        pickle.dump({"data": rows, "labels": labels}, handle)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[int]]:
    """``root/cifar-10-batches-py/``: five train batches of 6 images, a test batch of 10;
    returns the root and the test images and labels as written."""
    root = tmp_path_factory.mktemp("cifar")
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(1)
    for batch in range(5):
        labels = [(batch * 6 + i) % 10 for i in range(6)]
        images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
        _write_cifar_batch(base / f"data_batch_{batch + 1}", images, labels)
    test_images = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    test_labels = list(range(10))[::-1]
    _write_cifar_batch(base / "test_batch", test_images, test_labels)
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return root, test_images, test_labels


def _task(**task: Any) -> Task:
    return build_task(validate_config({"task": task, "budget": {"sparsity": 0.5}, "searcher": "ga"}))


def _folder_task(folder: Path, **options: Any) -> Task:
    data = {"root": str(folder), "val_fraction": 0.25, "test_fraction": 0.25, "num_workers": 0}
    data.update(options.pop("data", {}))
    return _task(**{"name": "torchvision", "model": "resnet18", "input_size": 32, "data": data, **options})


def _targets(split: Split) -> list[int]:
    return [int(t) for _, targets in split for t in targets]


def _errors_without(blocked: tuple[str, ...], folder: Path) -> list[str]:
    """The errors of both vision tasks in a fresh interpreter where ``blocked`` modules
    cannot be imported (the others load through tests/zoo.py)."""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
for name in {blocked!r}:
    sys.modules[name] = None  # "import name" raises ImportError
import searchprune
assert "torchvision" not in sys.modules or sys.modules["torchvision"] is None
import zoo
if "torchvision" not in {blocked!r}:
    zoo.import_torchvision()
from searchprune.tasks import TASKS
from searchprune.registry import SpecError
for name in ("torchvision", "timm"):
    try:
        TASKS.get(name)(model="resnet18", data={{"root": {str(folder)!r}}})
    except SpecError as error:
        print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_searchprune_imports_without_torchvision_and_names_the_extra_when_it_is_missing(folder: Path) -> None:
    hint = '; install the vision extra: pip install "searchprune[vision]"'
    without_both = _errors_without(("torchvision", "timm"), folder)
    assert [line.split(" (")[0] for line in without_both] == [
        "task.name: torchvision needs torchvision",
        "task.name: timm needs torchvision",
    ]
    assert all(line.endswith(hint) for line in without_both)
    (only_timm,) = _errors_without(("timm",), folder)  # the torchvision task builds
    assert only_timm.startswith("task.name: timm needs timm (") and only_timm.endswith(hint)


def test_imagefolder_splits_are_stratified_disjoint_and_fixed_by_the_seed(folder: Path) -> None:
    task = _folder_task(folder, data={"num_workers": 1, "batch_size": 4})
    sizes = {name: len(task.split(name)) for name in ("train", "val", "test")}
    # test: a quarter of each class; val: a quarter (rounded) of each class's other nine
    assert sizes == {"train": 21, "val": 6, "test": 9}
    assert task.info["classes"] == list(CLASSES) and task.info["splits"] == sizes
    for name, per_class in (("train", 7), ("val", 2), ("test", 3)):
        assert np.bincount(_targets(task.split(name))).tolist() == [per_class] * 3
    indices = {name: task.split(name)._iterable.dataset.indices for name in sizes}  # type: ignore[union-attr]
    assert len(set().union(*map(set, indices.values()))) == 3 * PER_CLASS
    # the val split iterates in the same order every time (the search scores candidates on it)
    first = [inputs for inputs, _ in task.val]
    assert all(torch.equal(a, b) for a, b in zip(first, [inputs for inputs, _ in task.val], strict=True))
    assert first[0].shape == (4, 3, 32, 32)
    again, other = _folder_task(folder), _folder_task(folder, seed=1)
    assert again.val._iterable.dataset.indices == indices["val"]  # type: ignore[union-attr]
    assert other.val._iterable.dataset.indices != indices["val"]  # type: ignore[union-attr]
    assert other.test._iterable.dataset.indices == indices["test"]  # type: ignore[union-attr]
    # the same seed gives the same random initialisation (export builds the task again)
    assert torch.equal(again.model.conv1.weight, task.model.conv1.weight)


def test_a_test_root_is_the_test_split_and_must_have_the_same_classes(folder: Path, tmp_path: Path) -> None:
    task = _folder_task(folder, data={"test_root": str(folder), "test_fraction": None})
    assert {name: len(task.split(name)) for name in ("train", "val", "test")} == {"train": 27, "val": 9, "test": 36}
    assert _targets(task.split("test")) == [label for label in range(3) for _ in range(PER_CLASS)]
    (tmp_path / "circle").mkdir()
    Image.fromarray(_class_image(0, np.random.default_rng(2))).save(tmp_path / "circle" / "0.png")
    with pytest.raises(SpecError, match=r"task.data.test_root: its class folders \['circle'\] differ"):
        _folder_task(folder, data={"test_root": str(tmp_path), "test_fraction": None})


def test_cifar_batches_are_read_as_written(cifar: tuple[Path, np.ndarray, list[int]]) -> None:
    root, test_images, test_labels = cifar
    data = {"format": "cifar10", "root": str(root), "val_fraction": 0.34, "num_workers": 0}
    with pytest.raises(SpecError, match="checksums.*verify_checksums: false"):
        _task(name="torchvision", model="resnet18", data=data)
    task = _task(name="torchvision", model="resnet18", data={**data, "verify_checksums": False})
    assert {name: len(task.split(name)) for name in ("train", "val", "test")} == {
        "train": 20,
        "val": 10,
        "test": 10,
    }
    assert sorted(_targets(task.val)) == list(range(10))
    # the splits pickle (a Ray evaluator ships them), even read without checksums
    shipped = pickle.loads(pickle.dumps(task.val))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(shipped, task.val, strict=True))
    inputs, targets = task.split("test").first_batch()
    assert targets.tolist() == test_labels  # CIFAR's own test batch, in file order
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    written = torch.from_numpy(test_images[3]).permute(2, 0, 1) / 255.0
    assert torch.allclose(inputs[3], (written - mean[:, None, None]) / std[:, None, None], atol=1e-6)


def test_missing_data_names_the_path_and_the_layout(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere"
    with pytest.raises(SpecError, match=rf"task.data.root: {absent} is not a directory.*<class name>"):
        _task(name="torchvision", model="resnet18", data={"root": str(absent)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="no images found under"):
        _task(name="torchvision", model="resnet18", data={"root": str(tmp_path / "empty")})
    with pytest.raises(SpecError, match=r"cifar-10-batches-py.*missing: data_batch_1.*cs.toronto"):
        _task(name="timm", model="test_resnet", data={"format": "cifar10", "root": str(tmp_path)})
    with pytest.raises(SpecError, match=r"task.data.val_fractoin: unknown key"):
        _task(name="torchvision", model="resnet18", data={"root": str(tmp_path), "val_fractoin": 0.1})


def test_names_sizes_and_class_counts_are_checked(folder: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        _folder_task(folder, model="resnet81")
    with pytest.raises(UnknownNameError, match="unknown timm model 'test_resnt'.*'test_resnet'"):
        _task(name="timm", model="test_resnt", data={"root": str(folder)})
    with pytest.raises(SpecError, match=r"task.num_classes=10 but the data has 3 classes \(circle"):
        _folder_task(folder, num_classes=10)
    with pytest.raises(SpecError, match=r"task.input_size: torchvision model 'vit_b_16' fails"):
        _folder_task(folder, model="vit_b_16")
    with pytest.raises(SpecError, match="task.model_options: .* does not take"):
        _folder_task(folder, model_options={"depth": 3})
    with pytest.raises(SpecError, match="does not take these options.*'modle'"):
        _folder_task(folder, modle="resnet18")


def test_weights_load_from_a_state_dict_and_wrong_files_are_named(folder: Path, tmp_path: Path) -> None:
    reference = _task(name="timm", model="test_resnet", input_size=32, seed=5, data={"root": str(folder), "num_workers": 0})
    path = tmp_path / "trained.pt"
    torch.save({"state_dict": reference.model.state_dict()}, path)  # a checkpoint wrapper
    task = _task(name="timm", model="test_resnet", input_size=32, weights=str(path), data={"root": str(folder), "num_workers": 0})
    assert all(torch.equal(a, b) for a, b in zip(task.model.state_dict().values(), reference.model.state_dict().values(), strict=True))
    fresh = _task(name="timm", model="test_resnet", input_size=32, data={"root": str(folder), "num_workers": 0})
    assert not torch.equal(fresh.model.conv1[0].weight, reference.model.conv1[0].weight)

    other = tmp_path / "other.pt"
    torch.save(_folder_task(folder).model.state_dict(), other)  # a torchvision resnet18
    with pytest.raises(SpecError, match=rf"task.weights: {other} does not fit the model \(\d+ missing: .*unexpected"):
        _task(name="timm", model="test_resnet", input_size=32, weights=str(other), data={"root": str(folder)})
    wrong_classes = tmp_path / "ten.pt"
    torch.save(_folder_task(folder).model.state_dict() | {"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, wrong_classes)
    with pytest.raises(SpecError, match=r"2 of another shape: fc.weight \(10, 512\) in the file, \(3, 512\) in the model; fc.bias"):
        _folder_task(folder, weights=str(wrong_classes))
    pickled_module = tmp_path / "module.pt"
    torch.save(reference.model, pickled_module)  # the whole module: weights_only refuses it
    with pytest.raises(SpecError, match=r"weights_only=True\) cannot read .*torch.save\(model.state_dict"):
        _folder_task(folder, weights=str(pickled_module))
    with pytest.raises(SpecError, match="task.weights: no weights file at"):
        _folder_task(folder, weights=str(tmp_path / "absent.pt"))


@pytest.mark.slow
def test_torchvision_model_from_a_config_exports_a_compact_model_as_accurate_as_the_summary(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's user: a torchvision resnet18 on an ImageFolder, trained by the task
    (cached), a short GA at channel granularity, then ``searchprune export --format
    compact``: the exported model scores the summary's test accuracy."""
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(tmp_path / "cache"))
    data = {"root": str(folder), "val_fraction": 0.25, "test_fraction": 0.25, "num_workers": 0, "batch_size": 8}
    config = {
        "task": {"name": "torchvision", "model": "resnet18", "num_classes": 3, "input_size": 32, "train_epochs": 20, "train_lr": 3e-3, "data": data},
        "space": {"granularity": "channel"},
        "budget": {"flops": 0.5},
        "searcher": {"name": "ga", "population": 4},
        "run": {"max_evals": 8, "seed": 0},
    }
    path = tmp_path / "resnet18.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dense"]["test_accuracy"] >= 0.8  # the task trained on the easy images
    assert summary["best"]["flops_fraction"] <= 0.5 + 1e-6
    assert main(["export", str(out), "--format", "compact"]) == 0
    exported = torch.export.load(out / "model-compact.pt2").module()
    task = build_task(validate_config(config))
    assert task.info["cached"] is True
    test = score_model(exported, task.split("test"))
    assert test.accuracy == summary["best"]["test_accuracy"]
    # not only the accuracy: the exported logits are the masked model's on every test image
    problem, masks = load_run_problem(out)
    with problem.masked(masks) as masked, torch.inference_mode():
        for inputs, _ in task.split("test"):
            expected = masked(inputs)
            assert torch.allclose(exported(inputs), expected, atol=1e-4 * float(expected.abs().max()))
    dense_params = sum(p.numel() for p in task.model.parameters())
    assert sum(p.numel() for p in exported.parameters()) < 0.75 * dense_params
