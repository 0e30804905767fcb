"""searchprune: find how to prune a trained PyTorch network by search.

The public Python API::

    from searchprune import Task, Config, run, Problem, MaskSet
"""

from searchprune.config import Config, ConfigError, load_config, validate_config
from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.fitness import FitnessContext, FitnessError
from searchprune.problem import Evaluation, Problem
from searchprune.tasks.base import Split, Task

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
    config: "Config | dict[str, object] | str", out: str, **kwargs: object
) -> dict[str, object]:
    """Run a config (a :class:`Config`, plain data, or a YAML path) into directory ``out``."""
    from searchprune import runner

    if isinstance(config, str):
        config = load_config(config)
    elif isinstance(config, dict):
        config = validate_config(config)
    return runner.run(config, out, **kwargs)  # type: ignore[arg-type]
