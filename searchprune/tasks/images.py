"""Image-classification data already on disk, as seeded train/val/test DataLoaders.

Two layouts are read, both without downloading anything:

- ``imagefolder``: ``ROOT/<class>/<image>`` (torchvision's ``ImageFolder``); the test
  split comes from ``test_root`` (same class folders) or is carved out of ``ROOT``.
- ``cifar10`` / ``cifar100``: the "python version" batches of Krizhevsky's CIFAR
  (``ROOT/cifar-10-batches-py/`` or ``ROOT/cifar-100-python/``), read through
  torchvision's CIFAR classes with ``download=False``; the test split is CIFAR's own
  test batch. Those batches are Python pickles, so only read files from a source you
  trust.

Splits are class-stratified: val is drawn with the task's seed, a test split carved out
of an ImageFolder is the same for every seed. Every loader iterates in a fixed
order (no shuffling, no random augmentation): the search scores every candidate on the
same val batches, and BatchNorm recalibration reads the same first train batches when a
run is built again for export. torchvision is imported only when data are loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.utils.data import DataLoader, Dataset, Subset

from searchprune.registry import SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_FOLDER_SIZE = 224
CIFAR_SIZE = 32
TEST_FRACTION = 0.1
TEST_SPLIT_SEED = 0
VISION_EXTRA_HINT = 'install the vision extra: pip install "searchprune[vision]"'

_CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test_batch",
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta"),
}


class ImageData(BaseModel):
    """The ``task.data`` section of a torchvision or timm task."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["imagefolder", "cifar10", "cifar100"] = Field(
        "imagefolder", description="imagefolder (ROOT/<class>/<image>), cifar10 or cifar100"
    )
    root: Path = Field(description="the ImageFolder tree, or the folder holding CIFAR's folder")
    test_root: Path | None = Field(
        None, description="imagefolder only: a second tree (same classes) used as the test split"
    )
    val_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="share of the training images (what the test split leaves) held out as "
        "val, drawn with task.seed",
    )
    test_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="imagefolder without test_root: share of ROOT held out as test (default "
        "0.1), the same images for every seed; CIFAR uses its own test batch",
    )
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per split")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    verify_checksums: bool = Field(
        True, description="cifar only: check the files against torchvision's known MD5 sums"
    )


def parse_image_data(value: ImageData | Mapping[str, Any], field: str = "task.data") -> ImageData:
    """``value`` validated as :class:`ImageData`, with errors naming ``field.key``.

    :raises SpecError: for a missing root, an unknown key or a value out of range.
    """
    if isinstance(value, ImageData):
        return value
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{field}: expected a mapping such as {{format: imagefolder, root: PATH}}, "
            f"got {type(value).__name__}"
        )
    try:
        data = ImageData.model_validate(dict(value))
    except ValidationError as error:
        lines = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                valid = ", ".join(sorted(ImageData.model_fields))
                lines.append(f"{field}.{key}: unknown key; valid keys: {valid}")
            else:
                lines.append(f"{field}.{key}: {item['msg']} (got {item.get('input')!r})")
        raise SpecError("invalid data section:\n  " + "\n  ".join(lines)) from None
    if data.format != "imagefolder" and (data.test_root is not None or data.test_fraction):
        raise SpecError(
            f"{field}: {data.format} uses its own test batch; remove test_root/test_fraction"
        )
    if data.test_root is not None and data.test_fraction is not None:
        raise SpecError(f"{field}: give test_root or test_fraction, not both")
    return data


