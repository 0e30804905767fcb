"""Tasks ``torchvision`` and ``timm``: a classifier from either library on images on disk.

A config names the architecture, the weights a user trained and the data::

    task:
      name: torchvision            # or timm
      model: resnet18              # any torchvision classifier / timm model name
      weights: trained.pt          # a state dict, read with torch.load(weights_only=True)
      num_classes: 10              # default: the number of classes in the data
      input_size: 32               # default: 32 for CIFAR, 224 for an ImageFolder
      data: {format: imagefolder, root: /data/flowers}   # see tasks/images.py

Without ``weights`` the network keeps its random initialisation (drawn with the task's
seed), unless ``train_epochs`` trains it first (on the CPU: Adam on the train split
through the project's training loop, then exact BatchNorm statistics), cached on disk
like the built-in tasks so that building the task again (``searchprune export``) gives
the same weights. torchvision and timm are the ``vision`` extra; they are imported only
when a task is built.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from searchprune.registry import SpecError, UnknownNameError, unknown_name_message
from searchprune.tasks.base import TASKS, Batch, Split, Task
from searchprune.tasks.builtin import _cache_dir, _save_atomically
from searchprune.tasks.images import (
    ImageData,
    ImageSplits,
    import_vision,
    load_image_splits,
    parse_image_data,
)
from searchprune.tasks.train import train_loop

Library = Literal["torchvision", "timm"]
ModelBuilder = Callable[[str, int, dict[str, Any]], nn.Module]
_WRAPPER_KEYS = ("state_dict", "model")  # checkpoints that hold the state dict under a key
_LISTED = 3  # keys quoted per kind of mismatch in an error message


def _torchvision_model(name: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """torchvision classifier ``name`` with random weights and ``num_classes`` outputs."""
    models = import_vision("torchvision", "task.name: torchvision").models
    names = models.list_models(module=models)
    if name not in names:
        raise UnknownNameError(
            unknown_name_message("task.model", "torchvision classifier", name, names)
        )
    model: nn.Module = models.get_model(name, weights=None, num_classes=num_classes, **options)
    return model


def _timm_model(name: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """timm model ``name`` with random weights and ``num_classes`` outputs."""
    timm = import_vision("timm", "task.name: timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"task.model: unknown timm model {name!r}{hint} (timm.list_models() lists them)"
        )
    model: nn.Module = timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    return model


_BUILDERS: dict[str, ModelBuilder] = {"torchvision": _torchvision_model, "timm": _timm_model}


def _state_dict_in(loaded: object) -> Mapping[str, Tensor] | None:
    """The tensor mapping in what ``torch.load`` returned: the object itself, or the one
    under ``state_dict`` or ``model`` (how training scripts often save checkpoints)."""
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
        assert isinstance(loaded, Mapping)
        if loaded and all(isinstance(v, Tensor) for v in loaded.values()):
            return loaded
    return None


def _mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """What keeps ``state`` from loading into ``model``: missing and unexpected keys and
    shape mismatches, a few of each quoted."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(state[key].shape)} in the file, {tuple(tensor.shape)} in the model"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("of another shape", shapes),
    ):
        if keys:
            more = f" (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
            problems.append(f"{len(keys)} {label}: {'; '.join(keys[:_LISTED])}{more}")
    if unexpected and all(key.startswith("module.") for key in unexpected):
        problems.append("the file was saved from a DataParallel wrapper: strip 'module.'")
    return problems


def load_weights(model: nn.Module, path: str | Path, field: str = "task.weights") -> None:
    """Load the state dict saved at ``path`` into ``model`` (strictly), read with
    ``torch.load(weights_only=True)``: a file someone sent cannot run code on load.

    :raises SpecError: naming ``field`` when the file is absent, is not a state dict,
        or its keys or shapes do not fit ``model``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpecError(f"{field}: no weights file at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError(
            f"{field}: torch.load(weights_only=True) cannot read {path} ({reason}); save the "
            "weights with torch.save(model.state_dict(), PATH)"
        ) from None
    state = _state_dict_in(loaded)
    if state is None:
        raise SpecError(
            f"{field}: {path} holds a {type(loaded).__name__}, not a state dict of tensors; "
            "save the weights with torch.save(model.state_dict(), PATH)"
        )
    problems = _mismatch(model, state)
    if problems:
        raise SpecError(
            f"{field}: {path} does not fit the model ({' | '.join(problems)}); check "
            "task.model, task.num_classes and task.model_options"
        )
    model.load_state_dict(state)


def _cache_key(parts: Mapping[str, Any]) -> str:
    """A short hash of everything trained weights depend on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def _precise_norm_statistics(model: nn.Module, loader: Iterable[Batch]) -> None:
    """Replace the running statistics of every BatchNorm by their exact average over one
    pass of ``loader`` ("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in
    BatchNorm"): after a short training, running averages still hold much of their
    initial values, and the dense model would be scored with them."""
    norms = [module for module in model.modules() if isinstance(module, _BatchNorm)]
    if not norms:
        return
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches seen
    model.train()
    for inputs, _ in loader:
        model(inputs)
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    model.eval()


