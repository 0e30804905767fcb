"""Tasks: a trained model with its data splits, and the built-in reference tasks."""

from searchprune.tasks.base import Scores, Split, Task, score_model
from searchprune.tasks.builtin import BUILTIN_TASKS, TaskSpec, load_builtin_task

__all__ = [
    "BUILTIN_TASKS",
    "Scores",
    "Split",
    "Task",
    "TaskSpec",
    "load_builtin_task",
    "score_model",
]
