"""Evaluators: local (in process) and, later, Ray actors."""

from searchprune.evaluate.base import Evaluator, Result
from searchprune.evaluate.local import LocalEvaluator

__all__ = ["Evaluator", "LocalEvaluator", "Result"]
