"""Building a :class:`Task` and a :class:`Problem` from a validated config.

Shared by the run loop and by the Gymnasium environment, which both start from configs.
"""

from __future__ import annotations

import inspect

from searchprune.config import Config, ConfigError
from searchprune.fitness import LATENCY_FITNESSES, resolve_fitness
from searchprune.latency import LatencyModel
from searchprune.problem import Problem
from searchprune.registry import is_import_path
from searchprune.tasks import TASKS, Task


def build_task(config: Config) -> Task:
    """The registered task named in the config (built with its seed and options), or the
    user's ``package.module:factory`` (called with the options)."""
    spec = config.task
    factory = TASKS.get(spec.name)
    if not callable(factory):
        raise ConfigError(f"task.name: {spec.name!r} is not callable")
    kwargs = spec.options if is_import_path(spec.name) else {"seed": spec.seed, **spec.options}
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"task: {spec.name!r} does not take these options ({error})") from None
    task = factory(**kwargs)
    if not isinstance(task, Task):
        raise ConfigError(
            f"task.name: {spec.name!r} returned {type(task).__name__}; a task factory must "
            "return searchprune.Task(model=..., train=..., val=..., test=...)"
        )
    return task


def build_problem(config: Config, task: Task, latency: LatencyModel | None = None) -> Problem:
    """The problem a config describes, over ``task`` (whose test split it drops);
    ``latency`` is a latency curve measured before, reused instead of timing again."""
    space = config.space
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
    )