@dataclass(frozen=True)
class ImageSplits:
    """Train/val/test loaders over one data set, the class names and the files read."""

    train: DataLoader[Any]
    val: DataLoader[Any]
    test: DataLoader[Any]
    classes: list[str]
    files: tuple[Path, ...]
    """Every file the splits read (images, or CIFAR batches), for :meth:`fingerprint`."""

    def sizes(self) -> dict[str, int]:
        """Number of images in each split."""
        return {
            name: len(loader.dataset)  # type: ignore[arg-type]
            for name, loader in (("train", self.train), ("val", self.val), ("test", self.test))
        }

    def fingerprint(self) -> str:
        """A hash of the train split: its indices and the size and modification time of
        every file read, so cached weights trained on it go stale when the data change."""
        digest = hashlib.sha256()
        subset = self.train.dataset
        assert isinstance(subset, Subset)
        digest.update(repr(list(subset.indices)).encode())
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def shuffled_train(self, seed: int) -> DataLoader[Any]:
        """The train split reshuffled every epoch by a generator seeded with ``seed``, in
        full batches only (a BatchNorm cannot train on a batch of one)."""
        batch_size = self.train.batch_size or 1
        return DataLoader(
            self.train.dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            drop_last=len(self.train.dataset) > batch_size,  # type: ignore[arg-type]
            num_workers=self.train.num_workers,
        )


