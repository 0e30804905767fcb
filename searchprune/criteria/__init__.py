"""Importance criteria (magnitude, SNIP, GraSP, SynFlow, Taylor, Fisher, OBD, ...).

Importing this package registers the built-in criteria in :data:`CRITERIA`: one module
per family, each registering its criteria with ``@CRITERIA.register``. A new criterion
is a function ``(model, layers, task) -> {layer name: weight-shaped scores}`` in a
module of its own, imported here (or named ``package.module:function`` in a config).
"""

from searchprune.criteria import saliency, weight_only
from searchprune.criteria.base import CRITERIA, Criterion, Scores, channel_scores, layer_scores

__all__ = [
    "CRITERIA",
    "Criterion",
    "Scores",
    "channel_scores",
    "layer_scores",
    "saliency",
    "weight_only",
]
