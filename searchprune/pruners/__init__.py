"""Pruning methods: one-shot baselines from a criterion, and training-time methods.

Importing this package registers the built-in methods in :data:`METHODS`: each
training-time method module registers its class with ``@METHODS.register``, and every
criterion of :data:`~searchprune.criteria.CRITERIA` gets its ``-global`` and ``-layer``
one-shot methods. A new method is one module beside these plus its import here.
"""

from searchprune.pruners import gradual, l0, lottery, oneshot, targeted_dropout, variational
from searchprune.pruners.base import (
    METHODS,
    Method,
    MethodResult,
    NoSettings,
    baseline_method,
    make_method,
    method_class,
)

oneshot.register_one_shot_methods()

__all__ = [
    "METHODS",
    "Method",
    "MethodResult",
    "NoSettings",
    "baseline_method",
    "gradual",
    "l0",
    "lottery",
    "make_method",
    "method_class",
    "oneshot",
    "targeted_dropout",
    "variational",
]