def _trained(
    model: nn.Module,
    splits: ImageSplits,
    *,
    epochs: int,
    lr: float,
    seed: int,
    cache_name: str,
) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` trained for ``epochs`` passes over the train split, or its cached
    weights (``cache_name`` holds a hash of the architecture, data and recipe)."""
    path = _cache_dir(None) / f"{cache_name}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, {"cached": True, "cache_file": str(path)}
    print(f"searchprune: training {cache_name} (cached in {path.parent})", file=sys.stderr)
    start = time.perf_counter()
    train = Split(splits.shuffled_train(seed))
    batch_size = splits.train.batch_size or 1
    trained = train_loop(model, train, lr=lr, batch_size=batch_size, seed=seed, epochs=epochs)
    _precise_norm_statistics(trained, splits.train)
    _save_atomically(trained.state_dict(), path)
    return trained, {"trained_seconds": time.perf_counter() - start, "cache_file": str(path)}


def _check_forward(model: nn.Module, splits: ImageSplits, library: str, name: str) -> None:
    """Run one val image through ``model``: a wrong input size fails here, named."""
    inputs, _ = next(iter(splits.val))
    try:
        with torch.inference_mode():
            model.eval()(inputs[:1])
    except (RuntimeError, AssertionError, ValueError) as error:
        raise SpecError(
            f"task.input_size: {library} model {name!r} fails on a {tuple(inputs[:1].shape)} "
            f"input ({str(error).strip().splitlines()[0]}); choose an input_size it takes, or "
            "pass the size to the model through task.model_options (e.g. torchvision ViT's "
            "image_size, timm's img_size)"
        ) from None


def vision_task(
    library: Library,
    *,
    seed: int = 0,
    model: str,
    data: ImageData | Mapping[str, Any],
    num_classes: int | None = None,
    input_size: int | None = None,
    weights: str | Path | None = None,
    model_options: Mapping[str, Any] | None = None,
    train_epochs: int = 0,
    train_lr: float = 1e-3,
) -> Task:
    """A ``library`` (torchvision or timm) classifier on image data from disk.

    :param seed: draws the splits, the random initialisation and the training order.
    :param model: the architecture's name in ``library``.
    :param data: the ``task.data`` section (:class:`~searchprune.tasks.images.ImageData`).
    :param num_classes: outputs of the classifier; must equal the classes in the data.
    :param input_size: side of the square images fed to the model.
    :param weights: a state dict file for this architecture (:func:`load_weights`).
    :param model_options: more keyword arguments for the model's constructor.
    :param train_epochs: train this many epochs (Adam, ``train_lr``) before pruning.
    :raises SpecError: for a wrong name, path, file or option; the message names it.
    """
    for module in ("torchvision", library):  # timm models also need torchvision's data sets
        import_vision(module, f"task.name: {library}")
    spec = parse_image_data(data)
    if train_epochs < 0 or train_lr <= 0:
        raise SpecError(
            f"task.train_epochs={train_epochs} and task.train_lr={train_lr}: the epochs must "
            "be >= 0 and the learning rate positive"
        )
    splits = load_image_splits(spec, input_size, seed)
    classes = len(splits.classes)
    if num_classes is not None and num_classes != classes:
        raise SpecError(
            f"task.num_classes={num_classes} but the data has {classes} classes "
            f"({', '.join(splits.classes[:5])}{', ...' if classes > 5 else ''}); set "
            f"num_classes: {classes}, or point task.data at the data the weights were "
            "trained on"
        )
    options = dict(model_options or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            network = _BUILDERS[library](model, classes, options)
        except TypeError as error:
            raise SpecError(
                f"task.model_options: {library} model {model!r} does not take {options} ({error})"
            ) from None
    if weights is not None:
        load_weights(network, weights)
    _check_forward(network, splits, library, model)
    info: dict[str, Any] = {
        "library": library,
        "model": model,
        "classes": splits.classes,
        "splits": splits.sizes(),
        "weights": None if weights is None else str(weights),
    }
    if train_epochs:
        key = _cache_key(
            {
                "model": model,
                "classes": classes,
                "options": options,
                "input_size": input_size,
                "weights": None if weights is None else _file_digest(Path(weights).expanduser()),
                "data": spec.model_dump(mode="json", exclude={"num_workers"}),
                "train": splits.fingerprint(),
                "recipe": [train_epochs, train_lr],
            }
        )
        network, trained = _trained(
            network,
            splits,
            epochs=train_epochs,
            lr=train_lr,
            seed=seed,
            cache_name=f"{library}-{model}-seed{seed}-{key}",
        )
        info.update(trained, train_epochs=train_epochs)
    info["params"] = sum(p.numel() for p in network.parameters())
    return Task(
        model=network.eval(),
        train=splits.train,
        val=splits.val,
        test=splits.test,
        name=f"{library}/{model}",
        batch_size=spec.batch_size,
        info=info,
    )


TASKS.add(
    "torchvision",
    partial(vision_task, "torchvision"),
    "a torchvision classifier (task.model) with your weights, on an ImageFolder or CIFAR",
)
TASKS.add(
    "timm",
    partial(vision_task, "timm"),
    "a timm model (task.model) with your weights, on an ImageFolder or CIFAR",
)
