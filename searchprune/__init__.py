"""searchprune: find how to prune a trained PyTorch network by search.

The public Python API::

    from searchprune import Task, Config, run, Problem, MaskSet
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from searchprune.config import Config, ConfigError, load_config, validate_config
from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.fitness import FitnessContext, FitnessError
from searchprune.problem import Evaluation, Problem
from searchprune.tasks.base import Split, Task

if TYPE_CHECKING:
    from searchprune.tracking import RunCallback

__all__ = [
    "Budget",
    "Config",
    "ConfigError",
    "Evaluation",
    "FitnessContext",
    "FitnessError",
    "MaskSet",
    "Problem",
    "Split",
    "Task",
    "load_config",
    "run",
    "validate_config",
]


def run(
    config: "Config | dict[str, object] | str",
    out: str,
    *,
    callbacks: "Sequence[RunCallback]" = (),
    **kwargs: object,
) -> dict[str, object]:
    """Run a config (a :class:`Config`, plain data, or a YAML path) into directory ``out``;
    return the summary.

    In plain data, the task, fitness, searcher, method and ``space.criterion`` may be
    Python objects instead of names (a :class:`Task`, a function, a class): the saved
    config names them ``"object:<module>.<name>"``. ``callbacks`` are
    :class:`~searchprune.tracking.RunCallback` objects told of every evaluation,
    generation and the end. Other keyword arguments: ``resume`` and ``echo`` of
    :func:`searchprune.runner.run`.
    """
    from searchprune import runner
    from searchprune.assemble import hold_objects

    if isinstance(config, str):
        config = load_config(config)
    elif isinstance(config, dict):
        config = validate_config(hold_objects(config))
    return runner.run(config, out, callbacks=callbacks, **kwargs)  # type: ignore[arg-type]