def stratified_split(
    targets: Sequence[int], fraction: float, seed: int, among: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """The indices ``among`` (default: every sample) split into ``(kept, carved)``:
    ``carved`` holds ``round(fraction * n_c)`` of the ``n_c`` members of each class
    ``c``. Members are drawn, and both parts' orders shuffled, by a generator seeded with
    ``seed``, so a part mixes the classes in an order fixed by the seed."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(range(len(targets)) if among is None else list(among), dtype=torch.long)
    labels = torch.as_tensor(list(targets), dtype=torch.long)[pool]
    kept: list[int] = []
    carved: list[int] = []
    for label in torch.unique(labels).tolist():
        found = pool[labels == label]
        members: list[int] = found[torch.randperm(len(found), generator=generator)].tolist()
        count = math.floor(len(members) * fraction + 0.5)
        carved.extend(members[:count])
        kept.extend(members[count:])
    kept = [kept[i] for i in torch.randperm(len(kept), generator=generator).tolist()]
    carved = [carved[i] for i in torch.randperm(len(carved), generator=generator).tolist()]
    return kept, carved


def import_vision(module: str, purpose: str) -> Any:
    """``module`` (torchvision or timm) imported, or a :class:`SpecError` saying that
    ``purpose`` needs the vision extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SpecError(f"{purpose} needs {module} ({error}); {VISION_EXTRA_HINT}") from None


def _transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Resize the short side to ``size``, centre-crop a square, normalize: deterministic."""
    transforms = import_vision("torchvision", "task.data").transforms
    return transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _image_folder(root: Path, field: str, transform: Any) -> Any:
    """torchvision's ``ImageFolder`` over ``root``, or an error naming the expected layout."""
    datasets = import_vision("torchvision", "task.data").datasets
    layout = f"expected {root}/<class name>/<image>.png|.jpg|... (one folder per class)"
    if not root.is_dir():
        raise SpecError(f"{field}: {root} is not a directory; {layout}")
    try:
        return datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise SpecError(f"{field}: no images found under {root} ({error}); {layout}") from None


def _cifar(data: ImageData, train: bool, transform: Any) -> Any:
    """torchvision's CIFAR-10/100 over ``data.root`` (``download=False``), or an error
    naming the files expected there."""
    datasets = import_vision("torchvision", "task.data").datasets
    folder, train_files, test_file, meta_file = _CIFAR_LAYOUT[data.format]
    base = data.root / folder
    missing = [name for name in (*train_files, test_file, meta_file) if not (base / name).is_file()]
    if missing:
        raise SpecError(
            f"task.data.root: {data.format} files not found under {base} (missing: "
            f"{', '.join(missing)}); expected {data.root}/{folder}/ holding "
            f"{', '.join((*train_files, test_file, meta_file))}: the 'python version' "
            "archive from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked"
        )
    cls = datasets.CIFAR10 if data.format == "cifar10" else datasets.CIFAR100
    reader = cls
    if not data.verify_checksums:
        # the same reader with the MD5 sums dropped: torchvision then checks presence only
        reader = type(
            cls.__name__,
            (cls,),
            {
                "train_list": [[name, None] for name, _ in cls.train_list],
                "test_list": [[name, None] for name, _ in cls.test_list],
                "meta": {**cls.meta, "md5": None},
            },
        )
    try:
        dataset = reader(str(data.root), train=train, transform=transform, download=False)
    except RuntimeError as error:
        raise SpecError(
            f"task.data.root: the {data.format} files under {base} do not match torchvision's "
            f"checksums ({error}); re-download them, or set task.data.verify_checksums: false "
            "to read them as they are"
        ) from None
    # read: the rest is torchvision's class itself, which pickles (Ray ships the data)
    dataset.__class__ = cls
    return dataset


def _loader(dataset: Dataset[Any], indices: list[int], data: ImageData) -> DataLoader[Any]:
    """A fixed-order loader over ``indices`` of ``dataset``.

    Workers are not persistent: a loader that kept its workers could not be pickled,
    and a Ray evaluator pickles the problem, data included.
    """
    return DataLoader(
        Subset(dataset, indices),
        batch_size=data.batch_size,
        shuffle=False,
        num_workers=data.num_workers,
    )


def _check_nonempty(parts: Mapping[str, list[int]], total: int, data: ImageData) -> None:
    """Every split of ``parts`` holds an image, or an error naming the fraction to change."""
    for name, indices in parts.items():
        if not indices:
            fraction = getattr(data, f"{name}_fraction", None) or TEST_FRACTION
            cause = (
                "task.data.val_fraction and test_fraction leave"
                if name == "train"
                else f"task.data.{name}_fraction={fraction} leaves"
            )
            raise SpecError(
                f"{cause} the {name} split empty ({total} images under {data.root}); "
                "change the fraction or add images"
            )


def load_image_splits(data: ImageData, input_size: int | None, seed: int) -> ImageSplits:
    """The train/val/test loaders ``data`` describes, images resized to ``input_size``
    (default: 32 for CIFAR, 224 for an ImageFolder), splits drawn with ``seed``.

    :raises SpecError: when the files are not there (the message names the path and the
        layout expected), or a fraction leaves a split empty.
    """
    if data.format == "imagefolder":
        transform = _transform(input_size or DEFAULT_FOLDER_SIZE, data.mean, data.std)
        full = _image_folder(data.root, "task.data.root", transform)
        files = [Path(path) for path, _ in full.samples]
        if data.test_root is not None:
            test_set = _image_folder(data.test_root, "task.data.test_root", transform)
            if test_set.classes != full.classes:
                raise SpecError(
                    f"task.data.test_root: its class folders {test_set.classes} differ from "
                    f"those of task.data.root {full.classes}"
                )
            train, val = stratified_split(full.targets, data.val_fraction, seed)
            test_loader = _loader(test_set, list(range(len(test_set))), data)
            files += [Path(path) for path, _ in test_set.samples]
        else:  # the same test images for every seed, as CIFAR's own test batch would be
            test_fraction = data.test_fraction or TEST_FRACTION
            rest, test = stratified_split(full.targets, test_fraction, TEST_SPLIT_SEED)
            _check_nonempty({"test": test}, len(full), data)
            train, val = stratified_split(full.targets, data.val_fraction, seed, among=rest)
            test_loader = _loader(full, test, data)
    else:
        transform = _transform(input_size or CIFAR_SIZE, data.mean, data.std)
        full = _cifar(data, True, transform)
        test_set = _cifar(data, False, transform)
        train, val = stratified_split(full.targets, data.val_fraction, seed)
        test_loader = _loader(test_set, list(range(len(test_set))), data)
        folder, train_files, test_file, meta_file = _CIFAR_LAYOUT[data.format]
        files = [data.root / folder / name for name in (*train_files, test_file, meta_file)]
    _check_nonempty({"train": train, "val": val}, len(full), data)
    return ImageSplits(
        train=_loader(full, train, data),
        val=_loader(full, val, data),
        test=test_loader,
        classes=list(full.classes),
        files=tuple(sorted(files)),
    )
