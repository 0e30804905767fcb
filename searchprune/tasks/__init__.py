"""Tasks: a trained model with its data splits, and the registry of task factories.

Importing this package registers the built-in tasks (:mod:`searchprune.tasks.builtin`)
and the ``torchvision`` and ``timm`` tasks (:mod:`searchprune.tasks.vision`, which imports
those libraries only when such a task is built).
"""

from searchprune.tasks.base import TASKS, Scores, Split, Task, TaskFactory, score_model
from searchprune.tasks.builtin import BUILTIN_TASKS, TaskSpec, load_builtin_task
from searchprune.tasks.vision import vision_task

__all__ = [
    "BUILTIN_TASKS",
    "TASKS",
    "Scores",
    "Split",
    "Task",
    "TaskFactory",
    "TaskSpec",
    "load_builtin_task",
    "score_model",
    "vision_task",
]
