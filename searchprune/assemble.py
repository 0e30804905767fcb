"""Building a :class:`Task` and a :class:`Problem` from a validated config.

Shared by the run loop and by the Gymnasium environment, which both start from configs.
"""

from __future__ import annotations

from searchprune.config import Config, ConfigError
from searchprune.fitness import LATENCY_FITNESSES, resolve_fitness
from searchprune.latency import LatencyModel
from searchprune.problem import Problem
from searchprune.registry import import_object, unknown_name_message
from searchprune.tasks.base import Task
from searchprune.tasks.builtin import BUILTIN_TASKS, load_builtin_task


def build_task(config: Config) -> Task:
    """The built-in task named in the config, or the user's ``package.module:factory``."""
    spec = config.task
    if ":" not in spec.name:
        if spec.options:
            raise ConfigError(
                f"task: built-in task {spec.name!r} takes no options {sorted(spec.options)}; "
                "only name and seed"
            )
        if spec.name not in BUILTIN_TASKS:
            raise ConfigError(
                unknown_name_message("task.name", "task", spec.name, sorted(BUILTIN_TASKS))
            )
        return load_builtin_task(spec.name, seed=spec.seed)
    factory = import_object(spec.name, "task.name")
    if not callable(factory):
        raise ConfigError(f"task.name: {spec.name!r} is not callable")
    task = factory(**spec.options)
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
