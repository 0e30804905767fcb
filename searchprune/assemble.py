"""Building a :class:`Task` and a :class:`Problem` from a validated config, and telling
whether a rebuilt task's model is the one a run scored.

Shared by the run loop, ``export`` and the Gymnasium environment, which all start from
configs. A task factory may not build the same model twice (one that trains without a
seed of its own), so a run keeps the dense weights it scores and a record of them
(:func:`dense_record`): ``export`` loads those weights into the rebuilt architecture, and
``--resume`` refuses a rebuilt model whose record differs (:func:`check_rebuilt`).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from searchprune.config import Config, ConfigError
from searchprune.fitness import LATENCY_FITNESSES, resolve_fitness
from searchprune.latency import LatencyModel
from searchprune.problem import Fidelity, Problem
from searchprune.registry import hold_object, is_import_path
from searchprune.tasks import TASKS, Task, score_model

# (path in the config, the field named in errors): where a config takes a name or a
# "package.module:Name" path, and so also a Python object
_OBJECT_FIELDS = (
    (("task",), "task.name"),
    (("fitness",), "fitness.name"),
    (("searcher",), "searcher.name"),
    (("method",), "method.name"),
    (("space", "criterion"), "space.criterion"),
)


def hold_objects(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of config data in which the Python objects given where a name goes (a
    :class:`Task`, a task factory, a fitness function, a searcher class, a method class,
    a criterion) are replaced by the ``"object:..."`` names that stand for them in this
    process (:func:`~searchprune.registry.hold_object`). A task object stands for a
    factory that returns it. Sections may be the object itself (``task=my_task``) or
    carry it as their ``name`` (``task={"name": my_task}``)."""
    copied: dict[str, Any] = dict(data)
    for path, field in _OBJECT_FIELDS:
        parent = copied
        for key in path[:-1]:
            if not isinstance(parent.get(key), Mapping):
                break
            parent[key] = dict(parent[key])
            parent = parent[key]
        else:
            key = path[-1]
            value = parent.get(key)
            section = isinstance(value, Mapping) and len(path) == 1
            given = value.get("name") if section else value  # type: ignore[union-attr]
            if given is None or isinstance(given, (str, Mapping)):
                continue
            name = _hold(given, field)
            parent[key] = {**value, "name": name} if section else name  # type: ignore[dict-item]
    return copied


def _hold(value: object, field: str) -> str:
    if isinstance(value, Task):
        return hold_object(value, field, resolves_to=lambda **_: value)
    return hold_object(value, field)


def check_device(name: str) -> None:
    """Refuse ``evaluator.device`` when this torch build or machine cannot run it.

    :raises ConfigError: naming the field, torch's build and the fix.
    """
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build"
            raise ConfigError(
                f"evaluator.device: {name!r} needs a CUDA GPU, but torch {torch.__version__} "
                f"is {build} and sees none; use evaluator.device: cpu (or install a CUDA "
                "build of torch on a machine with a GPU)"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"evaluator.device: {name!r}, but this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"evaluator.device: {name!r} is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"evaluator.device: {name!r} is not supported; use cpu, cuda or mps")


def build_task(config: Config) -> Task:
    """The registered task named in the config (built with its seed and options), or the
    user's ``package.module:factory`` (called with the options)."""
    check_device(config.evaluator.device)
    spec = config.task
    factory = TASKS.get(spec.name)
    if not callable(factory):
        raise ConfigError(f"task.name: {spec.name!r} is not callable")
    kwargs = spec.options if is_import_path(spec.name) else {"seed": spec.seed, **spec.options}
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"task: {spec.name!r} does not take these options ({error})") from None
    try:
        task = factory(**kwargs)
    except TypeError as error:  # an option passed on through **kwargs
        if "unexpected keyword argument" not in str(error):
            raise
        raise ConfigError(
            f"task: {spec.name!r} does not take these options ({error}); its options: docs/tasks.md"
        ) from None
    if not isinstance(task, Task):
        raise ConfigError(
            f"task.name: {spec.name!r} returned {type(task).__name__}; a task factory must "
            "return searchprune.Task(model=..., train=..., val=..., test=...)"
        )
    return task


def build_problem(config: Config, task: Task, latency: LatencyModel | None = None) -> Problem:
    """The problem a config describes, over ``task`` (whose test split it drops);
    ``latency`` is a latency curve measured before, reused instead of timing again."""
    space, fidelity = config.space, config.evaluator.fidelity
    return Problem(
        task,
        budget=config.budget_spec,
        fitness=resolve_fitness(config.fitness.name, config.fitness.options),
        space=space.name,
        granularity=space.granularity,
        criterion=space.criterion,
        min_ratio=space.min_ratio,
        max_ratio=space.max_ratio,
        layer_bounds=space.layer_bounds,
        exclude_output=space.exclude_output,
        exclude=space.exclude,
        bn_samples=config.fitness.bn_samples,
        penalty=config.fitness.penalty,
        device=config.evaluator.device,
        channels_last=config.evaluator.channels_last,
        predict_latency=config.fitness.predict_latency or config.fitness.name in LATENCY_FITNESSES,
        latency=latency,
        space_settings=space.options,
        fidelity=Fidelity(**fidelity.model_dump()) if fidelity is not None else None,
        selection_samples=config.selection.samples if config.selection.top_k else 0,
    )


# ----------------------------------------------------------- the scored model
def weights_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A fingerprint of a state dict: sha256 over each tensor's name, dtype, shape and
    bytes, in name order (memory format and device do not change it)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(state_dict[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dense_record(config: Config, task: Task) -> dict[str, Any]:
    """What identifies the dense model a run scores: the factory, the fingerprint of its
    weights and their size, and its val accuracy (computed on ``evaluator.device``;
    moves the model there, as the problem does anyway)."""
    model = task.model.to(torch.device(config.evaluator.device))
    state = model.state_dict()
    return {
        "task": config.task.name,
        "sha256": weights_sha256(state),
        "tensors": len(state),
        "bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "val_accuracy": score_model(model, task.split("val"), task.loss).accuracy,
    }


def scored_state(task: Task) -> dict[str, Tensor]:
    """The task model's state dict as plain CPU tensors (what a run saves)."""
    return {name: t.detach().to("cpu").clone() for name, t in task.model.state_dict().items()}


def check_rebuilt(config: Config, task: Task, stored: Mapping[str, Any], where: Path) -> None:
    """Refuse a rebuilt task whose dense model is not the one the run scored.

    :raises ConfigError: naming the factory and what differs (weights, val accuracy).
    """
    rebuilt = dense_record(config, task)
    differs = [
        f"{key} {rebuilt[key]!r} (stored: {stored.get(key)!r})"
        for key in ("sha256", "val_accuracy")
        if rebuilt[key] != stored.get(key)
    ]
    if differs:
        raise ConfigError(
            f"task: {config.task.name!r} built a different dense model than the run in "
            f"{where} scored: {'; '.join(differs)}. The factory is not deterministic (seed "
            "it) or its code or data changed; the run cannot continue on another model. "
            "Start a new run with --out (export still uses the stored weights)"
        )


def restore_scored(
    config: Config, task: Task, stored: tuple[Mapping[str, Tensor], Mapping[str, Any]], where: Path
) -> None:
    """Load the dense weights a run scored into the rebuilt task's model, and refuse when
    the rebuilt val split does not score them as the run did (the data changed).

    :raises ConfigError: naming the factory and the two accuracies.
    """
    state, record = stored
    task.model.load_state_dict(state)
    accuracy = dense_record(config, task)["val_accuracy"]
    if accuracy != record.get("val_accuracy"):
        raise ConfigError(
            f"task: {config.task.name!r} rebuilt other data than the run in {where} scored: "
            f"the stored dense weights score val accuracy {accuracy} on it, the run measured "
            f"{record.get('val_accuracy')}. The factory is not deterministic (seed its data "
            "split) or its data changed, so an export would not be the model the run scored"
        )
